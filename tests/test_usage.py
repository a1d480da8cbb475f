"""The usage ledger (issue 23): tokens as the provider reported them, blocking and streamed, with a
fallback and a pool member answering; prices; who may see what; a budget that stops calls."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from decimal import Decimal
from typing import Any, Iterator

import httpx
import pytest
import sqlalchemy as sa

from conftest import KettaProcess
from mock_openai import MockOpenAI, embedding_tokens

KEY = "sk-usage-0123456789"
# What the mock reports for every call: cached and reasoning tokens apart.
REPORTED = {"prompt_tokens": 1234, "completion_tokens": 56, "total_tokens": 1290,
            "prompt_tokens_details": {"cached_tokens": 1000}, "completion_tokens_details": {"reasoning_tokens": 20}}
EXPECTED = {"prompt_tokens": 1234, "completion_tokens": 56, "cached_input_tokens": 1000, "reasoning_tokens": 20}
COLUMNS = ("provider_name", "model", "handle", "agent_id", "agent_name", "user_id", "run_id", "pool", "fallback", "streamed",
           "prompt_tokens", "completion_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd",
           "price_source", "status", "error_class")


@pytest.fixture
def llm() -> Iterator[MockOpenAI]:
    with MockOpenAI(api_key=KEY, usage=REPORTED) as server:
        yield server


def provider(client: httpx.Client, llm: MockOpenAI, name: str | None = None) -> str:
    name = name or f"use-{uuid.uuid4().hex[:8]}"
    made = client.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": KEY, "base_url": llm.base_url})
    assert made.status_code == 200, made.text
    return name


def agent(client: httpx.Client, model: str, embedding: str | None, **extra: Any) -> str:
    made = client.post("/v1/agents/", json={"name": f"usage-{uuid.uuid4().hex[:8]}", "agent_type": "letta_v1_agent",
                                            "include_base_tools": False, "model": model, **({"embedding": embedding} if embedding else {}),
                                            **extra})
    assert made.status_code == 200, made.text
    return made.json()["id"]


def send(client: httpx.Client, agent_id: str) -> httpx.Response:
    return client.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": "hello"}]})


def stream(client: httpx.Client, agent_id: str) -> tuple[int, str]:
    with client.stream("POST", f"/v1/agents/{agent_id}/messages/stream",
                       json={"messages": [{"role": "user", "content": "hello"}], "stream_tokens": True}) as response:
        return response.status_code, response.read().decode()


def ledger(db: sa.Engine, agent_id: str, count: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    """The agent's ledger rows, oldest first, once there are ``count`` (rows are written as calls end)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with db.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(
                sa.text(f"SELECT {', '.join(COLUMNS)} FROM ketta_usage WHERE agent_id = :a ORDER BY id"), {"a": agent_id})]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_blocking_and_streamed_calls_are_recorded_to_the_token(shared_server: KettaProcess, shared_db: sa.Engine, llm: MockOpenAI) -> None:
    with shared_server.client() as client:
        name = provider(client, llm)
        agent_id = agent(client, f"{name}/mock-chat-1", f"{name}/text-embedding-3-small")
        assert send(client, agent_id).status_code == 200
        status, body = stream(client, agent_id)
        assert status == 200 and "usage_statistics" in body, body
        rows = ledger(shared_db, agent_id, 2)
        report = client.get("/v1/usage/", params={"group_by": "agent", "agent_id": agent_id}).json()

    assert llm.chat_requests()[-1].body["stream_options"] == {"include_usage": True}
    assert [r["streamed"] for r in rows] == [False, True]
    for row in rows:
        assert {k: row[k] for k in EXPECTED} == EXPECTED, row
        assert row["status"] == "ok" and row["provider_name"] == name and row["model"] == "mock-chat-1"
        assert row["handle"] == f"{name}/mock-chat-1" and row["agent_name"].startswith("usage-") and row["run_id"]
        assert row["user_id"] and row["fallback"] is False and row["pool"] is None
        assert row["cost_usd"] is None and row["price_source"] is None  # a custom endpoint: price unknown, not 0
    [only] = report["rows"]
    assert only["key"] == agent_id and only["calls"] == 2
    assert (only["prompt_tokens"], only["completion_tokens"], only["cached_input_tokens"], only["reasoning_tokens"]) == (2468, 112, 2000, 40)
    assert only["cost_usd"] is None and only["calls_cost_unknown"] == 2

    with shared_server.client() as client:  # hard-deleted provider and agent: their usage stays, by name
        provider_id = next(p["id"] for p in client.get("/v1/providers/").json() if p["name"] == name)
        assert client.delete(f"/v1/agents/{agent_id}").status_code == 200
        assert client.delete(f"/v1/providers/{provider_id}").status_code == 200
        by_provider = client.get("/v1/usage/", params={"group_by": "provider", "provider": name}).json()
        by_agent = client.get("/v1/usage/", params={"group_by": "agent", "agent_id": agent_id}).json()
        by_day = client.get("/v1/usage/export.csv", params={"group_by": "day", "agent_id": agent_id})
    assert [(r["key"], r["calls"], r["prompt_tokens"]) for r in by_provider["rows"]] == [(name, 2, 2468)]
    assert by_agent["rows"][0]["label"].startswith("usage-")
    [day] = list(csv.DictReader(io.StringIO(by_day.text)))
    assert day["calls"] == "2" and day["total_tokens"] == "2580" and day["cost_usd"] == ""


