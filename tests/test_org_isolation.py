"""Every check that keeps organizations apart, each tested with a second organization's user token
(and each removed by a mutation in tools/mutations.py that these tests kill).

A (organization A) has two providers of its own key and a pool 'iso pool' of them; B (organization
B) has one provider and a pool of the same name. B must not see, change, use or borrow A's, nor be
refused, counted or priced by A's usage budgets and prices.
"""

from __future__ import annotations

import time
import uuid
from typing import Iterator

import httpx
import pytest

from conftest import KettaProcess
from mock_openai import MockOpenAI

KEY_A = "sk-org-a-isolation-key"
KEY_B = "sk-org-b-isolation-key"
POOL = "iso pool"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def mocks() -> Iterator[tuple[MockOpenAI, MockOpenAI]]:
    with MockOpenAI(api_key=KEY_A) as a, MockOpenAI(api_key=KEY_B) as b:
        yield a, b


@pytest.fixture(scope="module")
def orgs(shared_server: KettaProcess, mocks: tuple[MockOpenAI, MockOpenAI]) -> dict[str, object]:
    llm_a, llm_b = mocks
    made: dict[str, object] = {}
    with shared_server.client() as admin:
        for who in ("a", "b"):
            org = admin.post("/v1/admin/orgs/", json={"name": f"iso-{who}-{uuid.uuid4().hex[:6]}"}).json()
            user = admin.post("/v1/admin/users/", json={"name": f"iso-{who}", "organization_id": org["id"]}).json()
            token = admin.post("/v1/ketta/tokens/", json={"user_id": user["id"]})
            assert token.status_code == 201, token.text
            made[f"org_{who}"], made[f"user_{who}"] = org["id"], user["id"]
            made[f"client_{who}"] = httpx.Client(base_url=shared_server.url, headers=bearer(token.json()["token"]), timeout=120)
    a, b = made["client_a"], made["client_b"]
    providers_a = []
    for n in (1, 2):
        created = a.post("/v1/providers/", json={"name": f"iso a{n}", "provider_type": "openai", "api_key": KEY_A, "base_url": llm_a.base_url})
        assert created.status_code == 200, created.text
        providers_a.append(created.json())
    created_b = b.post("/v1/providers/", json={"name": "iso b1", "provider_type": "openai", "api_key": KEY_B, "base_url": llm_b.base_url})
    assert created_b.status_code == 200, created_b.text
    pool_a = a.post("/v1/pools/", json={"name": POOL, "members": [p["name"] for p in providers_a]})
    assert pool_a.status_code == 200, pool_a.text
    pool_b = b.post("/v1/pools/", json={"name": POOL, "members": ["iso b1"]})
    assert pool_b.status_code == 200, pool_b.text
    made.update(providers_a=providers_a, provider_b=created_b.json(), pool_a=pool_a.json(), pool_b=pool_b.json())
    yield made
    a.close(), b.close()


def test_a_pool_cannot_take_another_organization_s_provider(orgs):
    b = orgs["client_b"]
    for ref in (orgs["providers_a"][0]["id"], orgs["providers_a"][0]["name"]):
        response = b.post("/v1/pools/", json={"name": f"thief {uuid.uuid4().hex[:4]}", "members": ["iso b1", ref]})
        assert response.status_code == 400, response.text
        assert ref in response.json()["detail"]
        patched = b.patch(f"/v1/pools/{orgs['pool_b']['id']}", json={"members": ["iso b1", ref]})
        assert patched.status_code == 400, patched.text


def test_a_pool_s_members_are_its_own_organization_s(orgs):
    b = orgs["client_b"]
    mine = b.get(f"/v1/pools/{orgs['pool_b']['id']}")
    assert mine.status_code == 200, mine.text
    assert [m["name"] for m in mine.json()["members"]] == ["iso b1"]
    listed = b.get("/v1/pools/").json()
    assert [p["id"] for p in listed] == [orgs["pool_b"]["id"]]
    assert [m["name"] for m in listed[0]["members"]] == ["iso b1"]
    health = b.get(f"/v1/providers/{orgs['pool_b']['id']}/health")
    assert health.status_code == 200, health.text
    assert orgs["providers_a"][0]["id"] not in health.text and "iso a1" not in health.text


def test_another_organization_s_pool_and_provider_health_are_404(orgs):
    b = orgs["client_b"]
    pool_a = orgs["pool_a"]["id"]
    not_found = {"detail": f"Pool '{pool_a}' not found."}
    for response in (b.get(f"/v1/pools/{pool_a}"), b.patch(f"/v1/pools/{pool_a}", json={"members": ["iso b1"]}),
                     b.delete(f"/v1/pools/{pool_a}")):
        # refused where the pool is looked up, before anything of A's is written (not by a later
        # check that would tell B the pool "was deleted")
        assert response.status_code == 404 and response.json() == not_found, (response.request.method, response.text)
    for provider_id in (pool_a, orgs["providers_a"][0]["id"]):
        health = b.get(f"/v1/providers/{provider_id}/health")
        assert health.status_code == 404, health.text
    still = orgs["client_a"].get(f"/v1/pools/{pool_a}")
    assert still.status_code == 200, still.text  # still A's, with A's members
    assert [m["name"] for m in still.json()["members"]] == ["iso a1", "iso a2"]


