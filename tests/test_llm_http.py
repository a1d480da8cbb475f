"""Bounded LLM calls and shutdowns (ketta/llm/http.py, ketta/api/disconnect.py, the shutdown grace),
against an upstream that accepts a chat completion and never answers (tests/mock_openai.py, hang=True).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from conftest import KettaProcess
from mock_openai import MockOpenAI
from test_server import STOPPED_BY_SIGTERM, postgres_processes

CHAT_MODEL = "mock-chat-1"


@pytest.fixture
def hanging_llm() -> Iterator[MockOpenAI]:
    with MockOpenAI(chat_models=(CHAT_MODEL,), hang=True) as server:
        yield server


def agent_on(server: KettaProcess, llm: MockOpenAI, key: str = "sk-hang") -> tuple[str, str]:
    """(provider name, agent id): a provider on the mock and a letta_v1_agent on its chat model."""
    name = f"Hanging {uuid.uuid4().hex[:6]}"
    with server.client() as client:
        created = client.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": key,
                                                      "base_url": llm.base_url})
        assert created.status_code == 200, created.text
        agent = client.post("/v1/agents/", json={"name": "hang-agent", "agent_type": "letta_v1_agent",
                                                 "model": f"{name}/{CHAT_MODEL}", "embedding": f"{name}/text-embedding-3-small"})
        assert agent.status_code == 200, agent.text
    return name, agent.json()["id"]


def send(server: KettaProcess, agent_id: str, timeout_s: float, stream: bool = False) -> httpx.Response:
    path = f"/v1/agents/{agent_id}/messages" + ("/stream" if stream else "")
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hello?"}]}
    if stream:
        body["stream_tokens"] = True
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=timeout_s) as client:
        response = client.post(path, json=body)
        response.read()
        return response


def abandon_once_hanging(server: KettaProcess, agent_id: str, llm: MockOpenAI, stream: bool) -> float:
    """Send a message over a raw socket, close it once the upstream call hangs; returns when."""
    path = f"/v1/agents/{agent_id}/messages" + ("/stream" if stream else "")
    body = json.dumps({"messages": [{"role": "user", "content": "hello?"}], **({"stream_tokens": True} if stream else {})})
    headers = "".join(f"{k}: {v}\r\n" for k, v in server.headers.items())
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n{headers}"
               f"Content-Length: {len(body)}\r\n\r\n{body}")
    hanging = len(llm.hangs)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request.encode())
        llm.wait_for_hangs(hanging + 1, timeout_s=60)
    return time.monotonic()


def test_providers_on_one_endpoint_share_one_connection_each_call_with_its_own_key(shared_server: KettaProcess) -> None:
    with MockOpenAI(chat_models=(CHAT_MODEL,)) as llm:
        server = shared_server
        agents = {key: agent_on(server, llm, key)[1] for key in ("sk-first", "sk-second")}
        llm.clear()
        for _ in range(2):
            for key, agent_id in agents.items():
                response = send(server, agent_id, timeout_s=120)
                assert response.status_code == 200, response.text
        calls = llm.chat_requests()
        keys = [c.api_key for c in calls]
        assert set(keys) == {"sk-first", "sk-second"} and keys.count("sk-first") == keys.count("sk-second") >= 2, keys
        assert len({c.client_port for c in calls}) == 1, f"one kept-alive connection for the endpoint: {[c.client_port for c in calls]}"


@pytest.mark.slow
def test_a_hanging_upstream_answers_504_naming_the_provider_within_the_bound(
    start_ketta: Callable[..., KettaProcess], hanging_llm: MockOpenAI, database_uri: str
) -> None:
    read_timeout, retries = 2, 1
    server = start_ketta(env={"KETTA_LLM_READ_TIMEOUT": str(read_timeout), "KETTA_LLM_MAX_RETRIES": str(retries),
                              "LETTA_PG_URI": database_uri})
    provider, agent_id = agent_on(server, hanging_llm)

    started = time.monotonic()
    response = send(server, agent_id, timeout_s=60)
    elapsed = time.monotonic() - started

    assert response.status_code == 504, response.text
    assert f"provider '{provider}'" in response.text and "KETTA_LLM_READ_TIMEOUT" in response.text, response.text
    assert "sk-hang" not in response.text
    hangs = hanging_llm.wait_for_hangs(1 + retries, closed=True, timeout_s=5)
    assert len(hangs) == 1 + retries, "the call was tried once and retried KETTA_LLM_MAX_RETRIES times"
    # each attempt waits read_timeout; the SDK's backoff between attempts is under 1 s
    assert read_timeout * (1 + retries) <= elapsed < read_timeout * (1 + retries) + 10, elapsed


@pytest.mark.slow
def test_a_disconnect_cancels_the_upstream_call_and_sigterm_exits_within_the_grace(
    start_ketta: Callable[..., KettaProcess], hanging_llm: MockOpenAI, tmp_path: Path
) -> None:
    grace = 3.0
    server = start_ketta(env={"KETTA_LLM_READ_TIMEOUT": "300", "KETTA_LLM_MAX_RETRIES": "0",
                              "KETTA_SHUTDOWN_GRACE": str(grace)})
    _, agent_id = agent_on(server, hanging_llm)

    # The client gives up while the upstream hangs, on a plain and on a token-streamed message: the
    # upstream connection closes soon after, not after 300 s.
    for index, stream in enumerate((False, True)):
        left_at = abandon_once_hanging(server, agent_id, hanging_llm, stream)
        hang = hanging_llm.wait_for_hangs(index + 1, closed=True, timeout_s=30)[index]
        assert hang.closed_at is not None and hang.closed_at - left_at < 5, ("stream" if stream else "plain", hang, left_at)

    # SIGTERM while a call hangs: the process exits within the grace (plus start-up of the exit),
    # the request is cut, and the embedded PostgreSQL is stopped cleanly.
    outcome: dict[str, Any] = {}
    caller = threading.Thread(target=lambda: outcome.update(result=_send_quietly(server, agent_id)), daemon=True)
    caller.start()
    hanging_llm.wait_for_hangs(3, timeout_s=30)
    pgdata = tmp_path / "home" / "pgdata"
    assert postgres_processes(pgdata)
    signalled = time.monotonic()
    server.proc.terminate()
    code = server.proc.wait(timeout=grace + 30)
    shutdown_s = time.monotonic() - signalled
    print(f"shutdown under a hanging call: {shutdown_s:.2f} s (grace {grace} s)")
    assert code in STOPPED_BY_SIGTERM, server.log_tail()
    assert shutdown_s < grace + 8, f"{shutdown_s:.1f} s\n{server.log_tail()}"
    assert postgres_processes(pgdata) == [], "the embedded PostgreSQL was stopped"
    assert not (pgdata / "postmaster.pid").exists(), "PostgreSQL was shut down cleanly"
    caller.join(timeout=10)
    assert hanging_llm.wait_for_hangs(3, closed=True, timeout_s=5)[2].closed_at is not None


def _send_quietly(server: KettaProcess, agent_id: str) -> Any:
    try:
        return send(server, agent_id, timeout_s=120).status_code
    except httpx.HTTPError as exc:
        return exc
