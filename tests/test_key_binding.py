"""A provider's key goes only to its own endpoint (issue 7, part 2).

The reproducer: a second loopback server ("thief") stands for any URL an agent config names;
whatever the config says, it must receive nothing.
"""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest
import sqlalchemy as sa

from ketta.providers.key_binding import endpoint_for_call, is_under, normalise, provider_endpoint
from mock_openai import MockOpenAI

KEY = "sk-bound-to-its-provider"


def test_endpoints_are_compared_normalised() -> None:
    assert normalise("HTTPS://API.Example.com./v1/") == ("https", "api.example.com", 443, "/v1")
    assert normalise("http://h:8000") == ("http", "h", 8000, "")
    assert normalise("bedrock") is None and normalise(None) is None

    base = "https://api.example.com/v1"
    for same in ("https://api.example.com/v1", "https://API.example.com:443/v1/", "https://api.example.com/v1/deployments/x"):
        assert is_under(same, base), same
    for other in ("http://api.example.com/v1", "https://api.example.com:8443/v1", "https://evil.example.com/v1",
                  "https://api.example.com/v10", "https://api.example.com/", "https://api.example.com.evil.com/v1",
                  "https://user@api.example.com.evil/v1", None, ""):
        assert not is_under(other, base), other


def test_a_call_goes_to_the_providers_endpoint() -> None:
    assert endpoint_for_call("https://evil.test/v1", "p", "openai", "https://api.example.com/v1") == "https://api.example.com/v1"
    assert endpoint_for_call("https://api.example.com/v1/", "p", "openai", "https://api.example.com/v1") == "https://api.example.com/v1/"
    # no base_url stored: the type's default
    assert provider_endpoint("openai", None) == "https://api.openai.com/v1"
    assert endpoint_for_call("https://evil.test/v1", "p", "openai", None) == "https://api.openai.com/v1"
    # Ollama-style configs keep their /v1 below a base_url without it
    assert endpoint_for_call("http://old-host:11434/v1", "p", "ollama", "http://new-host:11434") == "http://new-host:11434/v1"


@pytest.fixture(scope="module")
def llm() -> Iterator[MockOpenAI]:
    with MockOpenAI(api_key=KEY) as mock:
        yield mock


@pytest.fixture(scope="module")
def thief() -> Iterator[MockOpenAI]:
    """Any other URL: it records whatever reaches it, and must receive nothing."""
    with MockOpenAI() as mock:
        yield mock


@pytest.fixture(scope="module")
def provider(shared_server, llm: MockOpenAI) -> dict:
    with shared_server.client() as api:
        name = f"bound-{uuid.uuid4().hex[:6]}"
        created = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": KEY, "base_url": llm.base_url})
        assert created.status_code == 200, created.text
        [llm_config] = [m for m in api.get("/v1/models/", params={"provider_name": name}).json() if m["name"] == "mock-chat-1"]
        [embedding_config] = [m for m in api.get("/v1/models/embedding").json() if m["handle"] == f"{name}/text-embedding-3-small"]
        return {"name": name, "llm_config": llm_config, "embedding_config": embedding_config}


def test_agent_config_with_another_endpoint_is_refused(shared_server, provider, llm: MockOpenAI, thief: MockOpenAI) -> None:
    api = shared_server.client()
    llm_config, embedding_config = provider["llm_config"], provider["embedding_config"]
    thief.clear()

    refused = api.post("/v1/agents/", json={"llm_config": {**llm_config, "model_endpoint": thief.base_url}, "embedding_config": embedding_config})
    assert refused.status_code == 400, refused.text
    detail = refused.json()["detail"]
    assert "llm_config.model_endpoint" in detail and llm.base_url in detail and provider["name"] in detail

    refused = api.post("/v1/agents/", json={"llm_config": llm_config, "embedding_config": {**embedding_config, "embedding_endpoint": thief.base_url}})
    assert refused.status_code == 400, refused.text
    assert "embedding_config.embedding_endpoint" in refused.json()["detail"] and llm.base_url in refused.json()["detail"]

    # the same host on another port is another endpoint
    other_port = llm.base_url.replace(f":{llm.port}", f":{thief.port}")
    assert api.post("/v1/agents/", json={"llm_config": {**llm_config, "model_endpoint": other_port}, "embedding_config": embedding_config}).status_code == 400

    # the provider's own endpoint, written differently, is fine
    ok = api.post("/v1/agents/", json={"llm_config": {**llm_config, "model_endpoint": llm.base_url + "/"}, "embedding_config": embedding_config})
    assert ok.status_code == 200, ok.text
    assert thief.requests == []


def test_agent_patch_with_another_endpoint_is_refused(shared_server, provider, llm: MockOpenAI, thief: MockOpenAI) -> None:
    api = shared_server.client()
    llm_config, embedding_config = provider["llm_config"], provider["embedding_config"]
    agent = api.post("/v1/agents/", json={"llm_config": llm_config, "embedding_config": embedding_config})
    assert agent.status_code == 200, agent.text
    agent_id = agent.json()["id"]
    thief.clear()

    refused = api.patch(f"/v1/agents/{agent_id}", json={"llm_config": {**llm_config, "model_endpoint": thief.base_url}})
    assert refused.status_code == 400 and "llm_config.model_endpoint" in refused.json()["detail"], refused.text
    refused = api.patch(f"/v1/agents/{agent_id}", json={"embedding_config": {**embedding_config, "embedding_endpoint": thief.base_url}})
    assert refused.status_code == 400 and "embedding_config.embedding_endpoint" in refused.json()["detail"], refused.text
    stored = api.get(f"/v1/agents/{agent_id}").json()
    assert stored["llm_config"]["model_endpoint"] == llm.base_url and stored["embedding_config"]["embedding_endpoint"] == llm.base_url

    llm.clear()
    sent = api.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": "hi"}]})
    assert sent.status_code == 200, sent.text
    assert llm.chat_requests() and all(r.api_key == KEY for r in llm.chat_requests())
    assert thief.requests == []


def test_agents_stored_with_another_endpoint_call_the_provider(shared_server, shared_db, provider, llm: MockOpenAI, thief: MockOpenAI) -> None:
    """Agents stored before the check (here: written into the database) still never reach another URL."""
    api = shared_server.client()
    agent = api.post("/v1/agents/", json={"llm_config": provider["llm_config"], "embedding_config": provider["embedding_config"]})
    assert agent.status_code == 200, agent.text
    agent_id = agent.json()["id"]
    with shared_db.begin() as conn:
        for column, field in (("llm_config", "model_endpoint"), ("embedding_config", "embedding_endpoint")):
            conn.execute(sa.text(f"UPDATE agents SET {column} = ({column}::jsonb || jsonb_build_object(:f, :u))::json WHERE id = :i"),
                         {"f": field, "u": thief.base_url, "i": agent_id})
    assert api.get(f"/v1/agents/{agent_id}").json()["llm_config"]["model_endpoint"] == thief.base_url
    llm.clear()
    thief.clear()

    sent = api.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": "hi"}]})
    assert sent.status_code == 200, sent.text
    assert llm.chat_requests() and all(r.api_key == KEY for r in llm.chat_requests())

    passage = api.post(f"/v1/agents/{agent_id}/archival-memory", json={"text": "bound keys"})
    assert passage.status_code == 200, passage.text
    embeddings = llm.requests_to("/embeddings")
    assert embeddings and all(r.api_key == KEY for r in embeddings)
    assert thief.requests == []
