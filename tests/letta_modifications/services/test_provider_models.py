"""A provider's provider_models rows: a model listed twice is stored once, and a handle another
provider of the organization holds is settled by the name in the handle, never a raw
IntegrityError (Letta's test_model_name_uniqueness_within_provider and
test_byok_provider_last_synced_triggers_sync_when_null, issue 11).

One shared ketta server; each test has its own provider names and mock LLM. The syncs Letta's own
code makes (no REST route sends a listing of its choosing) run in a subprocess on the same
database, with the patches applied as the server applies them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import sqlalchemy as sa

from mock_openai import MockOpenAI

DEFAULT_ORG = "org-00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def api(shared_server) -> Iterator[httpx.Client]:
    with shared_server.client() as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:6]}"


def create(api: httpx.Client, name: str, llm: MockOpenAI) -> dict:
    response = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "sk-good",
                                                "base_url": llm.base_url})
    assert response.status_code in (200, 201), response.text
    return response.json()


def rows(db: sa.Engine, provider_id: str) -> list[tuple[str, str, str]]:
    """(handle, model_type, name) of the provider's rows, sorted."""
    with db.connect() as conn:
        found = conn.execute(sa.text("SELECT handle, model_type, name FROM provider_models WHERE provider_id = :p"),
                             {"p": provider_id})
        return sorted(tuple(r) for r in found)


def holder(db: sa.Engine, handle: str) -> list[str]:
    with db.connect() as conn:
        return list(conn.execute(sa.text("SELECT provider_id FROM provider_models WHERE handle = :h AND organization_id = :o"),
                                 {"h": handle, "o": DEFAULT_ORG}).scalars())


def test_a_listing_with_a_repeated_model_id_creates_the_provider_with_one_row(api, shared_db):
    with MockOpenAI(api_key="sk-good", chat_models=("mock-chat-1", "mock-chat-1", "mock-chat-2")) as llm:
        listing = httpx.get(f"{llm.base_url}/models", headers={"Authorization": "Bearer sk-good"}).json()["data"]
        assert [m["id"] for m in listing].count("mock-chat-1") == 2  # the mock really repeats it
        name = unique("repeated ids")
        provider = create(api, name, llm)
        llm_rows = [r for r in rows(shared_db, provider["id"]) if r[1] == "llm"]
        assert llm_rows == [(f"{name}/mock-chat-1", "llm", "mock-chat-1"), (f"{name}/mock-chat-2", "llm", "mock-chat-2")]
        refreshed = api.patch(f"/v1/providers/{provider['id']}/refresh")
        assert refreshed.status_code == 200, refreshed.text
        assert [r for r in rows(shared_db, provider["id"]) if r[1] == "llm"] == llm_rows
        handles = [m["handle"] for m in api.get("/v1/models/", params={"provider_name": name}).json() if m.get("model_type") != "embedding"]
        assert sorted(handles) == [f"{name}/mock-chat-1", f"{name}/mock-chat-2"]


def test_a_handle_left_on_another_provider_moves_to_the_provider_it_names(api, shared_db):
    """A row of provider A holding "B/mock-chat-1" (left from elsewhere: a database stock Letta wrote,
    a listing that named B's model) does not stop B from being created: B gets its handle."""
    with MockOpenAI(api_key="sk-good") as llm:
        a_name, b_name = unique("holder"), unique("owner")
        a = create(api, a_name, llm)
        with shared_db.begin() as conn:
            moved = conn.execute(sa.text("UPDATE provider_models SET handle = :new WHERE provider_id = :p AND handle = :old"),
                                 {"new": f"{b_name}/mock-chat-1", "old": f"{a_name}/mock-chat-1", "p": a["id"]})
            assert moved.rowcount == 1
        b = create(api, b_name, llm)
        assert holder(shared_db, f"{b_name}/mock-chat-1") == [b["id"]]
        assert (f"{b_name}/mock-chat-1", "llm", "mock-chat-1") in rows(shared_db, b["id"])
        # A keeps its other rows; its own listing brings its chat model back.
        assert (f"{a_name}/text-embedding-3-small", "embedding", "text-embedding-3-small") in rows(shared_db, a["id"])
        assert api.patch(f"/v1/providers/{a['id']}/refresh").status_code == 200
        assert holder(shared_db, f"{a_name}/mock-chat-1") == [a["id"]]
        assert holder(shared_db, f"{b_name}/mock-chat-1") == [b["id"]]


