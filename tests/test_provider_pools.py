"""Provider pools: one handle over several providers (keys), calls spread, 429s cooled down, 503 when none answers."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Iterator

import httpx
import pytest
import sqlalchemy as sa

from conftest import KettaProcess
from mock_openai import MockOpenAI

KEYS = ("sk-pool-key-a-0123456789", "sk-pool-key-b-0123456789", "sk-pool-key-c-0123456789")
PER_KEY = 3  # chat completions per key and window


@pytest.fixture
def llm() -> Iterator[MockOpenAI]:
    """One upstream, three accounts, each limited to PER_KEY requests per 10 minutes (long enough
    that a 429 carries a Retry-After the OpenAI SDK does not wait for: it retries up to 120 s)."""
    with MockOpenAI(api_key=KEYS[0], api_keys=KEYS[1:], rate_limit=PER_KEY, rate_window_s=600, reply="pooled answer") as server:
        yield server


def make_pool(client: httpx.Client, llm: MockOpenAI) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    members = []
    for letter, key in zip("abc", KEYS):
        name = f"key-{letter}-{suffix}"
        created = client.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": key, "base_url": llm.base_url})
        assert created.status_code == 200, created.text
        members.append({"name": name, "id": created.json()["id"], "key": key})
    pool = client.post("/v1/pools/", json={"name": f"pool-{suffix}", "members": [m["name"] for m in members]})
    assert pool.status_code == 200, pool.text
    agent = client.post("/v1/agents/", json={
        "name": f"pooled-{suffix}", "agent_type": "letta_v1_agent", "include_base_tools": False,
        "model": f"pool-{suffix}/mock-chat-1", "embedding": f"{members[0]['name']}/text-embedding-3-small"})
    assert agent.status_code == 200, agent.text
    assert agent.json()["llm_config"]["handle"] == f"pool-{suffix}/mock-chat-1"
    return {"pool": pool.json(), "members": members, "agent": agent.json()["id"]}


def send(client: httpx.Client, agent_id: str) -> httpx.Response:
    return client.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": "hello"}]})


def answer(response: httpx.Response) -> str:
    return [m for m in response.json()["messages"] if m["message_type"] == "assistant_message"][0]["content"]


def per_key(llm: MockOpenAI) -> dict[str, int]:
    counts = {key: 0 for key in KEYS}
    for request in llm.chat_requests():
        counts[request.api_key] += 1
    return counts


def test_a_pool_is_managed_over_rest_and_listed_like_a_provider(shared_server: KettaProcess, llm: MockOpenAI) -> None:
    with shared_server.client() as client:
        made = make_pool(client, llm)
        pool = made["pool"]
        name = pool["name"]
        assert pool["provider_type"] == "pool" and pool["models"] == [f"{name}/mock-chat-1"]
        assert [m["name"] for m in pool["members"]] == [m["name"] for m in made["members"]]
        assert "api_key" not in json.dumps(pool) and not any(key in json.dumps(pool) for key in KEYS)

        assert client.get(f"/v1/pools/{pool['id']}").json() == pool
        assert pool in client.get("/v1/pools/").json()
        listed = client.get("/v1/providers/").json()
        assert [p["provider_type"] for p in listed if p["id"] == pool["id"]] == ["pool"]
        assert [m["handle"] for m in client.get("/v1/models/", params={"provider_name": name}).json()] == [f"{name}/mock-chat-1"]
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/v1/pools/", "/v1/pools/{pool_id}"} <= set(paths)

        # what cannot be done, with what to do instead; nothing stored
        taken = client.post("/v1/pools/", json={"name": name, "members": [made["members"][0]["name"]]})
        assert taken.status_code == 409
        unknown = client.post("/v1/pools/", json={"name": f"x-{name}", "members": ["no-such-provider"]})
        assert unknown.status_code == 400 and "no-such-provider" in unknown.json()["detail"]
        nested = client.post("/v1/pools/", json={"name": f"x-{name}", "members": [name]})
        assert nested.status_code == 400 and "is a pool" in nested.json()["detail"]
        empty = client.post("/v1/pools/", json={"name": f"x-{name}", "members": []})
        assert empty.status_code == 400
        as_provider = client.post("/v1/providers/", json={"name": f"x-{name}", "provider_type": "pool", "api_key": "sk-x"})
        assert as_provider.status_code == 422 and "/v1/pools/" in as_provider.json()["detail"]
        patched = client.patch(f"/v1/providers/{pool['id']}", json={"api_key": "sk-should-not-be-stored"})
        assert patched.status_code == 422 and f"/v1/pools/{pool['id']}" in patched.json()["detail"]
        assert not any(p["name"] == f"x-{name}" for p in client.get("/v1/providers/").json())

        refreshed = client.patch(f"/v1/providers/{pool['id']}/refresh")  # re-reads the members' models
        assert refreshed.status_code == 200, refreshed.text
        assert [m["handle"] for m in client.get("/v1/models/", params={"provider_name": name}).json()] == [f"{name}/mock-chat-1"]

        # members changed: order kept, same checks
        two = client.patch(f"/v1/pools/{pool['id']}", json={"members": [made["members"][2]["id"], made["members"][0]["name"]]})
        assert two.status_code == 200, two.text
        assert [m["name"] for m in two.json()["members"]] == [made["members"][2]["name"], made["members"][0]["name"]]

        deleted = client.delete(f"/v1/pools/{pool['id']}")
        assert deleted.status_code == 204
        assert client.get(f"/v1/pools/{pool['id']}").status_code == 404
        remaining = {p["name"] for p in client.get("/v1/providers/").json()}
        assert name not in remaining and {m["name"] for m in made["members"]} <= remaining


def test_a_pool_of_three_keys_sustains_three_times_one_keys_limit(shared_server: KettaProcess, shared_db: sa.Engine, llm: MockOpenAI) -> None:
    with shared_server.client() as client:
        made = make_pool(client, llm)
        replies = [send(client, made["agent"]) for _ in range(3 * PER_KEY)]
        assert [r.status_code for r in replies] == [200] * (3 * PER_KEY), replies[-1].text
        assert {answer(r) for r in replies} == {"pooled answer"}
        assert per_key(llm) == {key: PER_KEY for key in KEYS}  # spread evenly: no key went over its limit
        step = client.get(f"/v1/steps/{[m for m in replies[-1].json()['messages'] if m['step_id']][0]['step_id']}").json()
        assert step["model_handle"] in {f"{m['name']}/mock-chat-1" for m in made["members"]}  # the member that answered

        health = client.get(f"/v1/providers/{made['pool']['id']}/health").json()
        assert health["state"] == "healthy" and health["calls"] == 3 * PER_KEY and health["errors"] == 0, health
        assert sorted(m["provider_name"] for m in health["members"]) == sorted(m["name"] for m in made["members"])
        assert all(m["status_classes"] == {"2xx": PER_KEY} for m in health["members"]), health

        # every key spent: each member answers 429 once and cools down; the client gets 503 naming them
        over = send(client, made["agent"])
        assert over.status_code == 503, over.text
        for member in made["members"]:
            assert member["name"] in over.json()["detail"], over.text
        assert sum(per_key(llm).values()) == 3 * PER_KEY + 3
        for member in made["members"]:
            member_health = client.get(f"/v1/providers/{member['id']}/health").json()
            assert member_health["state"] == "cooling_down" and member_health["status_classes"].get("429") == 1, member_health
            assert datetime.fromisoformat(member_health["cooling_down_until"]) > datetime.fromisoformat(member_health["last_error"]["at"])
        pool_health = client.get(f"/v1/providers/{made['pool']['id']}/health").json()
        assert pool_health["state"] == "cooling_down", pool_health

        again = send(client, made["agent"])  # nobody is asked while all cool down
        assert again.status_code == 503 and "cooling down until" in again.json()["detail"], again.text
        assert sum(per_key(llm).values()) == 3 * PER_KEY + 3
    with shared_db.connect() as conn:  # shared with every worker and replica through the database
        cooling = conn.execute(sa.text("SELECT count(DISTINCT provider_id) FROM ketta_provider_health "
                                       "WHERE provider_id = ANY(:ids) AND cooldown_until > now()"),
                               {"ids": [m["id"] for m in made["members"]]}).scalar_one()
    assert cooling == 3


def test_a_member_answering_429_is_skipped_without_a_client_error(shared_server: KettaProcess, llm: MockOpenAI) -> None:
    with shared_server.client() as client:
        made = make_pool(client, llm)
        spent = made["members"][0]
        for _ in range(PER_KEY):  # someone else used this account's whole quota
            used = httpx.post(f"{llm.base_url}/chat/completions", headers={"Authorization": f"Bearer {spent['key']}"},
                              json={"model": "mock-chat-1", "messages": [{"role": "user", "content": "x"}]})
            assert used.status_code == 200
        replies = [send(client, made["agent"]) for _ in range(2 * PER_KEY)]
        assert [r.status_code for r in replies] == [200] * (2 * PER_KEY), [r.text for r in replies if r.status_code != 200]
        counts = per_key(llm)
        assert counts[spent["key"]] == PER_KEY + 1  # (the quota spent above) asked once more, answered 429, then left alone
        assert counts[KEYS[1]] == counts[KEYS[2]] == PER_KEY
        health = client.get(f"/v1/providers/{spent['id']}/health").json()
        assert health["state"] == "cooling_down" and health["status_classes"] == {"429": 1}, health
        pool_health = client.get(f"/v1/providers/{made['pool']['id']}/health").json()
        assert pool_health["state"] == "degraded" and pool_health["errors"] == 1, pool_health


def test_a_pooled_stream_breaking_before_its_first_token_goes_to_the_next_member(shared_server: KettaProcess, llm: MockOpenAI) -> None:
    with shared_server.client() as client:
        made = make_pool(client, llm)
        llm.queue_stream_failure(after=0, kind="drop")
        with client.stream("POST", f"/v1/agents/{made['agent']}/messages/stream",
                           json={"messages": [{"role": "user", "content": "hello"}], "stream_tokens": True}) as response:
            assert response.status_code == 200
            events = [json.loads(line[len("data: "):]) for line in response.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
    assert "error" not in json.dumps(events).lower(), events
    assert "".join(e.get("content") or "" for e in events if e.get("message_type") == "assistant_message") == "pooled answer"
    keys = [r.api_key for r in llm.chat_requests()]
    assert len(keys) == 2 and keys[0] != keys[1]  # the first member's stream broke, the next one answered


def test_pools_off_is_stock(switches_off_server: KettaProcess) -> None:
    """KETTA_PROVIDER_POOLS=false (on the server that turns a few independent switches off)."""
    with switches_off_server.client() as client:
        assert client.get("/v1/pools/").status_code == 404
        assert not any(path.startswith("/v1/pools") for path in client.get("/openapi.json").json()["paths"])
        refused = client.post("/v1/providers/", json={"name": "p", "provider_type": "pool", "api_key": "sk-x"})
        assert refused.status_code == 422


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
def test_a_pool_of_kimi_keys_on_two_endpoints_keeps_each_key_to_its_own(shared_server: KettaProcess, stream: bool) -> None:
    """Each Kimi member's key goes only to its own base_url, and Moonshot's rules hold for every
    member (the mocks refuse a thinking model's request without its reasoning_content, ...)."""
    from mock_moonshot import MockMoonshot

    keys = ("sk-moon-pool-a-0123456789", "sk-moon-pool-b-0123456789")
    suffix = uuid.uuid4().hex[:8]
    with MockMoonshot(api_key=keys[0]) as moon_a, MockMoonshot(api_key=keys[1]) as moon_b, \
            MockOpenAI(api_key="sk-embeddings-pool") as embedder, shared_server.client() as client:
        for name, key, base_url, kind in ((f"ka-{suffix}", keys[0], moon_a.base_url, "kimi"), (f"kb-{suffix}", keys[1], moon_b.base_url, "kimi"),
                                          (f"emb-{suffix}", "sk-embeddings-pool", embedder.base_url, "openai")):
            created = client.post("/v1/providers/", json={"name": name, "provider_type": kind, "api_key": key, "base_url": base_url})
            assert created.status_code == 200, created.text
        pool = client.post("/v1/pools/", json={"name": f"kimi-pool-{suffix}", "members": [f"ka-{suffix}", f"kb-{suffix}"]})
        assert pool.status_code == 200, pool.text
        assert f"kimi-pool-{suffix}/kimi-k2-thinking" in pool.json()["models"]
        agent = client.post("/v1/agents/", json={
            "name": f"kimi-pooled-{suffix}", "agent_type": "letta_v1_agent", "model": f"kimi-pool-{suffix}/kimi-k2-thinking",
            "embedding": f"emb-{suffix}/text-embedding-3-small",
            "memory_blocks": [{"label": "human", "value": "Name: Ada"}, {"label": "persona", "value": "A helpful agent."}]})
        assert agent.status_code == 200, agent.text
        for text in ("Hi, I am Ada.", "I like tea.", "What do you remember?"):
            body = {"messages": [{"role": "user", "content": text}]}
            if stream:
                with client.stream("POST", f"/v1/agents/{agent.json()['id']}/messages/stream", json={**body, "stream_tokens": True}) as response:
                    assert response.status_code == 200
                    events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
            else:
                response = client.post(f"/v1/agents/{agent.json()['id']}/messages", json=body)
                assert response.status_code == 200, response.text
                events = response.json()["messages"]
            assert "error_message" not in [e.get("message_type") for e in events], events
            assert "Noted, thank you!" in "".join(e.get("content") or "" for e in events if e.get("message_type") == "assistant_message")
        assert moon_a.violations == [] and moon_b.violations == []
        for moon, key in ((moon_a, keys[0]), (moon_b, keys[1])):
            assert moon.chat_requests(), "both members were used"
            assert {r.headers.get("authorization") for r in moon.chat_requests()} == {f"Bearer {key}"}
        assert not any(k in shared_server.log_text() for k in keys)


def test_a_failing_member_is_asked_once_when_another_can_answer(shared_server: KettaProcess) -> None:
    """No SDK retries on a member while others are left (KETTA_LLM_MAX_RETRIES applies to the last one):
    the next member answers at once, and the failing one, now with the most errors, is tried last."""
    suffix = uuid.uuid4().hex[:8]
    with MockOpenAI(api_key=KEYS[0], fail_status=503) as bad, MockOpenAI(api_key=KEYS[1], reply="from the good one") as good, \
            shared_server.client() as client:
        for name, key, llm in ((f"bad-{suffix}", KEYS[0], bad), (f"good-{suffix}", KEYS[1], good)):
            assert client.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": key, "base_url": llm.base_url}).status_code == 200
        assert client.post("/v1/pools/", json={"name": f"pool-{suffix}", "members": [f"bad-{suffix}", f"good-{suffix}"]}).status_code == 200
        agent = client.post("/v1/agents/", json={"name": f"p-{suffix}", "agent_type": "letta_v1_agent", "include_base_tools": False,
                                                  "model": f"pool-{suffix}/mock-chat-1", "embedding": f"good-{suffix}/text-embedding-3-small"})
        assert agent.status_code == 200, agent.text
        replies = [send(client, agent.json()["id"]) for _ in range(3)]
    assert [r.status_code for r in replies] == [200] * 3 and {answer(r) for r in replies} == {"from the good one"}
    assert len(bad.chat_requests()) == 1 and len(good.chat_requests()) == 3


def test_each_pool_rule_refuses_with_400_on_create_and_patch_storing_nothing(shared_server: KettaProcess, llm: MockOpenAI) -> None:
    """README "Pools": 1 to 20 existing providers, by name or id, of one provider_type, none a pool,
    named once, sharing a chat model; 400 naming what to fix on create and PATCH, nothing stored;
    a taken name 409; deleting a member removes it from its pools."""
    from mock_anthropic import MockAnthropic

    with shared_server.client() as client, MockAnthropic(api_key="sk-ant-pool") as claude, \
            MockOpenAI(api_key="sk-other-models", chat_models=("other-chat-1",)) as elsewhere:
        made = make_pool(client, llm)
        pool, members = made["pool"], made["members"]
        suffix = uuid.uuid4().hex[:8]
        claude_name, other_models = f"claude-{suffix}", f"other-models-{suffix}"
        assert client.post("/v1/providers/", json={"name": claude_name, "provider_type": "anthropic", "api_key": "sk-ant-pool",
                                                   "base_url": claude.base_url}).status_code == 200
        assert client.post("/v1/providers/", json={"name": other_models, "provider_type": "openai", "api_key": "sk-other-models",
                                                   "base_url": elsewhere.base_url}).status_code == 200
        a, b = members[0]["name"], members[1]["id"]  # by name and by id
        cases = {
            "empty": ([], "non-empty list"),
            "a blank name": ([a, "  "], "non-empty list"),
            "21 members": ([f"p{n}" for n in range(21)], "at most 20"),
            "unknown": ([a, "no-such-provider"], "'no-such-provider'"),
            "a pool": ([a, pool["name"]], "is a pool"),
            "named twice": ([a, members[0]["id"]], "named twice"),
            "two types": ([a, claude_name], "one provider_type"),
            "no common chat model": ([a, other_models], "no chat model in common"),
        }
        for case, (refs, says) in cases.items():
            name = f"refused-{uuid.uuid4().hex[:8]}"
            refused = client.post("/v1/pools/", json={"name": name, "members": refs})
            assert refused.status_code == 400 and says in refused.json()["detail"], (case, refused.text)
            assert name not in {p["name"] for p in client.get("/v1/providers/").json()}, case
            patched = client.patch(f"/v1/pools/{pool['id']}", json={"members": refs})
            assert patched.status_code == 400 and says in patched.json()["detail"], (case, patched.text)
            assert [m["name"] for m in client.get(f"/v1/pools/{pool['id']}").json()["members"]] == [m["name"] for m in members], case
        taken = client.post("/v1/pools/", json={"name": members[2]["name"], "members": [a]})  # a provider's name too
        assert taken.status_code == 409, taken.text
        one = client.post("/v1/pools/", json={"name": f"one-{suffix}", "members": [b]})
        assert one.status_code == 200 and [m["id"] for m in one.json()["members"]] == [b], one.text

        # deleting a member removes it from its pools (the others stay, in order)
        assert client.delete(f"/v1/providers/{members[1]['id']}").status_code in (200, 204)
        left = client.get(f"/v1/pools/{pool['id']}").json()["members"]
        assert [m["name"] for m in left] == [members[0]["name"], members[2]["name"]], left
