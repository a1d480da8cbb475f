"""The ``kimi`` provider type through the REST API of a real ``ketta server``, against a mock
Moonshot on 127.0.0.1: creation, model list with context windows, filters, fallback list on an
outage, refused keys, key checks, agents needing another provider's embedding, openapi."""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any, Iterator

import httpx
import pytest

from conftest import KettaProcess
from mock_moonshot import MODELS, NOT_KIMI, MockMoonshot
from mock_openai import MockOpenAI

GOOD_KEY = "sk-moonshot-good-7f3a"
BAD_KEY = "sk-moonshot-wrong-99c1"
FALLBACK_AT_LEAST = {
    "kimi-k2-0905-preview": 262144, "kimi-k2-0711-preview": 131072, "kimi-k2-turbo-preview": 262144,
    "kimi-thinking-preview": 131072, "kimi-latest": 131072, "kimi-k2-thinking": 262144, "kimi-k2.5": 262144, "kimi-k3": 1048576,
}


@pytest.fixture(scope="module")
def moon() -> Iterator[MockMoonshot]:
    with MockMoonshot(api_key=GOOD_KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(moon: MockMoonshot) -> None:
    moon.down, moon.delay_s, moon.fail_next = False, 0.0, []


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def create(server: KettaProcess, name: str, base_url: str, key: str = GOOD_KEY) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/providers/", headers=server.headers, timeout=60,
                      json={"name": name, "provider_type": "kimi", "api_key": key, "base_url": base_url})


def models_of(server: KettaProcess, name: str) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{server.url}/v1/models/", headers=server.headers, params={"provider_name": name}, timeout=60)
    assert response.status_code == 200, response.text
    return {m["handle"]: m for m in response.json()}


def test_kimi_provider_lists_moonshot_models_with_context_windows(shared_server: KettaProcess) -> None:
    """Moonshot's chat models only (not a proxy's other model), with their context windows, under
    the provider's name; ?provider_name= gives one provider's models and not another's."""
    with MockMoonshot(api_key=GOOD_KEY) as own:  # this test's requests only
        name, other = unique("kimi"), unique("kimi-other")
        response = create(shared_server, name, own.base_url)
        assert response.status_code == 200, response.text
        assert response.json()["provider_type"] == "kimi"
        assert GOOD_KEY not in response.text
        assert [(r.method, r.path, r.api_key) for r in own.requests if r.path == "/v1/models"] == [("GET", "/v1/models", GOOD_KEY)]
        assert create(shared_server, other, own.base_url).status_code == 200
    models = models_of(shared_server, name)
    expected = {f"{name}/{m}": info.get("context_length") or 131072 for m, info in MODELS.items()}
    assert {h: m["max_context_window"] for h, m in models.items()} == expected
    assert f"{name}/{NOT_KIMI}" not in models
    assert {m["provider_name"] for m in models.values()} == {name}
    assert set(models_of(shared_server, other)) == {f"{other}/{m}" for m in MODELS}
    assert GOOD_KEY not in shared_server.log_text()


def test_provider_named_kimi_gives_kimi_slash_model_handles(shared_server: KettaProcess) -> None:
    """The provider's name is the handle's first part: a provider named 'kimi' gives 'kimi/...'."""
    with MockMoonshot(api_key=GOOD_KEY) as own:
        created = create(shared_server, "kimi", own.base_url)
    assert created.status_code == 200, created.text
    try:
        assert set(models_of(shared_server, "kimi")) == {f"kimi/{m}" for m in MODELS}
    finally:
        httpx.delete(f"{shared_server.url}/v1/providers/{created.json()['id']}", headers=shared_server.headers, timeout=60)


def test_filter_providers_by_type_kimi(shared_server: KettaProcess, moon: MockMoonshot) -> None:
    name = unique("kimi-filter")
    assert create(shared_server, name, moon.base_url).status_code == 200
    response = httpx.get(f"{shared_server.url}/v1/providers/", headers=shared_server.headers, params={"provider_type": "kimi"}, timeout=30)
    assert response.status_code == 200, response.text
    assert name in {p["name"] for p in response.json()}
    assert {p["provider_type"] for p in response.json()} == {"kimi"}
    by_name = httpx.get(f"{shared_server.url}/v1/providers/", headers=shared_server.headers, params={"name": name}, timeout=30).json()
    assert [p["name"] for p in by_name] == [name]