def test_moonshot_style_usage_in_the_final_choice_is_read(shared_server: KettaProcess, shared_db: sa.Engine) -> None:
    reported = {"prompt_tokens": 300, "completion_tokens": 7, "total_tokens": 307, "cached_tokens": 256}
    with MockOpenAI(api_key=KEY, usage=reported, usage_in_choice=True) as llm, shared_server.client() as client:
        name = provider(client, llm)
        agent_id = agent(client, f"{name}/mock-chat-1", f"{name}/text-embedding-3-small")
        assert stream(client, agent_id)[0] == 200
        [row] = ledger(shared_db, agent_id, 1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_input_tokens"], row["reasoning_tokens"]) == (300, 7, 256, None)


def test_operator_price_gives_the_cost(shared_server: KettaProcess, shared_db: sa.Engine, llm: MockOpenAI) -> None:
    with shared_server.client() as client:
        name = provider(client, llm)
        agent_id = agent(client, f"{name}/mock-chat-1", f"{name}/text-embedding-3-small")
        price = client.put("/v1/ketta/prices", json={"provider_name": name, "model": "mock-chat-1", "input_per_mtok": 2,
                                                     "cached_input_per_mtok": 0.5, "output_per_mtok": 8})
        assert price.status_code == 200, price.text
        assert client.put("/v1/ketta/prices", json={"provider_name": "no such provider", "model": "*", "input_per_mtok": 1,
                                                    "output_per_mtok": 1}).status_code == 400
        assert client.put("/v1/ketta/prices", json={"provider_name": name, "model": "*", "input_per_mtok": -1,
                                                    "output_per_mtok": 1}).status_code == 422
        assert send(client, agent_id).status_code == 200
        [row] = ledger(shared_db, agent_id, 1)
    # 234 uncached input at $2/M, 1000 cached at $0.5/M, 56 output at $8/M
    assert row["cost_usd"] == Decimal("0.001416") and row["price_source"] == "override"


def test_fallback_and_pool_member_attempts_are_each_a_row(shared_server: KettaProcess, shared_db: sa.Engine, llm: MockOpenAI) -> None:
    with MockOpenAI(api_key=KEY, usage=REPORTED) as down, shared_server.client() as client:
        primary, backup = provider(client, down), provider(client, llm)
        for _ in range(3):  # the SDK's retry included
            down.queue_error(503, "overloaded")
        agent_id = agent(client, f"{primary}/mock-chat-1", f"{backup}/text-embedding-3-small",
                         metadata={"ketta_fallback_handles": [f"{backup}/mock-chat-1"]})
        assert send(client, agent_id).status_code == 200
        rows = ledger(shared_db, agent_id, 2)
        assert [(r["provider_name"], r["status"], r["error_class"], r["fallback"]) for r in rows] == [
            (primary, "error", "5xx", False), (backup, "ok", None, True)]
        assert rows[0]["prompt_tokens"] is None and {k: rows[1][k] for k in EXPECTED} == EXPECTED

        pool = f"pool-{uuid.uuid4().hex[:8]}"
        member_a, member_b = provider(client, down), provider(client, llm)
        made = client.post("/v1/pools/", json={"name": pool, "members": [member_a, member_b]})
        assert made.status_code == 200, made.text
        pooled = agent(client, f"{pool}/mock-chat-1", f"{backup}/text-embedding-3-small")
        for _ in range(3):
            down.queue_error(503, "overloaded")
        status, body = stream(client, pooled)
        assert status == 200 and "assistant_message" in body and "event: error" not in body, body
        rows = ledger(shared_db, pooled, 2)
    answered = [r for r in rows if r["status"] == "ok"]
    assert len(answered) == 1 and answered[0]["provider_name"] == member_b and answered[0]["pool"] == pool and answered[0]["streamed"]
    assert {k: answered[0][k] for k in EXPECTED} == EXPECTED
    assert all(r["pool"] == pool for r in rows) and {r["provider_name"] for r in rows} <= {member_a, member_b}


def test_a_user_token_sees_only_its_own_usage(shared_server: KettaProcess, shared_db: sa.Engine, llm: MockOpenAI) -> None:
    url, admin = shared_server.url, shared_server.headers
    org = httpx.post(f"{url}/v1/admin/orgs/", headers=admin, json={"name": f"org-usage-{uuid.uuid4().hex[:6]}"}).json()["id"]
    users = [httpx.post(f"{url}/v1/admin/users/", headers=admin, json={"name": f"u{i}", "organization_id": org}).json()["id"] for i in range(2)]
    tokens = [httpx.post(f"{url}/v1/ketta/tokens/", headers=admin, json={"user_id": u, "name": "t"}).json()["token"] for u in users]
    agents = []
    for user, token in zip(users, tokens):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
            name = provider(client, llm)
            agents.append(agent(client, f"{name}/mock-chat-1", f"{name}/text-embedding-3-small"))
            assert send(client, agents[-1]).status_code == 200
    for agent_id in agents:
        ledger(shared_db, agent_id, 1)

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[0]}"}, timeout=60) as as_first:
        mine = as_first.get("/v1/usage/", params={"group_by": "user"}).json()
        assert [r["key"] for r in mine["rows"]] == [users[0]] and mine["total"]["calls"] == 1
        by_agent = as_first.get("/v1/usage/", params={"group_by": "agent", "agent_id": agents[1]}).json()
        assert by_agent["rows"] == [] and by_agent["total"]["calls"] == 0  # another user's agent: nothing
        assert as_first.get("/v1/usage/", params={"user_id": users[1]}).status_code == 403
        exported = as_first.get("/v1/usage/export.csv")
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
        lines = list(csv.DictReader(io.StringIO(exported.text)))
        assert {line["user_id"] for line in lines} == {users[0]} and lines[0]["prompt_tokens"] == "1234"
        assert as_first.get("/v1/ketta/budgets").status_code == 403
        assert as_first.put("/v1/ketta/prices", json={"provider_name": "x", "model": "*", "input_per_mtok": 0, "output_per_mtok": 0}).status_code == 403

    everyone = httpx.get(f"{url}/v1/usage/", headers=admin, params={"group_by": "user", "organization_id": org}).json()
    assert sorted(r["key"] for r in everyone["rows"]) == sorted(users)
    assert httpx.get(f"{url}/v1/usage/", headers=admin, params={"start": "yesterday"}).status_code == 400
    assert httpx.get(f"{url}/v1/usage/", headers=admin, params={"group_by": "weekday"}).status_code == 422