def test_a_message_never_uses_another_organization_s_key(orgs, mocks):
    llm_a, llm_b = mocks
    b = orgs["client_b"]
    # An agent on B's pool: only B's key, only B's endpoint.
    agent = b.post("/v1/agents/", json={"name": "iso-pool-agent", "model": f"{POOL}/mock-chat-1",
                                         "embedding": "iso b1/text-embedding-3-small", "include_base_tools": False})
    assert agent.status_code == 200, agent.text
    llm_a.clear(), llm_b.clear()
    for _ in range(3):
        sent = b.post(f"/v1/agents/{agent.json()['id']}/messages", json={"messages": [{"role": "user", "content": "hi"}]})
        assert sent.status_code == 200, sent.text
    assert llm_a.requests == [] and {r.api_key for r in llm_b.chat_requests()} == {KEY_B}
    # A config naming A's provider (which B's organization does not have), at A's endpoint.
    borrowed = b.post("/v1/agents/", json={
        "name": "iso-borrower", "include_base_tools": False,
        "llm_config": {"model": "mock-chat-1", "model_endpoint_type": "openai", "model_endpoint": llm_a.base_url,
                       "provider_name": "iso a1", "provider_category": "byok", "context_window": 8000},
        "embedding": "iso b1/text-embedding-3-small",
    })
    if borrowed.status_code == 200:
        llm_a.clear()
        sent = b.post(f"/v1/agents/{borrowed.json()['id']}/messages", json={"messages": [{"role": "user", "content": "hi"}]})
        assert sent.status_code in (400, 404), sent.text
        assert KEY_A not in {r.api_key for r in llm_a.requests}
    else:
        assert borrowed.status_code in (400, 404), borrowed.text


def test_listing_all_messages_shows_only_the_caller_s_organization(orgs, mocks):
    """GET /v1/messages/ ("across all agents") had no organization filter in Letta 0.16.8: B's
    token listed A's conversations. Under /v1 and /latest, with and without a cursor."""
    a, b = orgs["client_a"], orgs["client_b"]
    secret = f"A's private words {uuid.uuid4().hex[:8]}"
    mine = f"B's own words {uuid.uuid4().hex[:8]}"
    agent_a = a.post("/v1/agents/", json={"name": "iso-talker-a", "model": "iso a1/mock-chat-1",
                                           "embedding": "iso a1/text-embedding-3-small", "include_base_tools": False})
    assert agent_a.status_code == 200, agent_a.text
    sent = a.post(f"/v1/agents/{agent_a.json()['id']}/messages", json={"messages": [{"role": "user", "content": secret}]})
    assert sent.status_code == 200, sent.text
    agent_b = b.post("/v1/agents/", json={"name": "iso-talker-b", "model": "iso b1/mock-chat-1",
                                           "embedding": "iso b1/text-embedding-3-small", "include_base_tools": False})
    assert b.post(f"/v1/agents/{agent_b.json()['id']}/messages", json={"messages": [{"role": "user", "content": mine}]}).status_code == 200
    a_ids = [m["id"] for m in a.get(f"/v1/agents/{agent_a.json()['id']}/messages").json()]
    assert a_ids and secret in a.get("/v1/messages/", params={"limit": 1000}).text  # A sees its own
    for prefix in ("/v1", "/latest"):
        listed = b.get(f"{prefix}/messages/", params={"limit": 1000})
        assert listed.status_code == 200, listed.text
        assert mine in listed.text, "B's own messages are listed"
        assert secret not in listed.text and not any(i in listed.text for i in a_ids), f"{prefix}/messages/ shows A's messages"
        paged = b.get(f"{prefix}/messages/", params={"after": a_ids[0], "limit": 1000})
        assert secret not in paged.text and not (paged.status_code == 200 and any(i in paged.text for i in a_ids)), paged.text[:300]


