"""Settings gate the patches; env vars configure nothing at start-up; keys stay secret.

The two tests about default settings share one server (a module fixture); the switches test uses
the suite's switches-off server (``switches_off_server``, shared with tests/test_provider_pools.py);
the others start servers of their own (each needs its own environment).
"""

from __future__ import annotations

import stat
from types import SimpleNamespace
from typing import Iterator

import httpx
import pytest
import sqlalchemy as sa

from conftest import KettaProcess, RecordingProxy, clean_env, own_database
from ketta.db.database import sync_url
from mock_openai import MockOpenAI
from test_cli_database import run_in_process

SECRET = "sk-very-secret-0123456789"


def rows(db_uri: str, query: str, **params) -> list[dict]:
    engine = sa.create_engine(sync_url(db_uri), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(query), params)]
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory, pg_uri: str) -> Iterator[SimpleNamespace]:
    """One server on default settings for the two tests about them, with an OpenAI key in its env
    (whose mock must see no call) and HTTP(S) through a proxy that records what would leave the machine."""
    proxy = RecordingProxy()
    home = tmp_path_factory.mktemp("default-home")
    try:
        with MockOpenAI(api_key=SECRET) as llm, own_database(pg_uri, "defaults") as db_uri:
            env = {"LETTA_PG_URI": db_uri, "KETTA_HOME": str(home / "home"), "OPENAI_API_KEY": SECRET,
                   "OPENAI_API_BASE": llm.base_url, "KETTA_LOG_LEVEL": "info", **proxy.env()}
            server = KettaProcess(clean_env(**env), home / "server.log")
            try:
                server.wait_healthy()
                yield SimpleNamespace(server=server, llm=llm, proxy=proxy, env=env, db_uri=db_uri, home=home / "home")
            finally:
                server.stop()
    finally:
        proxy.close()