def test_a_spent_hard_budget_refuses_before_the_provider(shared_server: KettaProcess, shared_db: sa.Engine, llm: MockOpenAI) -> None:
    with shared_server.client() as client:
        name = provider(client, llm)
        agent_id = agent(client, f"{name}/mock-chat-1", f"{name}/text-embedding-3-small")
        budget_name = f"agent-cap-{uuid.uuid4().hex[:6]}"
        made = client.post("/v1/ketta/budgets", json={"name": budget_name, "scope": "agent", "subject": agent_id, "metric": "tokens",
                                                      "limit": 1000, "period": "day", "hard": True})
        assert made.status_code == 200, made.text
        assert made.json()["spent"] == 0 and made.json()["exceeded"] is False
        bad = client.post("/v1/ketta/budgets", json={"name": "x", "scope": "agent", "subject": "agent-nope", "metric": "tokens",
                                                     "limit": 1, "period": "day"})
        assert bad.status_code == 400 and "agent-nope" in bad.json()["detail"]

        assert send(client, agent_id).status_code == 200  # under the limit: sent (1290 tokens)
        sent = len(llm.chat_requests())
        refused = send(client, agent_id)
        assert refused.status_code == 429, refused.text
        detail = refused.json()["detail"]
        assert budget_name in detail and "resets at" in detail and int(refused.headers["retry-after"]) > 0
        status, body = stream(client, agent_id)
        assert status == 200 and "event: error" in body and budget_name in body, body
        assert len(llm.chat_requests()) == sent  # neither reached the provider
        listed = [b for b in client.get("/v1/ketta/budgets").json() if b["name"] == budget_name]
        assert listed[0]["spent"] == 1290 and listed[0]["exceeded"] is True
        rows = ledger(shared_db, agent_id, 3)
        assert [r["status"] for r in rows] == ["ok", "refused", "refused"]
        assert client.delete(f"/v1/ketta/budgets/{made.json()['id']}").status_code == 200
        assert send(client, agent_id).status_code == 200