def _until(probe, what: str, timeout_s: float = 120):
    """``probe()``'s first truthy answer (ledger rows and budget spend are written as a call ends)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found or time.monotonic() > deadline:
            assert found, f"no {what} within {timeout_s} s"
            return found
        time.sleep(0.2)


def test_another_organization_s_budget_and_price_never_apply(shared_server, orgs, mocks):
    """A and B each have a provider named 'iso twin'. A's spent hard budget on it refuses A's calls
    only: B's call goes through (B's organization has a budget too, so its calls are checked) and
    does not add to A's spend; A's price for it never prices B's calls (no catalog price for a mock)."""
    llm_a, llm_b = mocks
    a, b = orgs["client_a"], orgs["client_b"]
    for client, key, llm in ((a, KEY_A, llm_a), (b, KEY_B, llm_b)):
        made = client.post("/v1/providers/", json={"name": "iso twin", "provider_type": "openai", "api_key": key, "base_url": llm.base_url})
        assert made.status_code == 200, made.text
    agents = {}
    for who, client in (("a", a), ("b", b)):
        made = client.post("/v1/agents/", json={"name": f"iso-twin-{who}", "model": "iso twin/mock-chat-1",
                                                 "embedding": "iso twin/text-embedding-3-small", "include_base_tools": False})
        assert made.status_code == 200, made.text
        agents[who] = made.json()["id"]
    made_budgets = []
    with shared_server.client() as admin:
        for body in ({"name": "iso twin cap", "scope": "provider", "subject": "iso twin", "metric": "tokens", "limit": 1,
                      "period": "month", "hard": True, "organization_id": orgs["org_a"]},
                     {"name": "iso b roomy", "scope": "user", "subject": orgs["user_b"], "metric": "tokens", "limit": 10**9,
                      "period": "month", "hard": True, "organization_id": orgs["org_b"]}):
            budget = admin.post("/v1/ketta/budgets", json=body)
            assert budget.status_code == 200, budget.text
            made_budgets.append(budget.json()["id"])
        price = admin.put("/v1/ketta/prices", json={"provider_name": "iso twin", "model": "*", "input_per_mtok": 1000,
                                                     "output_per_mtok": 1000, "organization_id": orgs["org_a"]})
        assert price.status_code == 200, price.text

        def a_cap() -> dict:
            return next(x for x in admin.get("/v1/ketta/budgets", params={"organization_id": orgs["org_a"]}).json() if x["id"] == made_budgets[0])

        try:
            message = {"messages": [{"role": "user", "content": "hi"}]}
            assert a.post(f"/v1/agents/{agents['a']}/messages", json=message).status_code == 200  # under the limit: sent
            spent = _until(lambda: a_cap()["exceeded"] and a_cap()["spent"], "spend on A's budget")
            refused = a.post(f"/v1/agents/{agents['a']}/messages", json=message)
            assert refused.status_code == 429 and "iso twin cap" in refused.text, refused.text  # A's budget works for A

            llm_b.clear()
            sent = b.post(f"/v1/agents/{agents['b']}/messages", json=message)
            assert sent.status_code == 200, sent.text  # A's spent budget does not refuse B
            assert "iso twin cap" not in sent.text and len(llm_b.chat_requests()) >= 1
            usage = _until(lambda: (r := b.get("/v1/usage/", params={"provider": "iso twin"}).json())["total"]["calls"] and r, "row of B's call")
            assert usage["total"]["prompt_tokens"] and usage["total"]["cost_usd"] is None, usage  # not priced by A's price
            assert a_cap()["spent"] == spent  # B's tokens are not counted on A's budget
            mine = a.get("/v1/usage/", params={"provider": "iso twin"}).json()
            assert mine["total"]["cost_usd"], mine  # A's own calls are priced by A's price
        finally:
            for budget_id in made_budgets:
                admin.delete(f"/v1/ketta/budgets/{budget_id}")
            admin.delete("/v1/ketta/prices", params={"provider_name": "iso twin", "model": "*", "organization_id": orgs["org_a"]})


