"""Fallback handles: a failing primary provider is replaced by the agent's next handle."""

from __future__ import annotations

import json
import uuid
from typing import Any, Iterator

import httpx
import pytest

from conftest import KettaProcess
from mock_openai import MockOpenAI

PRIMARY_KEY = "sk-primary-key-0123456789"
BACKUP_KEY = "sk-backup-key-9876543210"
FALLBACKS = "ketta_fallback_handles"


@pytest.fixture
def primary() -> Iterator[MockOpenAI]:
    with MockOpenAI(api_key=PRIMARY_KEY, reply="from primary") as server:
        yield server


@pytest.fixture
def backup() -> Iterator[MockOpenAI]:
    with MockOpenAI(api_key=BACKUP_KEY, reply="from backup") as server:
        yield server


def provider(client: httpx.Client, name: str, llm: MockOpenAI, key: str) -> str:
    created = client.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": key, "base_url": llm.base_url})
    assert created.status_code == 200, created.text
    return created.json()["id"]


def setup(client: httpx.Client, primary: MockOpenAI, backup: MockOpenAI) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    names = {"primary": f"prim-{suffix}", "backup": f"back-{suffix}"}
    ids = {"primary": provider(client, names["primary"], primary, PRIMARY_KEY), "backup": provider(client, names["backup"], backup, BACKUP_KEY)}
    agent = client.post("/v1/agents/", json={
        "name": f"fallback-{suffix}", "agent_type": "letta_v1_agent", "include_base_tools": False,
        "model": f"{names['primary']}/mock-chat-1", "embedding": f"{names['backup']}/text-embedding-3-small",
        "metadata": {FALLBACKS: [f"{names['backup']}/mock-chat-1"]}})
    assert agent.status_code == 200, agent.text
    return {"names": names, "ids": ids, "agent": agent.json()["id"]}


def send(client: httpx.Client, agent_id: str) -> httpx.Response:
    return client.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": "hello"}]})


def assistant(response: httpx.Response) -> list[dict[str, Any]]:
    return [m for m in response.json()["messages"] if m["message_type"] == "assistant_message"]


def test_fallback_handles_are_checked_on_create_and_update(shared_server: KettaProcess, primary: MockOpenAI, backup: MockOpenAI) -> None:
    with shared_server.client() as client:
        made = setup(client, primary, backup)
        base = {"agent_type": "letta_v1_agent", "include_base_tools": False,
                "model": f"{made['names']['primary']}/mock-chat-1", "embedding": f"{made['names']['backup']}/text-embedding-3-small"}
        missing = client.post("/v1/agents/", json={**base, "metadata": {FALLBACKS: ["no-such-provider/mock-chat-1"]}})
        assert missing.status_code == 400 and "no-such-provider/mock-chat-1" in missing.json()["detail"]
        not_a_list = client.post("/v1/agents/", json={**base, "metadata": {FALLBACKS: "x/y"}})
        assert not_a_list.status_code == 400 and FALLBACKS in not_a_list.json()["detail"]

        bad_update = client.patch(f"/v1/agents/{made['agent']}", json={"metadata": {FALLBACKS: ["gone/model"]}})
        assert bad_update.status_code == 400 and "gone/model" in bad_update.json()["detail"]
        stored = client.get(f"/v1/agents/{made['agent']}").json()["metadata"]
        assert stored[FALLBACKS] == [f"{made['names']['backup']}/mock-chat-1"]  # nothing half-stored


