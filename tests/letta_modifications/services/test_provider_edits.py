"""PATCH like create, first listings that retry, the env fallback key when listing, input refused
with a 4xx instead of a 500 (issue 9, pieces 1, 3 and 5).

One shared ketta server (every request sends its token); each test has its own provider names
and its own mock LLMs on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from conftest import unique
from ketta.db.database import free_port
from mock_openai import MockOpenAI


def create(api: httpx.Client, name: str, base_url: str, key: str = "sk-good", **extra) -> httpx.Response:
    return api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": key, "base_url": base_url, **extra})


def row(db: sa.Engine, provider_id: str) -> dict | None:
    with db.connect() as conn:
        found = conn.execute(sa.text("SELECT * FROM providers WHERE id = :id"), {"id": provider_id}).first()
        return dict(found._mapping) if found else None


def models(db: sa.Engine, provider_id: str) -> dict[str, dict]:
    with db.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM provider_models WHERE provider_id = :p"), {"p": provider_id})
        return {r.handle: dict(r._mapping) for r in rows}


def listed(api: httpx.Client, name: str) -> set[str]:
    """The provider's chat handles in GET /v1/models/ (which lists its embedding models after them, for Klui)."""
    response = api.get("/v1/models/", params={"provider_name": name})
    assert response.status_code == 200, response.text
    return {m["handle"] for m in response.json() if m.get("model_type") != "embedding"}