@pytest.mark.parametrize("outage", ["unreachable", "5xx", "timeout"])
def test_outage_gives_the_builtin_list_with_a_warning(shared_server: KettaProcess, moon: MockMoonshot, outage: str) -> None:
    name = unique(f"kimi-{outage}")
    base_url = moon.base_url
    if outage == "unreachable":
        base_url = closed_port_url()
    elif outage == "5xx":
        moon.down = True
    else:
        moon.delay_s = 12.0  # longer than the listing timeout (5 s)
    started = time.monotonic()
    response = create(shared_server, name, base_url)
    elapsed = time.monotonic() - started
    moon.down, moon.delay_s = False, 0.0
    assert response.status_code == 200, response.text
    models = {h.split("/", 1)[1]: m["max_context_window"] for h, m in models_of(shared_server, name).items()}
    assert FALLBACK_AT_LEAST.items() <= models.items()
    assert elapsed < 11, f"an outage held provider creation for {elapsed:.1f} s"
    assert f"Kimi provider '{name}'" in shared_server.log_text() and "built-in model list" in shared_server.log_text()


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_is_an_auth_error_and_nothing_is_stored(shared_server: KettaProcess, moon: MockMoonshot, status: int) -> None:
    name = unique("kimi-badkey")
    if status == 403:
        moon.fail_next = [(403, "permission_denied_error", "The API key has no access to this resource")]
        response = create(shared_server, name, moon.base_url)
        expected_text = "no access to this resource"
    else:
        response = create(shared_server, name, moon.base_url, key=BAD_KEY)
        expected_text = "Invalid Authentication"
    assert 400 <= response.status_code < 500, response.text
    assert expected_text in response.text
    assert BAD_KEY not in response.text
    assert httpx.get(f"{shared_server.url}/v1/providers/", headers=shared_server.headers, params={"name": name}, timeout=30).json() == []
    assert models_of(shared_server, name) == {}


def check(server: KettaProcess, base_url: str, key: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/providers/check", headers=server.headers, timeout=60,
                      json={"provider_type": "kimi", "api_key": key, "base_url": base_url})


def test_check_endpoint(shared_server: KettaProcess, moon: MockMoonshot) -> None:
    seen = len(moon.requests)  # the module's mock: only what this test sends counts
    good = check(shared_server, moon.base_url, GOOD_KEY)
    assert good.status_code == 200, good.text
    assert [(r.path, r.api_key) for r in moon.requests[seen:]] == [("/v1/users/me/balance", GOOD_KEY)]
    bad = check(shared_server, moon.base_url, BAD_KEY)
    assert bad.status_code == 401, bad.text
    assert "Invalid Authentication" in bad.text and BAD_KEY not in bad.text
    unreachable = check(shared_server, closed_port_url(), GOOD_KEY)
    assert unreachable.status_code == 502, unreachable.text
    assert "unreachable" in unreachable.text
    moon.down = True
    overloaded = check(shared_server, moon.base_url, GOOD_KEY)
    assert overloaded.status_code == 502, overloaded.text
    moon.down, moon.delay_s = False, 12.0
    slow = check(shared_server, moon.base_url, GOOD_KEY)
    assert slow.status_code == 504, slow.text


def test_check_existing_provider(shared_server: KettaProcess, moon: MockMoonshot) -> None:
    name = unique("kimi-check")
    provider = create(shared_server, name, moon.base_url).json()
    ok = httpx.post(f"{shared_server.url}/v1/providers/{provider['id']}/check", headers=shared_server.headers, timeout=60)
    assert ok.status_code == 200, ok.text
    moon.fail_next = [(401, "invalid_authentication_error", "Invalid Authentication")]
    refused = httpx.post(f"{shared_server.url}/v1/providers/{provider['id']}/check", headers=shared_server.headers, timeout=60)
    assert refused.status_code == 401, refused.text
    assert "Invalid Authentication" in refused.text


