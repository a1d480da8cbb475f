"""Settings gate the patches; env vars configure nothing at start-up; keys stay secret; commands
run beside a running server.

The three tests about default settings share one server (a module fixture) on its embedded
PostgreSQL, the default; the switches test uses the suite's switches-off server
(``switches_off_server``, shared with tests/test_provider_pools.py); the stock-settings test starts
a server of its own (it needs its own environment).
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from types import SimpleNamespace
from typing import Iterator

import httpx
import pytest
import sqlalchemy as sa

from conftest import KettaProcess, RecordingProxy, clean_env
from ketta.db.database import EmbeddedPostgres, sync_url
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
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """One server on default settings for the tests about them: its embedded PostgreSQL (no
    LETTA_PG_URI), an OpenAI key in its env (whose mock must see no call) and HTTP(S) through a
    proxy that records what would leave the machine; ``cli_llm``: the OpenAI endpoint of the
    commands run beside it (import-env reads the provider's models there)."""
    proxy = RecordingProxy()
    home = tmp_path_factory.mktemp("default-home")
    try:
        with MockOpenAI(api_key=SECRET) as llm, MockOpenAI(api_key=SECRET) as cli_llm:
            env = {"KETTA_HOME": str(home / "home"), "OPENAI_API_KEY": SECRET,
                   "OPENAI_API_BASE": llm.base_url, "KETTA_LOG_LEVEL": "info", **proxy.env()}
            server = KettaProcess(clean_env(**env), home / "server.log")
            try:
                server.wait_healthy()
                db_uri = EmbeddedPostgres(home=home / "home").running_uri()  # as the server's lock file records it
                assert db_uri, "the server runs its embedded PostgreSQL"
                yield SimpleNamespace(server=server, llm=llm, cli_llm=cli_llm, proxy=proxy, env=env, db_uri=db_uri, home=home / "home")
            finally:
                server.stop()
    finally:
        proxy.close()


def test_env_keys_sync_nothing_keys_are_encrypted_and_never_printed(default_server: SimpleNamespace) -> None:
    server, llm, home, database_uri = default_server.server, default_server.llm, default_server.home, default_server.db_uri
    api = server.client()

    # No base providers: nothing synced from OPENAI_API_KEY, no call to its API (the module's other
    # tests may have made the provider 'offline', and 'openai' with `ketta providers import-env`, by then).
    made_by_others = "name <> 'offline' AND NOT (name = 'openai' AND provider_category = 'byok' AND organization_id IS NOT NULL)"
    assert rows(database_uri, f"SELECT name FROM providers WHERE {made_by_others}") == []
    assert [p["name"] for p in api.get("/v1/providers/").json() if p["name"] not in ("offline", "openai")] == []
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


def test_db_current_and_import_env_beside_a_running_embedded_server(default_server: SimpleNamespace) -> None:
    """`ketta db current` and `ketta providers import-env` find the running server's embedded
    PostgreSQL (through its lock file under KETTA_HOME); import-env creates the env providers once,
    idempotently, printing no key. Its two runs share one fresh interpreter (typer's CliRunner), so
    Letta is imported once, not twice."""
    server, home, env = default_server.server, default_server.home, default_server.env
    current = subprocess.run([sys.executable, "-m", "ketta", "db", "current"], env=clean_env(**env), cwd=home.parent,
                             capture_output=True, text=True, timeout=120)  # answers without importing Letta
    assert current.returncode == 0, current.stderr
    assert re.fullmatch(r"\d{4}_\w+", current.stdout.strip()), current.stdout
    # The commands' own endpoint: the server's mock must see no call (the module's first test).
    cli = run_in_process([["providers", "import-env"], ["providers", "import-env"]],
                         **{**env, "OPENAI_API_BASE": default_server.cli_llm.base_url, "CWD": str(home.parent)})
    first, second = cli["runs"]
    assert first["code"] == 0 and first["error"] is None, first
    assert "openai: created" in first["output"]
    # One line per provider, no log noise: at the server's info level (KETTA_LOG_LEVEL, which also shows
    # more of what could print a key), every other line is an INFO record, none a warning or an error.
    said = [line for line in first["output"].strip().splitlines() if not re.match(r"INFO [\w.]+: ", line)]
    assert said == ["openai: created"], "one line per provider, no log noise: " + first["output"]
    assert second["code"] == 0 and "openai: exists, left as is" in second["output"], second
    imported = rows(default_server.db_uri, "SELECT organization_id, provider_category FROM providers WHERE name = 'openai'")
    assert imported == [{"organization_id": "org-00000000-0000-4000-8000-000000000000", "provider_category": "byok"}]
    with server.client() as api:
        assert "openai" in [p["name"] for p in api.get("/v1/providers/").json()], "the running server sees it at once"
    assert (home / "pgdata" / "postmaster.pid").exists(), "the server's PostgreSQL still runs"
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