def test_env_keys_sync_nothing_keys_are_encrypted_and_never_printed(default_server: SimpleNamespace) -> None:
    server, llm, home, database_uri, env = (default_server.server, default_server.llm, default_server.home,
                                            default_server.db_uri, default_server.env)
    api = server.client()

    # No base providers: nothing synced from OPENAI_API_KEY, no call to its API (the module's other
    # test may have made the provider 'offline' by then).
    assert rows(database_uri, "SELECT name FROM providers WHERE name <> 'offline'") == []
    assert [p["name"] for p in api.get("/v1/providers/").json() if p["name"] != "offline"] == []
    assert llm.requests == []

    # Encryption at rest by default: a key made once under KETTA_HOME, mode 0600.
    key_file = home / "encryption_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    created = api.post("/v1/providers/", json={"name": "mine", "provider_type": "openai", "api_key": SECRET, "base_url": llm.base_url})
    assert created.status_code == 200 and SECRET not in created.text
    [row] = rows(database_uri, "SELECT api_key_enc, api_key FROM providers WHERE name = 'mine'")
    assert row["api_key_enc"] and SECRET not in row["api_key_enc"] and not row["api_key"]
    agent = api.post("/v1/agents/", json={"model": "mine/mock-chat-1", "embedding": "mine/text-embedding-3-small"}).json()
    assert api.post(f"/v1/agents/{agent['id']}/messages", json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    assert llm.chat_requests()[-1].api_key == SECRET
    for path in ("/v1/providers/", f"/v1/providers/{created.json()['id']}"):
        assert SECRET not in api.get(path).text
    assert SECRET not in server.log_text()

    # `ketta providers import-env` creates the env providers once, idempotently (beside the server):
    # both runs in one fresh interpreter (typer's CliRunner), so Letta is imported once, not twice.
    cli = run_in_process([["providers", "import-env"], ["providers", "import-env"]], **env)
    first, second = cli["runs"]
    assert first["code"] == 0 and first["error"] is None, first
    assert "openai: created" in first["output"]
    assert second["code"] == 0 and "openai: exists, left as is" in second["output"], second
    imported = rows(database_uri, "SELECT organization_id, provider_category FROM providers WHERE name = 'openai'")
    assert imported == [{"organization_id": "org-00000000-0000-4000-8000-000000000000", "provider_category": "byok"}]
    # never printed: not by the commands (stdout and stderr), nor by anything writing to the process's own
    assert SECRET not in first["output"] + second["output"] + cli["process_output"]
    assert SECRET not in server.log_text()


def test_settings_off_behave_as_stock_letta(start_ketta, database_uri):
    with MockOpenAI(api_key="sk-stock") as llm:
        env = {
            "LETTA_PG_URI": database_uri,
            "KETTA_UNIFIED_PROVIDERS": "false",
            "KETTA_HARD_DELETE": "false",
            "KETTA_NO_OPENAI_PROXY": "false",
            "KETTA_ENV_KEY_FALLBACK": "false",
            "OPENAI_API_KEY": "sk-stock",
            "OPENAI_API_BASE": llm.base_url,
        }
        server = start_ketta(env=env)
        api = server.client()
        # Stock: env providers are synced as global base rows, hidden from GET /v1/providers/.
        base = rows(database_uri, "SELECT organization_id, provider_category FROM providers WHERE name = 'openai'")
        assert base == [{"organization_id": None, "provider_category": "base"}]
        assert "openai" not in [p["name"] for p in api.get("/v1/providers/").json()]
        # Stock: a custom base_url gives openai-proxy handles.
        created = api.post("/v1/providers/", json={"name": "CC Test", "provider_type": "openai", "api_key": "sk-stock", "base_url": llm.base_url})
        assert created.status_code == 200
        handles = [m["handle"] for m in api.get("/v1/models/", params={"provider_name": "CC Test"}).json()]
        assert "openai-proxy/mock-chat-1" in handles
        # Stock: delete is soft.
        assert api.delete(f"/v1/providers/{created.json()['id']}").status_code == 200
        assert rows(database_uri, "SELECT is_deleted FROM providers WHERE name = 'CC Test'") == [{"is_deleted": True}]


def test_default_start_downloads_nothing(default_server: SimpleNamespace) -> None:
    """KETTA_OFFLINE defaults on: stock Letta's NLTK download at start is never attempted."""
    server = default_server.server
    api = server.client()
    with MockOpenAI() as llm:  # a message too: onnxruntime's telemetry went out seconds after start
        assert api.post("/v1/providers/", json={"name": "offline", "provider_type": "openai", "api_key": "sk-x",
                                                "base_url": llm.base_url}).status_code == 200
        agent = api.post("/v1/agents/", json={"name": "offline", "model": "offline/mock-chat-1",
                                               "embedding": "offline/text-embedding-3-small", "include_base_tools": False})
        assert api.post(f"/v1/agents/{agent.json()['id']}/messages",
                        json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    assert default_server.proxy.requests == [], "nothing may leave the machine"
    assert "skipped NLTK download of 'punkt_tab'" in server.log_text()


def test_switches_turned_off_give_stock_behaviour_one_by_one(switches_off_server: KettaProcess) -> None:
    """KETTA_OFFLINE=false, KETTA_KIMI_PROVIDER=false and KETTA_ENV_KEY_FALLBACK=false each do what they say
    (on the switches-off server, KETTA_PROVIDER_POOLS=false too: tests/test_provider_pools.py checks that one)."""
    server = switches_off_server
    with MockOpenAI() as llm:
        api = server.client()
        # offline off: Letta's start-up download was attempted (recent NLTK refuses to fetch through a
        # proxy, so the attempt shows in the log, not at the recording proxy)
        log = server.log_text()
        assert "Checking NLTK data availability" in log and "skipped NLTK download" not in log
        # kimi off: the provider type does not exist
        kimi = api.post("/v1/providers/", json={"name": "k", "provider_type": "kimi", "api_key": "sk-x", "base_url": llm.base_url})
        assert kimi.status_code == 422, kimi.text
        # env fallback off: a provider with no stored key never gets the env var's key
        created = api.post("/v1/providers/", json={"name": "no stored key", "provider_type": "openai", "api_key": "",
                                                   "base_url": llm.base_url})
        assert created.status_code == 200, created.text
        agent = api.post("/v1/agents/", json={"name": "switches", "model": "no stored key/mock-chat-1",
                                               "embedding": "no stored key/text-embedding-3-small", "include_base_tools": False})
        assert agent.status_code == 200, agent.text
        llm.clear()
        api.post(f"/v1/agents/{agent.json()['id']}/messages", json={"messages": [{"role": "user", "content": "hi"}]})
        assert llm.requests, "the message reached the LLM endpoint"
        assert "sk-env-fallback-is-off" not in {r.api_key for r in llm.requests}
