"""Unified providers through the REST API: create rules, hard delete, handles, keys per call.

One shared ketta server; each test uses its own provider names and its own mock LLM.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import sqlalchemy as sa

from conftest import unique
from mock_openai import MockOpenAI

DEFAULT_ORG = "org-00000000-0000-4000-8000-000000000000"


def create(api: httpx.Client, name: str, llm: MockOpenAI, key: str = "sk-good", **extra) -> httpx.Response:
    return api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": key, "base_url": llm.base_url, **extra})


def provider_rows(db: sa.Engine, name: str) -> list[dict]:
    with db.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM providers WHERE name = :n"), {"n": name})]


def model_rows(db: sa.Engine, provider_id: str) -> list[dict]:
    with db.connect() as conn:
        query = sa.text("SELECT handle, model_type, organization_id FROM provider_models WHERE provider_id = :p")
        return [dict(r._mapping) for r in conn.execute(query, {"p": provider_id})]


def make_agent(api: httpx.Client, name: str, **extra) -> str:
    body = {"name": f"agent-{uuid.uuid4().hex[:6]}", "model": f"{name}/mock-chat-1", "embedding": f"{name}/text-embedding-3-small", **extra}
    response = api.post("/v1/agents/", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def send(api: httpx.Client, agent_id: str, text: str = "hi") -> httpx.Response:
    return api.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": text}]})


def test_create_stores_an_org_scoped_row_with_provider_named_models_and_no_plaintext_key(api, shared_db, llm):
    name = unique("CC Test")
    response = create(api, name, llm, key="sk-good")
    assert response.status_code == 200, response.text
    body = response.json()
    assert "sk-good" not in response.text
    assert body["api_key_enc"] is None and body["api_key"] is None
    assert body["name"] == name and body["organization_id"] == DEFAULT_ORG and body["last_synced"]

    [row] = provider_rows(shared_db, name)
    assert row["organization_id"] == DEFAULT_ORG and row["is_deleted"] is False
    assert row["api_key_enc"] and "sk-good" not in row["api_key_enc"] and not row["api_key"]
    handles = {(m["handle"], m["model_type"]) for m in model_rows(shared_db, row["id"])}
    assert (f"{name}/mock-chat-1", "llm") in handles
    assert (f"{name}/text-embedding-3-small", "embedding") in handles
    assert all(h.startswith(f"{name}/") for h, _ in handles)

    listed = api.get("/v1/providers/").json()
    assert name in [p["name"] for p in listed] and "sk-good" not in json.dumps(listed)
    assert [p["name"] for p in api.get("/v1/providers/", params={"name": name}).json()] == [name]
    assert name in [p["name"] for p in api.get("/v1/providers/", params={"provider_type": "openai"}).json()]
    assert api.get("/v1/providers/", params={"provider_type": "anthropic", "name": name}).json() == []
    one = api.get(f"/v1/providers/{row['id']}")
    assert one.status_code == 200 and "sk-good" not in one.text


@pytest.mark.parametrize(
    ("raw_name", "fragment"),
    [("", "must not be empty"), ("   ", "must not be empty"), ("a/b", "must not contain '/'"), ("x" * 101, "at most 100")],
)
def test_invalid_names_are_refused_with_422_and_nothing_stored(api, shared_db, llm, raw_name, fragment):
    response = create(api, raw_name, llm)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]
    assert provider_rows(shared_db, raw_name.strip()) == []


def test_names_are_trimmed_and_a_live_duplicate_is_409(api, shared_db, llm):
    name = unique("trimmed")
    assert create(api, f"  {name}  ", llm).json()["name"] == name
    duplicate = create(api, f" {name}", llm)
    assert duplicate.status_code == 409
    assert name in duplicate.json()["detail"]
    assert len(provider_rows(shared_db, name)) == 1


def test_unknown_provider_type_is_422(api, shared_db):
    name = unique("typeless")
    response = api.post("/v1/providers/", json={"name": name, "provider_type": "not-a-type", "api_key": "k"})
    assert response.status_code == 422
    assert "provider_type" in response.text
    assert provider_rows(shared_db, name) == []


def test_a_key_the_upstream_rejects_stores_nothing_and_says_why(api, shared_db, llm):
    name = unique("badkey")
    response = create(api, name, llm, key="sk-wrong")
    assert response.status_code == 400
    assert "Incorrect API key provided" in response.json()["detail"]
    assert "sk-wrong" not in response.text
    assert provider_rows(shared_db, name) == []
    with shared_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM provider_models WHERE handle LIKE :h"), {"h": f"{name}/%"}).scalar() == 0


def test_refresh_reports_a_rejected_key(api, llm):
    name = unique("refresh")
    provider = create(api, name, llm).json()
    llm.api_key = "sk-rotated"  # the upstream no longer accepts the stored key
    response = api.patch(f"/v1/providers/{provider['id']}/refresh")
    assert response.status_code == 400
    assert "Incorrect API key provided" in response.json()["detail"]


def test_refresh_during_an_outage_answers_502_and_keeps_the_models(api, shared_db, llm):
    name = unique("outage")
    provider = create(api, name, llm).json()
    before = model_rows(shared_db, provider["id"])
    assert (f"{name}/mock-chat-1", "llm") in {(m["handle"], m["model_type"]) for m in before}
    llm.stop()  # the upstream goes away: connections are refused
    response = api.patch(f"/v1/providers/{provider['id']}/refresh")
    assert response.status_code == 502, response.text
    assert name in response.json()["detail"]
    assert sorted(map(str, model_rows(shared_db, provider["id"]))) == sorted(map(str, before))
    assert f"{name}/mock-chat-1" in {m["handle"] for m in api.get("/v1/models/", params={"provider_name": name}).json()}


def test_delete_removes_rows_and_frees_the_name(api, shared_db, llm):
    name = unique("to delete")
    provider = create(api, name, llm).json()
    assert model_rows(shared_db, provider["id"])
    response = api.delete(f"/v1/providers/{provider['id']}")
    assert response.status_code == 200
    assert provider_rows(shared_db, name) == []
    assert model_rows(shared_db, provider["id"]) == []
    again = create(api, name, llm)
    assert again.status_code == 200 and again.json()["id"] != provider["id"]
    assert f"{name}/mock-chat-1" in [m["handle"] for m in api.get("/v1/models/", params={"provider_name": name}).json()]


def test_delete_of_an_unknown_provider_is_404(api):
    response = api.delete(f"/v1/providers/provider-{uuid.uuid4()}")
    assert response.status_code == 404
    assert "not found" in response.json()["detail"].lower()


def test_two_providers_on_one_base_url_get_their_own_handles(api, llm):
    first, second = unique("Proxy A"), unique("Proxy B")
    for name in (first, second):
        assert create(api, name, llm).status_code == 200
    handles = [m["handle"] for m in api.get("/v1/models/").json()]
    assert f"{first}/mock-chat-1" in handles and f"{second}/mock-chat-1" in handles
    assert not [h for h in handles if h.startswith("openai-proxy/")]
    only_first = api.get("/v1/models/", params={"provider_name": first}).json()
    assert f"{first}/mock-chat-1" in {m["handle"] for m in only_first}
    assert all(m["handle"].startswith(f"{first}/") for m in only_first)
    assert {m["provider_name"] for m in only_first} == {first}
    embeddings = {m["handle"]: m for m in api.get("/v1/models/embedding").json()}
    assert embeddings[f"{first}/text-embedding-3-small"]["provider_name"] == first


def test_agent_on_the_provider_handle_answers_with_the_stored_key(api, llm):
    name = unique("agent key")
    create(api, name, llm, key="sk-good")
    agent_id = make_agent(api, name)
    llm.clear()
    response = send(api, agent_id)
    assert response.status_code == 200, response.text
    assert [r.api_key for r in llm.chat_requests()] == ["sk-good"]
    assert response.json()["messages"][-1]["content"] == "Hello from the mock LLM."


def test_a_key_changed_with_patch_is_used_by_the_next_message(api, llm):
    name = unique("rotating")
    provider = create(api, name, llm, key="sk-good").json()
    agent_id = make_agent(api, name)
    llm.api_key = "sk-new"
    patched = api.patch(f"/v1/providers/{provider['id']}", json={"api_key": "sk-new"})
    assert patched.status_code == 200 and "sk-new" not in patched.text
    llm.clear()
    assert send(api, agent_id).status_code == 200
    assert {r.api_key for r in llm.chat_requests()} == {"sk-new"}


def test_embedding_calls_carry_the_embedding_provider_key(api, llm):
    name = unique("embed key")
    create(api, name, llm, key="sk-good")
    agent_id = make_agent(api, name)
    llm.clear()
    response = api.post(f"/v1/agents/{agent_id}/archival-memory", json={"text": "Ketta remembers this."})
    assert response.status_code == 200, response.text
    embedding_calls = llm.requests_to("/embeddings")
    assert embedding_calls and {r.api_key for r in embedding_calls} == {"sk-good"}


def test_an_old_base_category_config_still_takes_the_database_key(api, shared_db, llm):
    name = unique("legacy")
    create(api, name, llm, key="sk-good")
    agent_id = make_agent(api, name)
    with shared_db.begin() as conn:
        conn.execute(
            sa.text("UPDATE agents SET llm_config = jsonb_set(llm_config::jsonb, '{provider_category}', '\"base\"')::json WHERE id = :id"),
            {"id": agent_id},
        )
    llm.clear()
    assert send(api, agent_id).status_code == 200
    assert {r.api_key for r in llm.chat_requests()} == {"sk-good"}


def test_env_fallback_key_when_none_is_stored(api, shared_server):
    # The shared server runs with KETTA_ENV_KEY_FALLBACK=true and KETTA_FALLBACK_DEMO_API_KEY set, bound to
    # KETTA_FALLBACK_DEMO_API_BASE (see conftest): the mock listens there.
    with MockOpenAI(port=shared_server.fallback_demo_port) as open_llm:
        name = "ketta fallback demo"
        response = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "", "base_url": open_llm.base_url})
        assert response.status_code == 200, response.text
        agent_id = make_agent(api, name)
        open_llm.clear()
        assert send(api, agent_id).status_code == 200
        assert {r.api_key for r in open_llm.chat_requests()} == {"sk-from-env"}
        api.delete(f"/v1/providers/{response.json()['id']}")


def test_agent_of_a_deleted_provider_gets_a_4xx_naming_it_and_recovers(api, llm):
    name = unique("vanishing")
    provider = create(api, name, llm).json()
    agent_id = make_agent(api, name)
    assert send(api, agent_id).status_code == 200
    assert api.delete(f"/v1/providers/{provider['id']}").status_code == 200
    orphaned = send(api, agent_id)
    assert orphaned.status_code == 400, orphaned.text
    assert f"Provider '{name}'" in orphaned.json()["detail"] and "deleted" in orphaned.json()["detail"]
    streamed = api.post(f"/v1/agents/{agent_id}/messages/stream", json={"messages": [{"role": "user", "content": "hi"}], "stream_tokens": True})
    assert streamed.status_code == 400 and f"Provider '{name}'" in streamed.json()["detail"]
    assert create(api, name, llm).status_code == 200
    llm.clear()
    assert send(api, agent_id).status_code == 200
    assert llm.chat_requests()