@pytest.mark.parametrize("failure", [429, 503, "refused"])
def test_failing_primary_is_answered_by_the_fallback(shared_server: KettaProcess, primary: MockOpenAI, backup: MockOpenAI, failure: Any) -> None:
    messages = 4
    with shared_server.client() as client:
        made = setup(client, primary, backup)
        if failure == "refused":
            primary.stop()  # the provider's base_url now refuses connections
        else:
            for _ in range(messages * 3):  # the SDK's own retries included
                primary.queue_error(failure, "rate limited" if failure == 429 else "overloaded",
                                    "rate_limit_exceeded" if failure == 429 else "server_error")
        replies = [send(client, made["agent"]) for _ in range(messages)]
        assert [r.status_code for r in replies] == [200] * messages, replies[-1].text
        assert all(assistant(r)[0]["content"] == "from backup" for r in replies)
        step = client.get(f"/v1/steps/{assistant(replies[-1])[0]['step_id']}").json()
        assert step["model_handle"] == f"{made['names']['backup']}/mock-chat-1"
        health = client.get(f"/v1/providers/{made['ids']['primary']}/health").json()
        backup_health = client.get(f"/v1/providers/{made['ids']['backup']}/health").json()

    assert len(backup.chat_requests()) == messages
    assert {r.api_key for r in backup.chat_requests()} == {BACKUP_KEY}
    assert all(r.body["model"] == "mock-chat-1" for r in backup.chat_requests())
    if failure == 429:  # it cools down (no Retry-After: KETTA_PROVIDER_COOLDOWN) and is not asked again
        assert health["errors"] == 1 and health["status_classes"] == {"429": 1}, health
        assert health["state"] == "cooling_down"
    else:
        expected_class = {503: "5xx", "refused": "connection"}[failure]
        assert health["errors"] == messages and health["status_classes"] == {expected_class: messages}, health
        assert health["state"] == "down"
    assert backup_health["state"] == "healthy" and backup_health["status_classes"].get("2xx") == messages


def test_a_4xx_other_than_429_is_not_sent_elsewhere(shared_server: KettaProcess, primary: MockOpenAI, backup: MockOpenAI) -> None:
    with shared_server.client() as client:
        made = setup(client, primary, backup)
        primary.queue_error(400, "bad request: unsupported parameter", "invalid_request_error")
        reply = send(client, made["agent"])
    assert reply.status_code >= 400
    assert backup.chat_requests() == []