def test_anthropic_usage_blocking_and_streamed(shared_server: KettaProcess, shared_db: sa.Engine, llm: MockOpenAI) -> None:
    from mock_anthropic import MockAnthropic

    reported = {"input_tokens": 25, "output_tokens": 40, "cache_read_input_tokens": 900, "cache_creation_input_tokens": 100}
    with MockAnthropic(api_key="sk-ant-usage", usage=reported) as claude, shared_server.client() as client:
        embedding = provider(client, llm)
        name = f"claude-{uuid.uuid4().hex[:8]}"
        made = client.post("/v1/providers/", json={"name": name, "provider_type": "anthropic", "api_key": "sk-ant-usage",
                                                   "base_url": claude.base_url})
        assert made.status_code == 200, made.text
        agent_id = agent(client, f"{name}/claude-mock-1", f"{embedding}/text-embedding-3-small")
        assert send(client, agent_id).status_code == 200
        status, body = stream(client, agent_id)
        assert status == 200 and "event: error" not in body, body
        rows = ledger(shared_db, agent_id, 2)
    assert [r["streamed"] for r in rows] == [False, True]
    for row in rows:  # Anthropic's input_tokens excludes the cache: prompt = 25 + 900 + 100
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_input_tokens"], row["cache_write_tokens"],
                row["reasoning_tokens"]) == (1025, 40, 900, 100, None), row
        assert row["status"] == "ok" and row["provider_name"] == name


def test_concurrent_calls_overshoot_a_provider_budget_by_the_calls_in_flight_only(shared_server: KettaProcess, shared_db: sa.Engine) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with MockOpenAI(api_key=KEY, usage=REPORTED, latency_s=2.0) as slow, shared_server.client() as client:
        name = provider(client, slow)
        agents = [agent(client, f"{name}/mock-chat-1", f"{name}/text-embedding-3-small") for _ in range(3)]
        hard = client.post("/v1/ketta/budgets", json={"name": f"prov-{uuid.uuid4().hex[:6]}", "scope": "provider", "subject": name,
                                                      "metric": "tokens", "limit": 1000, "period": "month"})
        soft = client.post("/v1/ketta/budgets", json={"name": f"soft-{uuid.uuid4().hex[:6]}", "scope": "agent", "subject": agents[0],
                                                      "metric": "tokens", "limit": 1, "period": "day", "hard": False})
        assert hard.status_code == 200 and soft.status_code == 200, (hard.text, soft.text)
        with ThreadPoolExecutor(3) as pool:  # three calls in flight together, all admitted while nothing is spent
            answers = list(pool.map(lambda a: send(client, a).status_code, agents))
        assert answers == [200, 200, 200]
        sent = len(slow.chat_requests())
        late = send(client, agents[1])
        assert late.status_code == 429 and hard.json()["name"] in late.json()["detail"]
        assert len(slow.chat_requests()) == sent
        listed = {b["id"]: b for b in client.get("/v1/ketta/budgets").json()}
        assert listed[hard.json()["id"]]["spent"] == 3 * 1290  # the overshoot: what the calls in flight spent
        assert listed[soft.json()["id"]]["exceeded"] is True and listed[soft.json()["id"]]["hard"] is False
        provider_id = next(p["id"] for p in client.get("/v1/providers/").json() if p["name"] == name)
        health = client.get(f"/v1/providers/{provider_id}/health").json()
        assert [(b["name"], b["exceeded"], b["hard"]) for b in health["budgets"]] == [(hard.json()["name"], True, True)]
        assert health["errors"] == 0, health  # a refused call never reached the provider: not its error
        assert client.delete(f"/v1/ketta/budgets/{hard.json()['id']}").status_code == 200
        assert send(client, agents[0]).status_code == 200  # over its soft budget: the call goes on
        assert send(client, agents[0]).status_code == 200
    assert shared_server.log_text().count(f"Soft budget '{soft.json()['name']}'") == 1  # logged once per period


def test_the_price_catalog_knows_moonshot_anthropic_and_openai_but_not_a_custom_endpoint() -> None:
    from ketta.usage.prices import catalog_cost
    from ketta.usage.tokens import Tokens

    tokens = Tokens(prompt=1_000_000, completion=1_000_000, cached_input=0)
    for provider_type, base_url, model in (("kimi", "https://api.moonshot.ai/v1", "kimi-k2-0905-preview"),
                                           ("kimi", "https://api.moonshot.cn/v1", "kimi-k2-turbo-preview"),
                                           ("openai", "https://api.openai.com/v1", "gpt-4o-mini"),
                                           ("openai", None, "gpt-4o-mini"),
                                           ("anthropic", None, "claude-sonnet-4-5")):
        cost = catalog_cost(provider_type, base_url, model, tokens)
        assert cost is not None and cost > 0, (provider_type, base_url, model)
    assert catalog_cost("openai", "https://api.openai.com/v1", "gpt-4o-mini", tokens) == Decimal("0.75")  # $0.15 + $0.60 per M
    assert catalog_cost("openai", "http://127.0.0.1:8000/v1", "gpt-4o-mini", tokens) is None  # a custom endpoint: unknown
    assert catalog_cost("ollama", None, "llama3", tokens) is None
    assert catalog_cost("openai", None, "gpt-4o-mini", Tokens()) is None  # no usage reported: unknown, not 0


