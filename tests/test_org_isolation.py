"""Every check that keeps organizations apart, each tested with a second organization's user token
(and each removed by a mutation in tools/mutations.py that these tests kill).

A (organization A) has two providers of its own key and a pool 'iso pool' of them; B (organization
B) has one provider and a pool of the same name. B must not see, change, use or borrow A's.
"""

from __future__ import annotations

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