def agents_named(server: KettaProcess, name: str) -> list[dict]:
    response = httpx.get(f"{server.url}/v1/agents/", headers=server.headers, params={"name": name}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_kimi_agent_needs_another_providers_embedding(shared_server: KettaProcess, moon: MockMoonshot) -> None:
    name = unique("kimi-agent")
    model = f"{name}/kimi-k2-0905-preview"
    assert create(shared_server, name, moon.base_url).status_code == 200
    embeddings = httpx.get(f"{shared_server.url}/v1/models/embedding", headers=shared_server.headers, timeout=30)
    assert embeddings.status_code == 200 and [m for m in embeddings.json() if m.get("provider_name") == name] == []

    # No embedding given: Ketta's own 400, saying what to pass (stock creates the agent and fails later).
    bare = unique("a")
    response = httpx.post(f"{shared_server.url}/v1/agents/", headers=shared_server.headers, timeout=60,
                          json={"name": bare, "model": model, "include_base_tools": False})
    assert response.status_code == 400, response.text
    detail = response.text
    assert f"Model '{model}' is served by Moonshot (Kimi), which has no embedding models" in detail
    assert "pass 'embedding' with an embedding model of another provider" in detail
    assert agents_named(shared_server, bare) == []

    # An embedding handle of the Kimi provider does not exist: refused, naming that handle.
    kimi_handle = f"{name}/text-embedding-3-small"
    unknown = unique("a")
    kimi_embedding = httpx.post(f"{shared_server.url}/v1/agents/", headers=shared_server.headers, timeout=60, json={
        "name": unknown, "model": model, "embedding": kimi_handle})
    assert 400 <= kimi_embedding.status_code < 500, kimi_embedding.text
    assert kimi_handle in kimi_embedding.text
    assert agents_named(shared_server, unknown) == []

    # Another provider's embedding: the agent is made, chatting through Kimi.
    with MockOpenAI(api_key="sk-emb") as embedder:
        emb_name = unique("emb")
        made = httpx.post(f"{shared_server.url}/v1/providers/", headers=shared_server.headers, timeout=60, json={
            "name": emb_name, "provider_type": "openai", "api_key": "sk-emb", "base_url": embedder.base_url})
        assert made.status_code == 200, made.text
        agent = httpx.post(f"{shared_server.url}/v1/agents/", headers=shared_server.headers, timeout=60, json={
            "name": unique("a"), "model": model, "embedding": f"{emb_name}/text-embedding-3-small"})
        assert agent.status_code == 200, agent.text
        assert agent.json()["llm_config"]["handle"] == model
        assert agent.json()["embedding_config"]["handle"] == f"{emb_name}/text-embedding-3-small"


def test_openapi_lists_kimi(shared_server: KettaProcess) -> None:
    spec = httpx.get(f"{shared_server.url}/openapi.json", headers=shared_server.headers, timeout=60).json()
    schemas = spec["components"]["schemas"]

    def enum_of(ref_holder: dict) -> list[str]:
        ref = next(r["$ref"] for r in ref_holder.get("anyOf", [ref_holder]) if "$ref" in r)
        return schemas[ref.rsplit("/", 1)[1]]["enum"]

    # The enum member is added before Letta builds any schema: every ProviderType schema has it.
    provider_type_schemas = {name: s for name, s in schemas.items() if name.startswith("ProviderType")}
    assert provider_type_schemas
    assert [name for name, s in provider_type_schemas.items() if "kimi" not in s["enum"]] == []
    assert "kimi" in enum_of(schemas["ProviderCreate"]["properties"]["provider_type"])
    assert "kimi" in enum_of(schemas["ProviderCheck"]["properties"]["provider_type"])
    list_filter = next(p for p in spec["paths"]["/v1/providers/"]["get"]["parameters"] if p["name"] == "provider_type")
    assert "kimi" in enum_of(list_filter["schema"])