def test_usage_reports_of_every_wire_format() -> None:
    from ketta.usage.tokens import StreamTally, from_response

    def fields(t: Any) -> tuple:
        return (t.prompt, t.completion, t.cached_input, t.cache_write, t.reasoning)

    assert fields(from_response({"usage": {"input_tokens": 50, "output_tokens": 9, "input_tokens_details": {"cached_tokens": 40},
                                           "output_tokens_details": {"reasoning_tokens": 3}}})) == (50, 9, 40, None, 3)  # Responses
    assert fields(from_response({"model": "llama3", "done": True, "prompt_eval_count": 26, "eval_count": 290})) == (26, 290, None, None, None)
    assert fields(from_response({"usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64}})) == (100, 5, 64, None, None)
    assert fields(from_response({"choices": []})) == (None, None, None, None, None)
    tally = StreamTally()  # Anthropic streamed: input side first, output counts cumulative
    for event in ({"type": "message_start", "message": {"usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 1}}},
                  {"type": "content_block_delta"}, {"type": "message_delta", "usage": {"output_tokens": 7}},
                  {"type": "message_delta", "usage": {"output_tokens": 12}}, {"type": "message_stop"}):
        tally.see(event)
    assert fields(tally.tokens) == (100, 12, 90, None, None)


def test_kimi_usage_blocking_and_streamed(shared_server: KettaProcess, shared_db: sa.Engine, llm: MockOpenAI) -> None:
    from mock_moonshot import MockMoonshot

    with MockMoonshot(api_key="sk-moon-usage-0123") as moon, shared_server.client() as client:
        # Moonshot's usage: cache hits in a top-level cached_tokens; streamed inside the final choice
        moon.usage = {"prompt_tokens": 812, "completion_tokens": 33, "total_tokens": 845, "cached_tokens": 512}
        moon.usage_in_choice = True
        embedding = provider(client, llm)
        name = f"kimi-{uuid.uuid4().hex[:8]}"
        made = client.post("/v1/providers/", json={"name": name, "provider_type": "kimi", "api_key": "sk-moon-usage-0123",
                                                   "base_url": moon.base_url})
        assert made.status_code == 200, made.text
        agent_id = agent(client, f"{name}/kimi-k2-0905-preview", f"{embedding}/text-embedding-3-small")
        assert send(client, agent_id).status_code == 200
        status, body = stream(client, agent_id)
        assert status == 200 and "event: error" not in body, body
        rows = ledger(shared_db, agent_id, 2)
    requests = moon.chat_requests()
    assert [bool(r.body.get("stream")) for r in requests[-2:]] == [False, True]
    assert requests[-1].body["stream_options"] == {"include_usage": True}  # asked for, as the OpenAI wire format needs
    assert [r["streamed"] for r in rows] == [False, True] and not moon.violations
    for row in rows:
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_input_tokens"], row["reasoning_tokens"]) == (812, 33, 512, None), row
        assert row["status"] == "ok" and row["provider_name"] == name and row["model"] == "kimi-k2-0905-preview"
        assert row["cost_usd"] is None  # a proxy's URL is not Moonshot's: unpriced until the operator sets a price


def test_ollama_usage_blocking_and_streamed(shared_server: KettaProcess, shared_db: sa.Engine) -> None:
    reported = {"prompt_tokens": 420, "completion_tokens": 17, "total_tokens": 437}  # what Ollama's /v1 reports
    with MockOpenAI(usage=reported) as ollama, shared_server.client() as client:
        name = f"ollama-{uuid.uuid4().hex[:8]}"
        made = client.post("/v1/providers/", json={"name": name, "provider_type": "ollama", "api_key": "", "base_url": ollama.base_url.removesuffix("/v1")})
        assert made.status_code == 200, made.text
        agent_id = agent(client, f"{name}/mock-chat-1", f"{name}/text-embedding-3-small")
        assert send(client, agent_id).status_code == 200
        status, body = stream(client, agent_id)
        assert status == 200 and "event: error" not in body, body
        rows = ledger(shared_db, agent_id, 2)
    assert ollama.chat_requests()[-1].body["stream_options"] == {"include_usage": True}
    assert [r["streamed"] for r in rows] == [False, True]
    for row in rows:
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_input_tokens"], row["reasoning_tokens"]) == (420, 17, None, None), row
        assert row["status"] == "ok" and row["provider_name"] == name and row["cost_usd"] is None


def test_another_worker_shares_the_budget_count(shared_server: KettaProcess, shared_db: sa.Engine, llm: MockOpenAI,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """This test process plays a second worker (or replica) on the same database: it runs the
    ledger's own recording and budget check; what either spends, the other counts."""
    import asyncio

    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from ketta.usage import budgets, ledger as usage_ledger
    from ketta.usage.tokens import Tokens

    with shared_server.client() as client:
        name = provider(client, llm)
        agent_id = agent(client, f"{name}/mock-chat-1", f"{name}/text-embedding-3-small")
        budget_name = f"shared-{uuid.uuid4().hex[:6]}"
        made = client.post("/v1/ketta/budgets", json={"name": budget_name, "scope": "agent", "subject": agent_id, "metric": "tokens",
                                                      "limit": 2000, "period": "day", "hard": True})
        assert made.status_code == 200, made.text
        assert send(client, agent_id).status_code == 200  # the server's worker spends 1290 of 2000
        ledger(shared_db, agent_id, 1)
        with shared_db.connect() as conn:
            org, user = conn.execute(sa.text("SELECT organization_id, user_id FROM ketta_usage WHERE agent_id = :a"), {"a": agent_id}).one()

        engine = create_async_engine(shared_db.url.set(drivername="postgresql+asyncpg", query={}), poolclass=sa.NullPool)
        sessions = async_sessionmaker(engine)

        monkeypatch.setattr(usage_ledger, "_engine", lambda: engine)  # this process's pool writes its rows
        monkeypatch.setattr(budgets, "_with_budgets", (0.0, frozenset()))
        call = usage_ledger.Call(organization_id=org, user_id=user, agent_id=agent_id, run_id=None, provider=name, model="mock-chat-1",
                                 handle=f"{name}/mock-chat-1", pool=None, fallback=False, streamed=False)

        async def other_worker() -> None:
            async with sessions() as s:  # the server's spend is seen here: still under the limit
                await budgets.check(s, call.budget_parameters())
            await usage_ledger.record(call, Tokens(prompt=800, completion=10), "ok")  # this worker spends 810
            async with sessions() as s:
                with pytest.raises(budgets.BudgetExceeded) as refused:
                    await budgets.check(s, call.budget_parameters())
            assert refused.value.budget["spent"] == 2100
            await engine.dispose()

        asyncio.run(other_worker())
        sent = len(llm.chat_requests())
        answer = send(client, agent_id)  # the server's worker counts what the other spent
        assert answer.status_code == 429 and budget_name in answer.json()["detail"], answer.text
        assert len(llm.chat_requests()) == sent
        assert client.delete(f"/v1/ketta/budgets/{made.json()['id']}").status_code == 200


EMBEDDING_COLUMNS = ("provider_name", "provider_type", "model", "handle", "user_id", "prompt_tokens", "completion_tokens", "cost_usd",
                     "price_source", "status", "error_class", "streamed", "kind")


def embedding_rows(db: sa.Engine, provider_name: str, count: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    """The provider's embedding rows, oldest first, once there are ``count``."""
    deadline = time.monotonic() + timeout_s
    while True:
        with db.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.text(
                f"SELECT {', '.join(EMBEDDING_COLUMNS)} FROM ketta_usage WHERE provider_name = :p AND kind = 'embedding' ORDER BY id"),
                {"p": provider_name})]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_embedding_calls_are_recorded_to_the_token(shared_server: KettaProcess, shared_db: sa.Engine, llm: MockOpenAI) -> None:
    """Each embeddings request that reached the provider is a row with the usage it reported:
    archival memory inserted and searched, a refused batch (400) and Letta's retry of it."""
    with shared_server.client() as client:
        name = provider(client, llm)
        agent_id = agent(client, f"{name}/mock-chat-1", f"{name}/text-embedding-3-small")
        price = client.put("/v1/ketta/prices", json={"provider_name": name, "model": "text-embedding-3-small", "input_per_mtok": 0.02,
                                                     "output_per_mtok": 0})
        assert price.status_code == 200, price.text
        inserted = client.post(f"/v1/agents/{agent_id}/archival-memory",
                               json={"text": "The usage ledger counts every embedding token the provider reports. " * 7})
        assert inserted.status_code == 200, inserted.text
        llm.queue_error(400, "This input is refused once.", "invalid_request_error", path_suffix="/embeddings")
        found = client.get(f"/v1/agents/{agent_id}/archival-memory/search", params={"query": "which tokens are counted?"})
        assert found.status_code == 200, found.text
        sent = llm.requests_to("/embeddings")
        rows = embedding_rows(shared_db, name, len(sent))
        report = client.get("/v1/usage/", params={"group_by": "model", "provider": name}).json()

    assert len(sent) == 3 and len(rows) == 3, (sent, rows)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"] and rows[1]["error_class"] == "4xx"
    reported = [embedding_tokens(request.body["input"]) for request in sent]
    assert [r["prompt_tokens"] for r in rows] == [reported[0], None, reported[2]]  # the mock's usage.prompt_tokens, to the token
    for row in rows:
        assert row["kind"] == "embedding" and row["model"] == "text-embedding-3-small" and row["handle"] == f"{name}/text-embedding-3-small"
        assert row["provider_type"] == "openai" and row["user_id"] and row["completion_tokens"] is None and row["streamed"] is False
    assert [r["cost_usd"] for r in rows] == [Decimal(reported[0]) * Decimal("0.02") / 1000000, None, Decimal(reported[2]) * Decimal("0.02") / 1000000]
    assert rows[0]["price_source"] == "override"
    [embedding] = [r for r in report["rows"] if r["key"] == "text-embedding-3-small"]
    assert (embedding["calls"], embedding["calls_failed"], embedding["prompt_tokens"]) == (3, 1, reported[0] + reported[2])


def test_ollama_embedding_calls_are_recorded(shared_server: KettaProcess, shared_db: sa.Engine) -> None:
    """Ollama's embeddings go through its OpenAI-compatible /v1 (Letta's Ollama embedding configs)."""
    with MockOpenAI() as ollama, shared_server.client() as client:
        name = f"ollama-{uuid.uuid4().hex[:8]}"
        made = client.post("/v1/providers/", json={"name": name, "provider_type": "ollama", "api_key": "", "base_url": ollama.base_url.removesuffix("/v1")})
        assert made.status_code == 200, made.text
        # Letta 0.16.8 stores the handle's config with the provider's base_url (no /v1): still sent to /v1/embeddings
        agent_id = agent(client, f"{name}/mock-chat-1", f"{name}/text-embedding-3-small")
        inserted = client.post(f"/v1/agents/{agent_id}/archival-memory", json={"text": "Ollama's /v1 reports the usage of embeddings too."})
        assert inserted.status_code == 200, inserted.text
        [request] = ollama.requests_to("/embeddings")
        [row] = embedding_rows(shared_db, name, 1)
    assert row["prompt_tokens"] == embedding_tokens(request.body["input"]) and row["status"] == "ok"
    assert row["provider_type"] == "ollama" and row["cost_usd"] is None  # a local model: no catalog price


def test_a_spent_hard_budget_refuses_embeddings_before_the_provider(shared_server: KettaProcess, shared_db: sa.Engine, llm: MockOpenAI) -> None:
    with shared_server.client() as client:
        name = provider(client, llm)
        agent_id = agent(client, f"{name}/mock-chat-1", f"{name}/text-embedding-3-small")
        made = client.post("/v1/ketta/budgets", json={"name": f"emb-{uuid.uuid4().hex[:6]}", "scope": "provider", "subject": name,
                                                      "metric": "tokens", "limit": 5, "period": "day", "hard": True})
        assert made.status_code == 200, made.text
        first = client.post(f"/v1/agents/{agent_id}/archival-memory", json={"text": "Enough words to pass a five token budget at once."})
        assert first.status_code == 200, first.text
        embedding_rows(shared_db, name, 1)
        second = client.post(f"/v1/agents/{agent_id}/archival-memory", json={"text": "This one is refused."})
        rows = embedding_rows(shared_db, name, 2)
        assert client.delete(f"/v1/ketta/budgets/{made.json()['id']}").status_code == 200
    assert second.status_code == 429 and second.json()["error"]["type"] == "budget_exceeded", second.text
    assert len(llm.requests_to("/embeddings")) == 1
    assert [r["status"] for r in rows] == ["ok", "refused"] and rows[1]["prompt_tokens"] is None


def test_no_code_of_letta_calls_the_synchronous_llm_request() -> None:
    """The ledger records ``request_async``/``stream_async`` and embeddings, not a client's
    synchronous ``request``: nothing in Letta 0.16.8 calls it (its ``send_llm_request`` awaits
    ``request_async`` too). Every ``.request(`` call in Letta's source is an HTTP client's: the
    Anthropic and Z.ai proxy routes (closed by Ketta) and the OpenAI back-compat requestor."""
    import re
    from pathlib import Path

    import letta

    root = Path(letta.__file__).parent
    callers = set()
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in re.finditer(r"(\w+)\s*\.\s*request\s*\(", text):
            callers.add((path.relative_to(root).as_posix(), match.group(1)))
    assert callers == {("server/rest_api/routers/v1/anthropic.py", "client"), ("server/rest_api/routers/v1/zai.py", "client"),
                       ("openai_backcompat/openai_object.py", "requestor")}, callers


def test_a_ledger_row_is_one_statement_without_a_transaction(shared_db: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recording's cost: the row, its cost and its budgets' spend are one statement, sent in
    autocommit (one round trip: no BEGIN, no COMMIT) on a pooled connection."""
    import asyncio

    import asyncpg
    from sqlalchemy.ext.asyncio import create_async_engine

    from ketta.usage import ledger as usage_ledger
    from ketta.usage.tokens import Tokens

    # One pooled connection: the recording reuses the one opened below, its set-up queries done.
    engine = create_async_engine(shared_db.url.set(drivername="postgresql+asyncpg", query={}), pool_size=1, max_overflow=0)
    monkeypatch.setattr(usage_ledger, "_engine", lambda: engine)
    transactions: list[int] = []
    original = asyncpg.connection.Connection.transaction
    monkeypatch.setattr(asyncpg.connection.Connection, "transaction", lambda self, *a, **k: transactions.append(1) or original(self, *a, **k))
    statements: list[str] = []  # every query the driver sends (the ledger bypasses SQLAlchemy's execution events)
    connect = engine.sync_engine.dialect.connect

    def logged(*args: Any, **kwargs: Any) -> Any:
        connection = connect(*args, **kwargs)
        connection.driver_connection.add_query_logger(lambda query: statements.append(query.query))
        return connection

    monkeypatch.setattr(engine.sync_engine.dialect, "connect", logged)
    run_id = f"run-{uuid.uuid4().hex}"
    call = usage_ledger.Call(organization_id=f"org-{uuid.uuid4().hex[:8]}", user_id=None, agent_id=None, run_id=run_id, provider="nowhere",
                             model="mock-chat-1", handle="nowhere/mock-chat-1", pool=None, fallback=False, streamed=False)

    async def record() -> None:
        async with engine.connect() as conn:  # the dialect's first-connect queries, before counting
            await conn.execute(sa.text("SELECT 1"))
        transactions.clear(), statements.clear()
        await usage_ledger.record(call, Tokens(prompt=12, completion=3), "ok")
        await engine.dispose()

    asyncio.run(record())
    with shared_db.connect() as conn:
        row = conn.execute(sa.text("SELECT prompt_tokens, completion_tokens, status FROM ketta_usage WHERE run_id = :r"), {"r": run_id}).one()
    assert tuple(row) == (12, 3, "ok")
    assert len(statements) == 1 and statements[0].startswith("WITH price AS") and transactions == []


def test_the_ledger_writes_on_after_its_connection_is_lost(shared_db: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger writes on a pooled connection directly: when that connection is lost (a killed
    backend, PostgreSQL restarted), the row being written is lost (logged; the call goes on), the
    dead connection leaves the pool, and the next call's row is written."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    from ketta.usage import ledger as usage_ledger
    from ketta.usage.tokens import Tokens

    engine = create_async_engine(shared_db.url.set(drivername="postgresql+asyncpg", query={}), pool_size=1, max_overflow=0)
    monkeypatch.setattr(usage_ledger, "_engine", lambda: engine)
    organization = f"org-{uuid.uuid4().hex[:8]}"

    def call(run_id: str) -> Any:
        return usage_ledger.Call(organization_id=organization, user_id=None, agent_id=None, run_id=run_id, provider="nowhere",
                                 model="mock-chat-1", handle="nowhere/mock-chat-1", pool=None, fallback=False, streamed=False)

    async def scenario() -> None:
        await usage_ledger.record(call("before"), Tokens(prompt=1, completion=1), "ok")
        async with engine.connect() as conn:  # the pool's one connection, the ledger's too
            pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        with shared_db.connect() as admin:
            assert admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
        await usage_ledger.record(call("lost"), Tokens(prompt=2, completion=2), "ok")  # must not raise
        await usage_ledger.record(call("after"), Tokens(prompt=3, completion=3), "ok")
        await engine.dispose()

    asyncio.run(scenario())
    with shared_db.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT run_id, prompt_tokens FROM ketta_usage WHERE organization_id = :o"), {"o": organization}).all())
    assert rows == {"before": 1, "after": 3}, rows