_SYNCS = """
import asyncio, json, sys
from ketta import letta_modifications
from ketta.core.settings import KettaSettings
letta_modifications.apply_all(KettaSettings())
from letta.schemas.llm_config import LLMConfig
from letta.services.provider_manager import ProviderManager
from letta.services.user_manager import UserManager

def config(handle, name, provider):
    return LLMConfig(model=name, model_endpoint_type="openai", model_endpoint="http://127.0.0.1:9/v1",
                     context_window=8192, handle=handle, provider_name=provider.name)

async def main(owner_id, other_id, rounds):
    actor = await UserManager().get_default_actor_async()
    manager = ProviderManager()
    owner, other = [await manager.get_provider_async(i, actor) for i in (owner_id, other_id)]
    org = actor.organization_id
    seen = {}

    async def note(step):
        seen[step] = {p.name: sorted([m.handle, m.name] for m in await manager.list_models_async(actor=actor, provider_id=p.id))
                      for p in (owner, other)}
    # The same model name under two handles in one listing (Letta's test_model_name_uniqueness_within_provider).
    await manager.sync_provider_models_async(
        owner, [config(f"{owner.name}/twice", "twice", owner), config(f"{owner.name}/twice-again", "twice", owner)], [],
        organization_id=org)
    await note("repeated name")
    # Another provider lists a handle the owner holds: the owner keeps it.
    await manager.sync_provider_models_async(other, [config(f"{owner.name}/twice", "twice", other)], [], organization_id=org)
    await note("taken handle")
    # Both list one handle at once (first listings run concurrently in GET /v1/models/).
    for i in range(rounds):
        handle = f"{owner.name}/contested-{i}"
        await asyncio.gather(
            manager.sync_provider_models_async(other, [config(handle, f"contested-{i}", other)], [], organization_id=org),
            manager.sync_provider_models_async(owner, [config(handle, f"contested-{i}", owner)], [], organization_id=org),
        )
    seen["other_last_synced"] = (await manager.get_provider_async(other_id, actor)).last_synced is not None
    print(json.dumps(seen))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_letta_syncs_with_a_repeated_name_and_a_taken_handle_store_one_row_per_handle(api, shared_server, shared_db):
    from conftest import clean_env

    with MockOpenAI(api_key="sk-good") as llm:
        owner, other = create(api, unique("owner"), llm), create(api, unique("other"), llm)
    key = (Path(shared_server.log_path).parent / "encryption_key").read_text().strip()
    env = clean_env(LETTA_PG_URI=shared_server.db_uri, LETTA_ENCRYPTION_KEY=key)
    rounds = 3
    done = subprocess.run([sys.executable, "-c", _SYNCS, owner["id"], other["id"], str(rounds)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    o, x = owner["name"], other["name"]
    assert seen["repeated name"][o] == [[f"{o}/twice", "twice"]]  # the first of the two handles
    assert seen["taken handle"] == {o: [[f"{o}/twice", "twice"]], x: []}
    assert seen["other_last_synced"] is True  # its listing succeeded, though nothing of it was stored
    last = f"{owner['name']}/contested-{rounds - 1}"
    assert rows(shared_db, owner["id"]) == [(last, "llm", f"contested-{rounds - 1}")]
    assert rows(shared_db, other["id"]) == []  # its listing named only the owner's handle
    assert holder(shared_db, last) == [owner["id"]]