def test_streaming_falls_back_before_the_first_token(shared_server: KettaProcess, primary: MockOpenAI, backup: MockOpenAI) -> None:
    with shared_server.client() as client:
        made = setup(client, primary, backup)
        for _ in range(3):
            primary.queue_error(503, "overloaded")
        with client.stream("POST", f"/v1/agents/{made['agent']}/messages/stream",
                           json={"messages": [{"role": "user", "content": "hello"}], "stream_tokens": True}) as response:
            assert response.status_code == 200
            events = [json.loads(line[len("data: "):]) for line in response.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
    types = [e.get("message_type") for e in events]
    assert "error_message" not in types and "error" not in json.dumps(events).lower(), events
    text = "".join(e.get("content") or "" for e in events if e.get("message_type") == "assistant_message")
    assert text == "from backup"
    assert len(backup.chat_requests()) == 1 and backup.chat_requests()[0].body.get("stream") is True


def test_a_429_cools_the_primary_down_for_its_retry_after(shared_server: KettaProcess, shared_db, primary: MockOpenAI, backup: MockOpenAI) -> None:
    import time
    from datetime import datetime

    import sqlalchemy as sa

    with shared_server.client() as client:
        made = setup(client, primary, backup)
        # Retry-After over 120 s: the OpenAI SDK does not retry at all (up to 120 s it would wait that long)
        primary.queue_error(429, "rate limited", "rate_limit_exceeded", retry_after="600")
        first = send(client, made["agent"])
        assert first.status_code == 200 and assistant(first)[0]["content"] == "from backup"
        tried = len(primary.chat_requests())
        health = client.get(f"/v1/providers/{made['ids']['primary']}/health").json()
        assert health["state"] == "cooling_down", health
        remaining = datetime.fromisoformat(health["cooling_down_until"]).timestamp() - time.time()
        assert 500 < remaining <= 600, remaining

        second = send(client, made["agent"])  # the primary is not asked while it cools down
        assert second.status_code == 200 and assistant(second)[0]["content"] == "from backup"
        assert len(primary.chat_requests()) == tried
    with shared_db.connect() as conn:
        until = conn.execute(sa.text("SELECT max(cooldown_until) FROM ketta_provider_health WHERE provider_id = :id"),
                             {"id": made["ids"]["primary"]}).scalar_one()
    assert until is not None and until.timestamp() > time.time() + 500


def test_a_cool_down_written_by_another_worker_is_honoured(shared_server: KettaProcess, shared_db, primary: MockOpenAI, backup: MockOpenAI) -> None:
    import time

    import sqlalchemy as sa

    with shared_server.client() as client:
        made = setup(client, primary, backup)
        assert assistant(send(client, made["agent"]))[0]["content"] == "from primary"
        with shared_db.begin() as conn:
            conn.execute(sa.text("INSERT INTO ketta_provider_health (provider_id, worker, cooldown_until) "
                                 "VALUES (:id, 'another-replica:1', now() + interval '5 minutes')"), {"id": made["ids"]["primary"]})
        assert client.get(f"/v1/providers/{made['ids']['primary']}/health").json()["state"] == "cooling_down"
        # each worker reads the shared cool-downs every flush interval (5 s): within it the primary still answers
        deadline = time.monotonic() + 60
        answers = []
        while time.monotonic() < deadline:
            answers.append(assistant(send(client, made["agent"]))[0]["content"])
            if answers[-1] == "from backup":
                break
    assert answers[-1] == "from backup", answers
    before = len(primary.chat_requests())
    with shared_server.client() as client:
        assert assistant(send(client, made["agent"]))[0]["content"] == "from backup"
    assert len(primary.chat_requests()) == before


def stream_events(client: httpx.Client, agent_id: str) -> tuple[int, list[dict[str, Any]]]:
    """The data events of a token-streamed message (the status, then every event but [DONE])."""
    with client.stream("POST", f"/v1/agents/{agent_id}/messages/stream",
                       json={"messages": [{"role": "user", "content": "hello"}], "stream_tokens": True}) as response:
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        return response.status_code, events


def streamed_text(events: list[dict[str, Any]]) -> str:
    return "".join(e.get("content") or "" for e in events if e.get("message_type") == "assistant_message")


@pytest.mark.parametrize("kind", ["error_event", "drop"])
def test_a_stream_breaking_before_its_first_token_falls_back(shared_server: KettaProcess, primary: MockOpenAI,
                                                             backup: MockOpenAI, kind: str) -> None:
    with shared_server.client() as client:
        made = setup(client, primary, backup)
        primary.queue_stream_failure(after=0, kind=kind)  # 200, the role chunk, then the failure
        status, events = stream_events(client, made["agent"])
        health = client.get(f"/v1/providers/{made['ids']['primary']}/health").json()
    assert status == 200
    types = [e.get("message_type") for e in events]
    assert "error_message" not in types and "error" not in json.dumps(events).lower(), events
    assert streamed_text(events) == "from backup"
    assert len(primary.chat_requests()) == 1 and len(backup.chat_requests()) == 1
    assert backup.chat_requests()[0].body.get("stream") is True and backup.chat_requests()[0].api_key == BACKUP_KEY
    assert health["errors"] == 1 and set(health["status_classes"]) == {"2xx", "5xx" if kind == "error_event" else "connection"}, health


@pytest.mark.parametrize("kind", ["error_event", "drop"])
def test_a_stream_breaking_after_its_first_token_ends_with_an_error(shared_server: KettaProcess, primary: MockOpenAI,
                                                                    backup: MockOpenAI, kind: str) -> None:
    with shared_server.client() as client:
        made = setup(client, primary, backup)
        primary.queue_stream_failure(after=1, kind=kind)  # "from pri" reached the client, then the failure
        status, events = stream_events(client, made["agent"])
    assert status == 200
    assert streamed_text(events) == "from pri", events  # what the primary sent, once; nothing from the backup
    assert [e.get("message_type") for e in events][-1] == "error_message", events
    assert any(e.get("stop_reason") == "llm_api_error" for e in events), events
    assert backup.chat_requests() == []


def test_a_hundred_messages_through_the_fallback_with_no_client_error(start_ketta, database_uri: str, backup: MockOpenAI) -> None:
    """Primaries answering 429, 503, never (hanging) and refusing connections: 25 messages each, four
    agents at once, all answered by the fallback; each step names it, each primary's health shows why."""
    from concurrent.futures import ThreadPoolExecutor

    # bounded calls: a hanging primary is given up after 1 s; no SDK retries, so each message tries the primary once
    server = start_ketta({"LETTA_PG_URI": database_uri, "KETTA_LLM_READ_TIMEOUT": "1", "KETTA_LLM_MAX_RETRIES": "0"})
    kinds = ("429", "503", "hanging", "refusing")
    per_agent = 25
    with MockOpenAI(api_key=PRIMARY_KEY, fail_status=429) as p429, MockOpenAI(api_key=PRIMARY_KEY, fail_status=503) as p503, \
            MockOpenAI(api_key=PRIMARY_KEY, hang=True) as hanging, MockOpenAI(api_key=PRIMARY_KEY) as refusing:
        primaries = dict(zip(kinds, (p429, p503, hanging, refusing)))
        with server.client() as client:
            made = {kind: setup(client, primaries[kind], backup) for kind in kinds}
        refusing.stop()  # its base_url now refuses connections

        def run(kind: str) -> list[httpx.Response]:
            with server.client() as client:
                return [send(client, made[kind]["agent"]) for _ in range(per_agent)]

        with ThreadPoolExecutor(len(kinds)) as pool:
            replies = dict(zip(kinds, pool.map(run, kinds)))

        with server.client() as client:
            statuses = [r.status_code for kind in kinds for r in replies[kind]]
            assert statuses == [200] * len(kinds) * per_agent, [r.text for kind in kinds for r in replies[kind] if r.status_code != 200][:3]
            for kind in kinds:
                backup_handle = f"{made[kind]['names']['backup']}/mock-chat-1"
                assert all(assistant(r)[0]["content"] == "from backup" for r in replies[kind])
                handles = {client.get(f"/v1/steps/{assistant(r)[0]['step_id']}").json()["model_handle"] for r in replies[kind]}
                assert handles == {backup_handle}, (kind, handles)
            health = {kind: client.get(f"/v1/providers/{made[kind]['ids']['primary']}/health").json() for kind in kinds}

    assert len(backup.chat_requests()) == len(kinds) * per_agent
    assert {r.api_key for r in backup.chat_requests()} == {BACKUP_KEY}
    # each 429 cools the primary down for KETTA_PROVIDER_COOLDOWN (30 s): it was asked again only after that
    asked_429 = health["429"]["status_classes"].get("429", 0)
    assert set(health["429"]["status_classes"]) == {"429"} and 1 <= asked_429 < per_agent, health["429"]
    assert len(p429.chat_requests()) == asked_429
    for kind, status_class in (("503", "5xx"), ("hanging", "timeout"), ("refusing", "connection")):
        assert health[kind]["status_classes"] == {status_class: per_agent} and health[kind]["state"] == "down", (kind, health[kind])


def test_each_fallback_rule_refuses_with_400_on_create_and_patch_storing_nothing(shared_server: KettaProcess, primary: MockOpenAI,
                                                                                   backup: MockOpenAI) -> None:
    """README "Fallback handles": a list of at most 5 existing handles, not the agent's own model, of
    the same API format; 400 naming the handle otherwise, on create and on PATCH, nothing stored."""
    from mock_anthropic import MockAnthropic

    with shared_server.client() as client, MockAnthropic(api_key="sk-ant-fallback") as claude:
        made = setup(client, primary, backup)
        own, other = f"{made['names']['primary']}/mock-chat-1", f"{made['names']['backup']}/mock-chat-1"
        claude_name = f"claude-{uuid.uuid4().hex[:8]}"
        created = client.post("/v1/providers/", json={"name": claude_name, "provider_type": "anthropic",
                                                      "api_key": "sk-ant-fallback", "base_url": claude.base_url})
        assert created.status_code == 200, created.text
        anthropic_handle = f"{claude_name}/claude-mock-1"
        assert any(m["handle"] == anthropic_handle for m in client.get("/v1/models/", params={"provider_name": claude_name}).json())
        # six existing handles of the same format: five pass, six are one too many
        extra = [f"more-{n}-{uuid.uuid4().hex[:8]}" for n in range(5)]
        for name in extra:
            provider(client, name, backup, BACKUP_KEY)
        six = [other, *(f"{name}/mock-chat-1" for name in extra)]
        cases = {
            "too many": (six, "at most 5"),
            "own model": ([other, own], f"'{own}' is the agent's own model"),
            "other format": ([anthropic_handle], f"'{anthropic_handle}' speaks 'anthropic'"),
            "unknown": ([other, "no-such-provider/mock-chat-1"], "no-such-provider/mock-chat-1"),
            "not a list": ("x/y", "must be a list"),
        }
        base = {"agent_type": "letta_v1_agent", "include_base_tools": False, "model": own,
                "embedding": f"{made['names']['backup']}/text-embedding-3-small"}
        for case, (handles, says) in cases.items():
            name = f"refused-{uuid.uuid4().hex[:8]}"
            refused = client.post("/v1/agents/", json={**base, "name": name, "metadata": {FALLBACKS: handles}})
            assert refused.status_code == 400 and says in refused.json()["detail"], (case, refused.text)
            assert name not in [a["name"] for a in client.get("/v1/agents/", params={"name": name}).json()], case
            patched = client.patch(f"/v1/agents/{made['agent']}", json={"metadata": {FALLBACKS: handles}})
            assert patched.status_code == 400 and says in patched.json()["detail"], (case, patched.text)
            assert client.get(f"/v1/agents/{made['agent']}").json()["metadata"][FALLBACKS] == [other], case
        five = client.patch(f"/v1/agents/{made['agent']}", json={"metadata": {FALLBACKS: six[:5]}})
        assert five.status_code == 200, five.text
        assert client.get(f"/v1/agents/{made['agent']}").json()["metadata"][FALLBACKS] == six[:5]


def test_an_anthropic_primary_falls_back_to_another_anthropic_provider(shared_server: KettaProcess, backup: MockOpenAI) -> None:
    """Anthropic's request builder is patched (*args, **kwargs): the fallback rebuilds the request
    from the same named arguments (it once passed them as 'args'/'kwargs' and answered 500)."""
    from mock_anthropic import MockAnthropic

    suffix = uuid.uuid4().hex[:8]
    with shared_server.client() as client, MockAnthropic(api_key="sk-ant-primary") as down, \
            MockAnthropic(api_key="sk-ant-backup", reply="from claude backup", first_tool=None) as claude:
        names = {"down": f"claude-down-{suffix}", "up": f"claude-up-{suffix}", "embed": f"embed-{suffix}"}
        for name, mock, key in ((names["down"], down, "sk-ant-primary"), (names["up"], claude, "sk-ant-backup")):
            created = client.post("/v1/providers/", json={"name": name, "provider_type": "anthropic", "api_key": key,
                                                          "base_url": mock.base_url})
            assert created.status_code == 200, created.text
        provider(client, names["embed"], backup, BACKUP_KEY)
        agent = client.post("/v1/agents/", json={
            "name": f"claude-fallback-{suffix}", "agent_type": "letta_v1_agent", "include_base_tools": False,
            "model": f"{names['down']}/claude-mock-1", "embedding": f"{names['embed']}/text-embedding-3-small",
            "metadata": {FALLBACKS: [f"{names['up']}/claude-mock-1"]}})
        assert agent.status_code == 200, agent.text
        down.stop()  # the primary's base_url now refuses connections
        reply = send(client, agent.json()["id"])
        assert reply.status_code == 200, reply.text
        assert assistant(reply)[0]["content"] == "from claude backup"
    [request] = claude.message_requests()
    assert request.api_key == "sk-ant-backup" and request.body["model"] == "claude-mock-1"