def test_ids_of_another_organization_named_in_a_body_are_404(orgs):
    """Letta 0.16.8 checks the organization of the object a route is about, not of the ids a body
    refers to: B's agent took A's block, folder and identity by id, B's group took A's agents, B's
    identity linked A's block and agent and then listed them. Each is 404 as for an unknown id, and
    nothing of A's is linked; B's own ids still work."""
    a, b = orgs["client_a"], orgs["client_b"]
    secret = f"A's block words {uuid.uuid4().hex[:8]}"
    model = {"model": "iso a1/mock-chat-1", "embedding": "iso a1/text-embedding-3-small", "include_base_tools": False}
    agent_a = a.post("/v1/agents/", json={"name": "iso-ref-a", **model}).json()
    block_a = a.post("/v1/blocks/", json={"label": "iso_secret", "value": secret}).json()
    identity_a = a.post("/v1/identities/", json={"identifier_key": f"iso-a-{uuid.uuid4().hex[:6]}", "name": "A", "identity_type": "user"}).json()
    folder_a = a.post("/v1/folders/", json={"name": f"iso-folder-{uuid.uuid4().hex[:6]}", "embedding": "iso a1/text-embedding-3-small"}).json()
    assert a.post("/v1/tools/add-base-tools").status_code == 200
    tool_a = a.get("/v1/tools/", params={"name": "memory_insert"}).json()[0]
    message_ids_a = [m["id"] for m in a.get(f"/v1/agents/{agent_a['id']}/messages").json()]
    assert all(x.get("id") for x in (agent_a, block_a, identity_a, folder_a)) and message_ids_a
    a_ids = [agent_a["id"], block_a["id"], identity_a["id"], folder_a["id"], tool_a["id"], *message_ids_a]

    b_model = {"model": "iso b1/mock-chat-1", "embedding": "iso b1/text-embedding-3-small", "include_base_tools": False}
    agent_b = b.post("/v1/agents/", json={"name": "iso-ref-b", **b_model})
    assert agent_b.status_code == 200, agent_b.text
    agent_b = agent_b.json()

    def refused(response: httpx.Response, what: str) -> None:
        assert response.status_code == 404, (what, response.status_code, response.text[:300])
        assert secret not in response.text

    # Agents: create and update.
    agents_before = len(b.get("/v1/agents/", params={"limit": 1000}).json())
    for field, ids in (("block_ids", [block_a["id"]]), ("folder_ids", [folder_a["id"]]), ("source_ids", [folder_a["id"]]),
                       ("identity_ids", [identity_a["id"]])):
        refused(b.post("/v1/agents/", json={"name": f"iso-thief-{field}", **b_model, field: ids}), f"create {field}")
    assert len(b.get("/v1/agents/", params={"limit": 1000}).json()) == agents_before  # nothing half-made
    for field, ids in (("block_ids", [block_a["id"]]), ("folder_ids", [folder_a["id"]]), ("source_ids", [folder_a["id"]]),
                       ("identity_ids", [identity_a["id"]]), ("tool_ids", [tool_a["id"]]), ("message_ids", message_ids_a)):
        refused(b.patch(f"/v1/agents/{agent_b['id']}", json={field: ids}), f"update {field}")
    after = b.get(f"/v1/agents/{agent_b['id']}")
    assert after.status_code == 200 and not any(i in after.text for i in a_ids), "B's agent holds something of A's"

    # Groups.
    refused(b.post("/v1/groups/", json={"agent_ids": [agent_a["id"]], "description": "x", "manager_config": {"manager_type": "round_robin"}}),
            "group agent_ids")
    refused(b.post("/v1/groups/", json={"agent_ids": [agent_b["id"]], "description": "x",
                                        "manager_config": {"manager_type": "supervisor", "manager_agent_id": agent_a["id"]}}), "group manager")
    refused(b.post("/v1/groups/", json={"agent_ids": [agent_b["id"]], "description": "x", "manager_config": {"manager_type": "round_robin"},
                                        "shared_block_ids": [block_a["id"]]}), "group shared blocks")
    group_b = b.post("/v1/groups/", json={"agent_ids": [agent_b["id"]], "description": "x", "manager_config": {"manager_type": "round_robin"}})
    assert group_b.status_code == 200, group_b.text  # its own agent: fine
    refused(b.patch(f"/v1/groups/{group_b.json()['id']}", json={"agent_ids": [agent_a["id"]]}), "group update")
    assert b.get(f"/v1/groups/{group_b.json()['id']}").json()["agent_ids"] == [agent_b["id"]]

    # Identities: create, update, upsert; what B's identity lists stays B's.
    refused(b.post("/v1/identities/", json={"identifier_key": f"iso-b-{uuid.uuid4().hex[:6]}", "name": "B", "identity_type": "user",
                                            "agent_ids": [agent_a["id"]], "block_ids": [block_a["id"]]}), "identity create")
    identity_b = b.post("/v1/identities/", json={"identifier_key": f"iso-b-{uuid.uuid4().hex[:6]}", "name": "B", "identity_type": "user"})
    assert identity_b.status_code == 200, identity_b.text
    identity_b = identity_b.json()
    refused(b.patch(f"/v1/identities/{identity_b['id']}", json={"block_ids": [block_a["id"]]}), "identity update")
    refused(b.put("/v1/identities/", json={"identifier_key": identity_b["identifier_key"], "name": "B", "identity_type": "user",
                                           "agent_ids": [agent_a["id"]]}), "identity upsert")
    for listing in ("blocks", "agents"):
        listed = b.get(f"/v1/identities/{identity_b['id']}/{listing}")
        assert listed.status_code == 200 and listed.json() == [], listed.text[:300]
    assert a.get(f"/v1/agents/{agent_a['id']}").json()["identity_ids"] == []

    # B's own ids still work.
    block_b = b.post("/v1/blocks/", json={"label": "iso_mine", "value": "B's block"}).json()
    own = b.patch(f"/v1/agents/{agent_b['id']}", json={"block_ids": [block_b["id"]], "identity_ids": [identity_b["id"]]})
    assert own.status_code == 200 and "B's block" in own.text, own.text[:300]
