"""schemathesis on the provider and model routes: no input makes the server answer 5xx (issue 9).

A server of its own, whose outbound HTTP(S) goes through a dead proxy on 127.0.0.1 (only
127.0.0.1/localhost are reached directly), so a fuzzed provider whose type ignores base_url
cannot leave the machine; fuzzed base_urls are pointed at a local mock LLM. Bounded:
KETTA_FUZZ_EXAMPLES examples per operation (default 25; the whole module stays under 2 min).
"""

from __future__ import annotations

import os
from typing import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402 - after the importorskip

from conftest import KettaProcess, server_of_its_own  # noqa: E402
from ketta.db.database import free_port  # noqa: E402
from mock_openai import MockOpenAI  # noqa: E402

EXAMPLES = int(os.environ.get("KETTA_FUZZ_EXAMPLES", "25"))
ROUTES = r"^/v1/(providers|models)/"


@pytest.fixture(scope="module")
def fuzz_llm() -> Iterator[MockOpenAI]:
    with MockOpenAI(api_key="sk-fuzz") as mock:
        yield mock


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, pg_uri: str) -> Iterator[KettaProcess]:
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    with server_of_its_own(pg_uri, tmp_path_factory.mktemp("fuzz-home"), "fuzz",
                           HTTP_PROXY=dead_proxy, HTTPS_PROXY=dead_proxy, ALL_PROXY=dead_proxy,
                           http_proxy=dead_proxy, https_proxy=dead_proxy, all_proxy=dead_proxy,
                           NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost") as proc:
        yield proc


@pytest.fixture(scope="module")
def provider_routes(fuzz_server: KettaProcess):
    raw = httpx.get(f"{fuzz_server.url}/openapi.json", headers=fuzz_server.headers, timeout=60).json()
    return schemathesis.openapi.from_dict(raw).include(path_regex=ROUTES)


def _local(body: object, base_url: str) -> object:
    """A fuzzed body whose base_url would make the server call a host: the local mock instead."""
    if isinstance(body, dict) and ("provider_type" in body or "base_url" in body):
        url = body.get("base_url")
        try:
            reaches_a_host = not isinstance(url, str) or not url or bool(urlsplit(url).hostname)
        except ValueError:
            reaches_a_host = False
        if reaches_a_host:
            body = {**body, "base_url": base_url}
    return body


def test_no_input_makes_a_server_error(provider_routes, fuzz_server: KettaProcess, fuzz_llm: MockOpenAI) -> None:
    """Every provider and model operation, EXAMPLES generated cases each (derandomized: the same
    cases every run); every 5xx is collected (no shrinking, so the run stays bounded)."""
    from hypothesis import given

    calls: dict[str, int] = {}
    server_errors: list[str] = []
    upstream_answers: list[int] = []
    for result in provider_routes.get_all_operations():
        operation = result.ok()
        key = f"{operation.method.upper()} {operation.path}"

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def run(case) -> None:
            if case.body is not None:
                case.body = _local(case.body, fuzz_llm.base_url)
            response = case.call(base_url=fuzz_server.url, headers=fuzz_server.headers, timeout=60)
            calls[key] = calls.get(key, 0) + 1
            if response.status_code in (502, 504):
                upstream_answers.append(response.status_code)
            if response.status_code >= 500 and response.status_code not in (502, 504):  # 502/504 name an upstream
                server_errors.append(f"{case.method} {case.formatted_path} {case.query or ''} {str(case.body)[:200]} -> "
                                     f"{response.status_code}: {response.text[:300]}")

        run()
    total, upstream = sum(calls.values()), len(upstream_answers)
    print(f"schemathesis: {total} cases over {len(calls)} operations, {len(server_errors)} server errors, "
          f"{upstream} answers 502/504 naming an upstream: {calls}")
    assert len(calls) >= 10 and all(n > 0 for n in calls.values()), calls  # every provider/model route was exercised
    assert server_errors == [], "\n".join(server_errors[:20])