def agent_for(api: httpx.Client, name: str, model: str = "mock-chat-1") -> str:
    body = {"name": f"agent-{uuid.uuid4().hex[:6]}", "model": f"{name}/{model}", "embedding": f"{name}/text-embedding-3-small"}
    response = api.post("/v1/agents/", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def send(api: httpx.Client, agent_id: str) -> httpx.Response:
    return api.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": "hi"}]})


# --- 1. PATCH like create ---------------------------------------------------------------------


def test_a_stored_key_never_follows_a_new_origin_by_itself(api, shared_db, llm):
    """PATCH with only a base_url on another scheme/host/port of a provider with a stored key is 400
    and changes nothing (the key would be sent there); with the key sent again it moves and relists."""
    name = unique("moved")
    provider = create(api, name, llm.base_url).json()
    before = row(shared_db, provider["id"])
    with MockOpenAI(api_key="sk-good", chat_models=("moved-chat-2",)) as new_home:
        new_home.clear()
        response = api.patch(f"/v1/providers/{provider['id']}", json={"base_url": new_home.base_url})
        assert response.status_code == 400, response.text
        assert "another origin" in response.json()["detail"] and "api_key" in response.json()["detail"]
        assert new_home.requests == []  # the stored key went nowhere
        after = row(shared_db, provider["id"])
        assert after["base_url"] == llm.base_url and after["updated_at"] == before["updated_at"]
        # Same origin, another path: the key may follow (e.g. adding Ollama's /v1).
        same_origin = api.patch(f"/v1/providers/{provider['id']}", json={"base_url": llm.base_url.rstrip("/") + "/"})
        assert same_origin.status_code == 200, same_origin.text
        response = api.patch(f"/v1/providers/{provider['id']}", json={"base_url": new_home.base_url, "api_key": "sk-good"})
        assert response.status_code == 200, response.text
        assert response.json()["base_url"] == new_home.base_url
        assert [r.api_key for r in new_home.requests_to("/models")] == ["sk-good"]  # the key sent again, checked there
        assert row(shared_db, provider["id"])["base_url"] == new_home.base_url
        assert listed(api, name) == {f"{name}/moved-chat-2"}  # the old endpoint's model is gone
        assert f"{name}/mock-chat-1" not in models(shared_db, provider["id"])


def test_patch_with_only_base_url_moves_a_provider_without_a_stored_key(api, shared_db):
    """Klui's ollama edit form sends only base_url (stock: 422): with no key stored nothing follows."""
    name = unique("keyless move")
    with MockOpenAI() as old_home, MockOpenAI(chat_models=("moved-chat-2",)) as new_home:
        created = create(api, name, old_home.base_url, key="")
        assert created.status_code == 200, created.text
        provider = created.json()
        response = api.patch(f"/v1/providers/{provider['id']}", json={"base_url": new_home.base_url})
        assert response.status_code == 200, response.text
        assert row(shared_db, provider["id"])["base_url"] == new_home.base_url
        assert listed(api, name) == {f"{name}/moved-chat-2"}


def test_an_existing_agent_calls_the_patched_base_url(api, llm):
    name = unique("moving agent")
    provider = create(api, name, llm.base_url).json()
    agent_id = agent_for(api, name)
    with MockOpenAI(api_key="sk-good") as new_home:
        assert api.patch(f"/v1/providers/{provider['id']}", json={"base_url": new_home.base_url, "api_key": "sk-good"}).status_code == 200
        llm.clear()
        assert send(api, agent_id).status_code == 200
        assert [r.api_key for r in new_home.chat_requests()] and llm.chat_requests() == []


def test_patch_with_a_refused_key_answers_400_and_keeps_the_old_key(api, shared_db, llm):
    name = unique("refused patch")
    provider = create(api, name, llm.base_url).json()
    before = row(shared_db, provider["id"])
    response = api.patch(f"/v1/providers/{provider['id']}", json={"api_key": "sk-wrong"})
    assert response.status_code == 400, response.text
    assert "Incorrect API key provided" in response.json()["detail"] and "sk-wrong" not in response.text
    after = row(shared_db, provider["id"])
    assert after["api_key_enc"] == before["api_key_enc"] and after["updated_at"] == before["updated_at"]
    agent_id = agent_for(api, name)
    llm.clear()
    assert send(api, agent_id).status_code == 200
    assert {r.api_key for r in llm.chat_requests()} == {"sk-good"}


def test_patch_with_an_accepted_key_stores_it_and_relists(api, shared_db, llm):
    name = unique("new key")
    provider = create(api, name, llm.base_url).json()
    llm.api_key, llm.chat_models = "sk-new", ("mock-chat-1", "mock-chat-3")
    llm.clear()
    response = api.patch(f"/v1/providers/{provider['id']}", json={"api_key": "sk-new"})
    assert response.status_code == 200, response.text
    assert [r.api_key for r in llm.requests_to("/models")] == ["sk-new"]
    assert listed(api, name) == {f"{name}/mock-chat-1", f"{name}/mock-chat-3"}
    assert row(shared_db, provider["id"])["base_url"] == llm.base_url  # not sent: kept


def test_patch_to_an_unreachable_base_url_is_502_and_changes_nothing(api, shared_db, llm):
    name = unique("unreachable patch")
    provider = create(api, name, llm.base_url).json()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    response = api.patch(f"/v1/providers/{provider['id']}", json={"base_url": dead, "api_key": "sk-good"})
    assert response.status_code == 502, response.text
    assert name in response.json()["detail"] and dead in response.json()["detail"]
    assert row(shared_db, provider["id"])["base_url"] == llm.base_url
    assert listed(api, name) == {f"{name}/mock-chat-1"}


def test_a_new_key_replaces_one_that_cannot_be_decrypted(api, shared_db, llm):
    name = unique("undecryptable")
    provider = create(api, name, llm.base_url).json()
    with shared_db.begin() as conn:  # as if the encryption key had changed since it was stored
        foreign = base64.b64encode(os.urandom(96)).decode()  # ciphertext-shaped, not decryptable with this server's key
        conn.execute(sa.text("UPDATE providers SET api_key_enc = :enc WHERE id = :id"), {"enc": foreign, "id": provider["id"]})
    with MockOpenAI(api_key="sk-good") as elsewhere:
        only_url = api.patch(f"/v1/providers/{provider['id']}", json={"base_url": elsewhere.base_url})
        assert elsewhere.requests == []
    assert only_url.status_code == 400, only_url.text
    assert "cannot be decrypted" in only_url.json()["detail"] and "api_key" in only_url.json()["detail"]
    assert row(shared_db, provider["id"])["base_url"] == llm.base_url
    replaced = api.patch(f"/v1/providers/{provider['id']}", json={"api_key": "sk-good"})
    assert replaced.status_code == 200, replaced.text
    agent_id = agent_for(api, name)
    llm.clear()
    assert send(api, agent_id).status_code == 200
    assert {r.api_key for r in llm.chat_requests()} == {"sk-good"}


def test_patch_of_an_unknown_provider_is_404(api):
    response = api.patch(f"/v1/providers/provider-{uuid.uuid4()}", json={"base_url": "http://127.0.0.1:1/v1"})
    assert response.status_code == 404, response.text


def test_models_that_disappear_on_refresh_are_deleted_not_flagged(api, shared_db, llm):
    name = unique("shrinking")
    llm.chat_models = ("mock-chat-1", "mock-chat-2")
    provider = create(api, name, llm.base_url).json()
    assert f"{name}/mock-chat-2" in models(shared_db, provider["id"])
    llm.chat_models = ("mock-chat-1",)
    assert api.patch(f"/v1/providers/{provider['id']}/refresh").status_code == 200
    stored = models(shared_db, provider["id"])
    assert f"{name}/mock-chat-2" not in stored and f"{name}/mock-chat-1" in stored
    assert not [m for m in stored.values() if m["is_deleted"]]


# --- 5. first listing retries; api_key "" as stock; env fallback when listing ------------------


def test_a_provider_created_during_an_outage_is_listed_by_the_first_model_listing(api, shared_db):
    """Letta's test_byok_provider_last_synced_triggers_sync_when_null, over REST."""
    name = unique("outage")
    port = free_port()
    created = create(api, name, f"http://127.0.0.1:{port}/v1")  # nothing listens there yet
    assert created.status_code == 200, created.text
    provider = created.json()
    assert provider["last_synced"] is None and row(shared_db, provider["id"])["last_synced"] is None
    assert models(shared_db, provider["id"]) == {}
    assert listed(api, name) == set()  # still down: an empty listing, not an error, still unsynced
    assert row(shared_db, provider["id"])["last_synced"] is None
    with MockOpenAI(api_key="sk-good", port=port) as back:
        assert listed(api, name) == {f"{name}/mock-chat-1"}
        assert [r.api_key for r in back.requests_to("/models")] == ["sk-good"]
        assert row(shared_db, provider["id"])["last_synced"] is not None
        back.clear()
        assert listed(api, name) == {f"{name}/mock-chat-1"}  # synced: read from the database
        assert back.requests_to("/models") == []


def test_env_fallback_key_lists_the_models_at_create_and_refresh(api, shared_server):
    """A provider created without a key whose {NAME}_API_KEY is set (KETTA_FALLBACK_DEMO_API_KEY on
    the shared server, with the fallback on) is listed with that key at the key's own endpoint
    (KETTA_FALLBACK_DEMO_API_BASE), as its messages would be (stock: refused)."""
    name = "ketta fallback demo"
    with MockOpenAI(api_key="sk-from-env", port=shared_server.fallback_demo_port) as needs_env_key:
        response = create(api, name, needs_env_key.base_url, key="")
        try:
            assert response.status_code == 200, response.text
            assert [r.api_key for r in needs_env_key.requests_to("/models")] == ["sk-from-env"]
            assert listed(api, name) == {f"{name}/mock-chat-1"}
            needs_env_key.clear()
            assert api.patch(f"/v1/providers/{response.json()['id']}/refresh").status_code == 200
            assert [r.api_key for r in needs_env_key.requests_to("/models")] == ["sk-from-env"]
        finally:
            if response.status_code == 200:
                api.delete(f"/v1/providers/{response.json()['id']}")


_CREATE_WITH_EMPTY_KEY = """
import asyncio, sys
from ketta import letta_modifications
from ketta.core.settings import KettaSettings
letta_modifications.apply_all(KettaSettings())
from letta.schemas.enums import ProviderType
from letta.schemas.providers import ProviderCreate
from letta.services.provider_manager import ProviderManager
from letta.services.user_manager import UserManager

async def main():
    actor = await UserManager().get_default_actor_async()
    request = ProviderCreate(name=sys.argv[1], provider_type=ProviderType.ollama, api_key="", base_url=sys.argv[2])
    print((await ProviderManager().create_provider_async(request, actor=actor)).id)

asyncio.run(main())
"""


def test_provider_manager_stores_an_empty_api_key_encrypted_as_stock_does(shared_server, shared_db):
    """Letta's test_provider_with_none_api_key: ProviderManager.create_provider_async with api_key=""
    stores an encrypted empty string, not NULL (the REST route turns "" into null before, as stock)."""
    from conftest import clean_env

    key = (Path(shared_server.log_path).parent / "encryption_key").read_text().strip()
    env = clean_env(LETTA_PG_URI=shared_server.db_uri, LETTA_ENCRYPTION_KEY=key)
    name = unique("no key ollama")
    done = subprocess.run([sys.executable, "-c", _CREATE_WITH_EMPTY_KEY, name, f"http://127.0.0.1:{free_port()}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    stored = row(shared_db, done.stdout.strip().splitlines()[-1])
    assert stored is not None and stored["name"] == name and stored["api_key_enc"] is not None
    from letta.helpers.crypto_utils import CryptoUtils

    assert CryptoUtils.decrypt(stored["api_key_enc"], key) == ""
    assert stored["last_synced"] is None  # its Ollama was unreachable: the first listing will retry


# --- 3. no 500 from provider or model input ---------------------------------------------------


@pytest.mark.parametrize(
    ("raw_body", "fragment"),
    [
        ('{"name": "nul\\u0000name", "provider_type": "openai", "api_key": "k"}', "NUL"),
        ('{"name": "lone \\ud800 surrogate", "provider_type": "openai", "api_key": "k"}', "surrogate"),
        ('{"name": "tab\\tname", "provider_type": "openai", "api_key": "k"}', "control character"),
        ('{"name": "nul url", "provider_type": "openai", "api_key": "k", "base_url": "http://127.0.0.1/\\u0000"}', "base_url"),
        ('{"name": "letta type", "provider_type": "letta", "api_key": "k"}', "provider_type"),
        ('{"name": "oauth type", "provider_type": "chatgpt_oauth", "api_key": "k"}', "provider_type"),
    ],
)
def test_bad_provider_input_is_422_and_stores_nothing(api, shared_db, raw_body, fragment):
    before = _provider_count(shared_db)
    response = api.post("/v1/providers/", content=raw_body.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert fragment in json.dumps(response.json()["detail"])
    assert _provider_count(shared_db) == before


def _provider_count(db: sa.Engine) -> int:
    with db.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM providers")).scalar()


def test_bad_list_parameters_are_422(api, llm):
    assert api.get("/v1/providers/", params={"limit": -1}).status_code == 422
    assert api.get("/v1/providers/", params={"limit": 0}).status_code == 422
    nul_name = api.get("/v1/providers/?name=%00")
    assert nul_name.status_code == 422 and "name" in nul_name.json()["detail"]
    nul_provider = api.get("/v1/models/?provider_name=%00")
    assert nul_provider.status_code == 422 and "provider_name" in nul_provider.json()["detail"]
    name = unique("limit one")
    create(api, name, llm.base_url)
    assert len(api.get("/v1/providers/", params={"limit": 1}).json()) == 1


def test_bad_patch_input_is_422_and_changes_nothing(api, shared_db, llm):
    provider = create(api, unique("patch input"), llm.base_url).json()
    before = row(shared_db, provider["id"])
    raw = b'{"base_url": "http://127.0.0.1/\\u0000x"}'
    response = api.patch(f"/v1/providers/{provider['id']}", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert row(shared_db, provider["id"]) == before


def check(api: httpx.Client, **body) -> httpx.Response:
    return api.post("/v1/providers/check", json={"provider_type": "openai", **body})


def test_check_answers_200_for_an_accepted_key_and_401_with_the_upstream_words(api, llm):
    assert check(api, api_key="sk-good", base_url=llm.base_url).status_code == 200
    refused = check(api, api_key="sk-wrong", base_url=llm.base_url)
    assert refused.status_code == 401, refused.text
    assert "Incorrect API key provided" in refused.json()["detail"] and "sk-wrong" not in refused.text


def test_check_of_an_unreachable_upstream_is_502(api):
    response = check(api, api_key="sk-any", base_url=f"http://127.0.0.1:{free_port()}/v1")
    assert response.status_code == 502, response.text
    assert "127.0.0.1" in response.json()["detail"]


def test_check_of_an_upstream_answering_503_is_502(api):
    with MockOpenAI(api_key="sk-good") as failing:
        for _ in range(5):  # the SDK retries; every attempt fails
            failing.queue_error(503, "The engine is currently overloaded", path_suffix="/models")
        response = check(api, api_key="sk-good", base_url=failing.base_url)
    assert response.status_code == 502, response.text
    assert "503" in response.json()["detail"]


def test_check_refuses_a_huge_key_and_uncreatable_types_with_422(api, llm):
    huge = check(api, api_key="k" * 1_000_000, base_url=llm.base_url)
    assert huge.status_code == 422 and "api_key" in huge.json()["detail"]
    assert llm.requests_to("/models") == []
    letta = api.post("/v1/providers/check", json={"provider_type": "letta", "api_key": "k"})
    assert letta.status_code == 422 and "provider_type" in letta.json()["detail"]


# --- 6. listings say what they know -----------------------------------------------------------


def test_models_report_their_provider_type_and_embedding_ids_are_not_chat_models(api, llm):
    from mock_moonshot import MockMoonshot

    with MockMoonshot(api_key="sk-moon") as moon:
        kimi = unique("kimi typed")
        response = api.post("/v1/providers/", json={"name": kimi, "provider_type": "kimi", "api_key": "sk-moon", "base_url": moon.base_url})
        assert response.status_code == 200, response.text
        kimi_models = api.get("/v1/models/", params={"provider_name": kimi}).json()
        assert kimi_models and {m["provider_type"] for m in kimi_models} == {"kimi"}
    name = unique("openai typed")
    llm.chat_models = ("mock-chat-1", "nomic-embed-text", "bge-m3")
    create(api, name, llm.base_url)
    listing = api.get("/v1/models/", params={"provider_name": name}).json()
    chat = [m for m in listing if m.get("model_type") != "embedding"]
    assert {m["handle"] for m in chat} == {f"{name}/mock-chat-1"}  # text-embedding-*, nomic-embed, bge: not chat
    assert {m["provider_type"] for m in listing} == {"openai"}
    # Klui's embedding picker reads the same listing: the embedding ids follow the chat models, typed so
    assert f"{name}/text-embedding-3-small" in {m["handle"] for m in listing if m.get("model_type") == "embedding"}
    embeddings = {m["handle"] for m in api.get("/v1/models/embedding").json()}
    assert f"{name}/text-embedding-3-small" in embeddings
