"""Ketta's migrations on a real PostgreSQL: schema parity with Letta 0.16.8, adoption of a
Letta-made database, the advisory lock, downgrade, and the provider data migration."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import sqlalchemy as sa

from ketta.db import migrations
from ketta.db.database import sync_url

REFERENCE = Path(__file__).parent / "data" / "letta-0.16.8-schema.json"
HEAD = "0010_usage_kind"
KETTA_TABLES = (migrations.LETTA_VERSION_TABLE, migrations.VERSION_TABLE, "ketta_provider_health", migrations.ENCRYPTION_CHECK_TABLE,
                "ketta_user_tokens", "ketta_pool_members", "ketta_usage", "ketta_usage_prices", "ketta_usage_budgets",
                "ketta_usage_budget_spend")
DEFAULT_ORG = "org-00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def reference() -> dict[str, list]:
    return json.loads(REFERENCE.read_text())


@pytest.fixture
def engine_for() -> Iterator[Callable[[str], sa.Engine]]:
    """Engines on test databases, disposed after the test (so the databases can be dropped)."""
    engines: list[sa.Engine] = []

    def make(uri: str) -> sa.Engine:
        engines.append(sa.create_engine(sync_url(uri), poolclass=sa.NullPool))
        return engines[-1]

    yield make
    for engine in engines:
        engine.dispose()


def make_letta_database(engine: sa.Engine, letta_revision: str | None = migrations.LETTA_HEAD) -> None:
    """What Letta 0.16.8's own migrations leave: its schema plus ``alembic_version``, no Ketta table."""
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            cursor.execute(migrations.baseline_sql())
            if letta_revision is not None:
                cursor.execute("CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)")
                cursor.execute("INSERT INTO alembic_version VALUES (%s)", (letta_revision,))
        raw.commit()
    finally:
        raw.close()


def table_exists(engine: sa.Engine, table: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f"public.{table}"}).scalar_one()


def row_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        tables = conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        return {t: conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in tables if t not in KETTA_TABLES}


def assert_no_schema_difference(actual: dict, expected: dict) -> None:
    differences = migrations.schema_diff(actual, expected)
    assert not differences, f"{len(differences)} schema differences:\n" + "\n".join(differences)


# --- baseline ------------------------------------------------------------------------------


def test_baseline_on_empty_database_matches_letta_reference(database_uri: str, reference: dict, engine_for) -> None:
    migrations.upgrade(database_uri)

    assert migrations.current(database_uri) == HEAD
    snapshot = migrations.snapshot_database(database_uri, exclude_tables=KETTA_TABLES)
    assert_no_schema_difference(snapshot, reference)
    # Ketta adds its version table and provider health; Letta's own version table is not created.
    engine = engine_for(database_uri)
    assert table_exists(engine, migrations.VERSION_TABLE) and table_exists(engine, "ketta_provider_health")
    assert not table_exists(engine, migrations.LETTA_VERSION_TABLE)
    # The sequence the ORM's create_all forgets really numbers messages.
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO organizations (id, name, privileged_tools) VALUES ('org-1', 'o', false)"))
        conn.execute(sa.text("INSERT INTO agents (id, organization_id, message_buffer_autoclear) VALUES ('agent-1', 'org-1', false)"))
        conn.execute(sa.text("INSERT INTO messages (id, role, organization_id, agent_id, tool_calls) "
                             "VALUES ('message-1', 'user', 'org-1', 'agent-1', '[]'), ('message-2', 'user', 'org-1', 'agent-1', '[]')"))
        assert conn.execute(sa.text("SELECT sequence_id FROM messages ORDER BY sequence_id")).scalars().all() == [1, 2]


def test_schema_diff_is_readable_and_counts_duplicates(database_uri: str, reference: dict, engine_for) -> None:
    """The parity check can fail: a changed default and a duplicate index are both reported."""
    migrations.upgrade(database_uri, migrations.BASELINE_REVISION)
    with engine_for(database_uri).begin() as conn:
        conn.execute(sa.text("ALTER TABLE messages ALTER COLUMN sequence_id DROP DEFAULT"))
        conn.execute(sa.text("CREATE INDEX extra_copy ON providers (name)"))
        conn.execute(sa.text("CREATE INDEX extra_copy_2 ON providers (name)"))
    snapshot = migrations.snapshot_database(database_uri, exclude_tables=KETTA_TABLES)

    differences = migrations.schema_diff(snapshot, reference)

    assert differences == [
        "columns missing: ['messages', 'sequence_id', 'bigint', False, \"nextval('message_seq_id'::regclass)\"]",
        "columns extra:   ['messages', 'sequence_id', 'bigint', False, None]",
        "indexes extra:   ['providers', 'CREATE INDEX ON public.providers USING btree (name)']",
        "indexes extra:   ['providers', 'CREATE INDEX ON public.providers USING btree (name)']",
    ]


def test_committed_snapshot_is_what_the_generator_checks() -> None:
    """The baseline SQL names the tables the reference has (regenerate it with the tool if not)."""
    tables_in_sql = set(re.findall(r"^CREATE TABLE public\.(\w+) \(", migrations.baseline_sql(), re.MULTILINE))
    tables_in_reference = {row[0] for row in json.loads(REFERENCE.read_text())["columns"]}
    assert tables_in_sql == tables_in_reference
    assert len(tables_in_sql) == 48


# --- adoption ------------------------------------------------------------------------------


def test_adopts_letta_made_database_without_schema_change(database_uri: str, engine_for) -> None:
    engine = engine_for(database_uri)
    make_letta_database(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO organizations (id, name, privileged_tools) VALUES ('org-a', 'a', false)"))
        conn.execute(sa.text("INSERT INTO agents (id, name, organization_id, message_buffer_autoclear) VALUES ('agent-1', 'kept', 'org-a', false)"))
    before = migrations.snapshot_database(database_uri, exclude_tables=())

    migrations.upgrade(database_uri)

    after = migrations.snapshot_database(database_uri, exclude_tables=(migrations.VERSION_TABLE, "ketta_provider_health",
                                                                       migrations.ENCRYPTION_CHECK_TABLE, "ketta_user_tokens",
                                                                       "ketta_pool_members", "ketta_usage", "ketta_usage_prices",
                                                                       "ketta_usage_budgets", "ketta_usage_budget_spend"))
    assert_no_schema_difference(after, before)
    assert migrations.current(database_uri) == HEAD
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [migrations.LETTA_HEAD]
        assert conn.execute(sa.text("SELECT name FROM agents")).scalars().all() == ["kept"]
    migrations.upgrade(database_uri)  # idempotent
    assert migrations.current(database_uri) == HEAD


def test_refuses_database_at_another_letta_revision(database_uri: str, engine_for) -> None:
    engine = engine_for(database_uri)
    make_letta_database(engine, letta_revision="a1b2c3d4e5f6")

    with pytest.raises(migrations.MigrationError) as refused:
        migrations.upgrade(database_uri)

    message = str(refused.value)
    assert "a1b2c3d4e5f6" in message and "upgrade it with letta 0.16.8 first" in message.lower()
    assert not table_exists(engine, migrations.VERSION_TABLE)


def test_refuses_letta_tables_without_any_version_table(database_uri: str, engine_for) -> None:
    engine = engine_for(database_uri)
    make_letta_database(engine, letta_revision=None)

    with pytest.raises(migrations.MigrationError, match="neither Letta's alembic_version nor Ketta's"):
        migrations.upgrade(database_uri)
    assert not table_exists(engine, migrations.VERSION_TABLE)


def test_unknown_target_revision_is_a_migration_error(database_uri: str) -> None:
    with pytest.raises(migrations.MigrationError, match="nope"):
        migrations.upgrade(database_uri, "nope")


# --- advisory lock ---------------------------------------------------------------------------


UPGRADE_ON_GO = """
import sys
from ketta.db import migrations
print("ready", flush=True)
sys.stdin.readline()
migrations.upgrade(sys.argv[1])
"""


def test_two_servers_upgrading_together_apply_the_schema_once(database_uri: str, reference: dict, engine_for) -> None:
    """Two processes (like two servers starting) released at the same instant on one fresh database."""
    servers = [
        subprocess.Popen([sys.executable, "-c", UPGRADE_ON_GO, database_uri], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for server in servers:
            assert server.stdout.readline().strip() == "ready", server.stderr.read()
        for server in servers:
            server.stdin.write("go\n")
            server.stdin.flush()
        outcomes = [server.communicate(timeout=60) for server in servers]
    finally:
        for server in servers:
            if server.poll() is None:
                server.kill()

    assert [server.returncode for server in servers] == [0, 0], [stderr[-2000:] for _, stderr in outcomes]
    with engine_for(database_uri).connect() as conn:
        assert conn.execute(sa.text(f"SELECT version_num FROM {migrations.VERSION_TABLE}")).scalars().all() == [HEAD]
    assert_no_schema_difference(migrations.snapshot_database(database_uri, exclude_tables=KETTA_TABLES), reference)


def advisory_lock_waiters(engine: sa.Engine) -> int:
    """Sessions waiting for Ketta's migration lock (pg_locks splits the bigint key in two halves)."""
    key = migrations.MIGRATION_LOCK_KEY
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND classid = :hi AND objid = :lo"), {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).scalar()


def test_upgrade_waits_for_the_advisory_lock(database_uri: str, engine_for) -> None:
    """Another holder of the migration lock (a starting server) makes upgrade wait, not race."""
    engine = engine_for(database_uri)
    holder = engine.connect()
    holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": migrations.MIGRATION_LOCK_KEY})
    holder.commit()
    migration = threading.Thread(target=migrations.upgrade, args=(database_uri,))
    try:
        migration.start()
        # The upgrade's connection shows up in pg_locks as waiting for the advisory lock.
        deadline = time.monotonic() + 120
        while not advisory_lock_waiters(engine):
            assert migration.is_alive(), "upgrade finished while another session held the lock"
            assert time.monotonic() < deadline, "upgrade never waited for the migration lock"
            time.sleep(0.05)
        assert migration.is_alive()
        assert not table_exists(engine, "agents"), "nothing is migrated while the lock is held elsewhere"
    finally:
        holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": migrations.MIGRATION_LOCK_KEY})
        holder.close()
    migration.join(60)
    assert migrations.current(database_uri) == HEAD


# --- downgrade -------------------------------------------------------------------------------


def test_downgrade_to_base_drops_what_the_baseline_made(database_uri: str, engine_for) -> None:
    engine = engine_for(database_uri)
    make_letta_database(engine)  # adopted: Letta's alembic_version goes too
    migrations.upgrade(database_uri)

    migrations.downgrade(database_uri, "-1")
    assert migrations.current(database_uri) == "0009_usage_ledger"
    with engine.connect() as conn:
        assert "kind" not in {c["name"] for c in sa.inspect(conn).get_columns("ketta_usage")}
    migrations.downgrade(database_uri, "-1")
    assert migrations.current(database_uri) == "0008_provider_pools"
    assert not table_exists(engine, "ketta_usage") and not table_exists(engine, "ketta_usage_budgets")
    migrations.downgrade(database_uri, "-1")
    assert migrations.current(database_uri) == "0007_user_tokens"
    assert not table_exists(engine, "ketta_pool_members")
    migrations.downgrade(database_uri, "-1")
    assert migrations.current(database_uri) == "0006_hard_delete_flagged"
    assert not table_exists(engine, "ketta_user_tokens")
    migrations.downgrade(database_uri, "-1")
    assert migrations.current(database_uri) == "0005_encryption_check"  # 0006 (hard delete of flagged rows) has nothing to undo
    migrations.downgrade(database_uri, "-1")
    assert migrations.current(database_uri) == "0004_provider_health"
    assert not table_exists(engine, migrations.ENCRYPTION_CHECK_TABLE)
    migrations.downgrade(database_uri, "-1")
    assert migrations.current(database_uri) == "0003_provider_named_handles"
    assert not table_exists(engine, "ketta_provider_health")
    migrations.downgrade(database_uri, migrations.BASELINE_REVISION)
    assert migrations.current(database_uri) == migrations.BASELINE_REVISION
    migrations.downgrade(database_uri, "base")

    assert migrations.current(database_uri) is None
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        types = conn.execute(sa.text("SELECT typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                                     "WHERE n.nspname = 'public' AND t.typtype = 'e'")).scalars().all()
    assert left == [migrations.VERSION_TABLE] and types == []
    assert migrations.snapshot_database(database_uri, exclude_tables=(migrations.VERSION_TABLE, "ketta_provider_health"))["sequences"] == []
    migrations.upgrade(database_uri)  # and it comes back from scratch
    assert migrations.current(database_uri) == HEAD


def test_downgrade_refuses_a_database_ketta_never_migrated(database_uri: str) -> None:
    with pytest.raises(migrations.MigrationError, match="nothing to revert"):
        migrations.downgrade(database_uri, "base")


def test_db_commands_of_the_cli(make_database: Callable[[], str], engine_for) -> None:
    from conftest import clean_env

    database_uri, letta_at_other_revision = make_database(), make_database()
    make_letta_database(engine_for(letta_at_other_revision), letta_revision="a1b2c3d4e5f6")

    def ketta_db(*args: str, uri: str = database_uri) -> subprocess.CompletedProcess:
        env = clean_env(LETTA_PG_URI=uri)
        return subprocess.run([sys.executable, "-m", "ketta", "db", *args], env=env, capture_output=True, text=True, timeout=120)

    refused = ketta_db("upgrade", uri=letta_at_other_revision)
    assert refused.returncode == 1 and "a1b2c3d4e5f6" in refused.stderr, refused.stderr

    assert ketta_db("current").stdout.strip() == "none"
    upgraded = ketta_db("upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip().endswith(HEAD)
    downgraded = ketta_db("downgrade", "base")
    assert downgraded.returncode == 0 and downgraded.stdout.strip().endswith("none"), downgraded.stderr


# --- data migration (issue 3, "Existing data") -----------------------------------------------


def test_data_migration_is_a_no_op_on_an_empty_database(database_uri: str, engine_for) -> None:
    migrations.upgrade(database_uri)
    counts = row_counts(engine_for(database_uri))
    assert len(counts) == 48 and set(counts.values()) == {0}


LETTA_MADE_ROWS = """
INSERT INTO organizations (id, name, privileged_tools) VALUES ('org-a', 'a', false);
INSERT INTO agents (id, name, organization_id, message_buffer_autoclear) VALUES ('agent-1', 'x', 'org-a', false);
INSERT INTO providers (id, name, provider_type, provider_category, organization_id, is_deleted) VALUES
  ('provider-base-env', 'openai', 'openai', 'base', NULL, false),
  ('provider-base-org', 'letta', 'letta', 'base', 'org-a', false),
  ('provider-nocat', 'anthropic', 'anthropic', NULL, NULL, false),
  ('provider-mine', 'mine', 'openai', 'byok', 'org-a', false),
  ('provider-gone', 'gone', 'openai', 'byok', 'org-a', true),
  ('provider-legacy-12345678', 'legacy', 'openai', 'byok', NULL, false);
INSERT INTO provider_models (id, handle, display_name, name, provider_id, organization_id, model_type, model_endpoint_type, is_deleted) VALUES
  ('m-env-1', 'openai/gpt-4o', 'gpt-4o', 'gpt-4o', 'provider-base-env', NULL, 'llm', 'openai', false),
  ('m-env-2', 'openai/text-embedding-3-small', 'e', 'text-embedding-3-small', 'provider-base-env', NULL, 'embedding', 'openai', false),
  ('m-nocat', 'anthropic/claude', 'c', 'claude', 'provider-nocat', NULL, 'llm', 'anthropic', false),
  ('m-base-org', 'letta/letta-free', 'l', 'letta-free', 'provider-base-org', 'org-a', 'llm', 'openai', false),
  ('m-mine-1', 'mine/m1', 'm1', 'm1', 'provider-mine', 'org-a', 'llm', 'openai', false),
  ('m-mine-deleted', 'mine/old', 'old', 'old', 'provider-mine', 'org-a', 'llm', 'openai', true),
  ('m-mine-orgless', 'mine/m2', 'm2', 'm2', 'provider-mine', NULL, 'llm', 'openai', false),
  ('m-mine-dup', 'mine/m1', 'm1 again', 'm1-alias', 'provider-mine', NULL, 'llm', 'openai', false),
  ('m-gone', 'gone/g', 'g', 'g', 'provider-gone', 'org-a', 'llm', 'openai', false),
  ('m-legacy', 'legacy/l1', 'l1', 'l1', 'provider-legacy-12345678', NULL, 'llm', 'openai', false);
INSERT INTO steps (id, provider_id, provider_name, organization_id) VALUES
  ('step-env', 'provider-base-env', 'openai', 'org-a'), ('step-mine', 'provider-mine', 'mine', 'org-a');
INSERT INTO step_metrics (id, agent_id, provider_id, organization_id) VALUES ('step-env', 'agent-1', 'provider-base-env', 'org-a');
"""


def test_data_migration_cleans_a_letta_made_database(database_uri: str, engine_for) -> None:
    engine = engine_for(database_uri)
    make_letta_database(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(LETTA_MADE_ROWS)

    migrations.upgrade(database_uri)

    with engine.connect() as conn:
        providers = conn.execute(sa.text("SELECT id, name, organization_id FROM providers ORDER BY id")).all()
        models = conn.execute(sa.text("SELECT id, handle, organization_id FROM provider_models ORDER BY id")).all()
        steps = conn.execute(sa.text("SELECT id, provider_id, provider_name FROM steps ORDER BY id")).all()
        metrics = conn.execute(sa.text("SELECT id, provider_id FROM step_metrics")).all()
        default_org = conn.execute(sa.text("SELECT name, privileged_tools FROM organizations WHERE id = :i"), {"i": DEFAULT_ORG}).all()
    assert providers == [("provider-legacy-12345678", "legacy", DEFAULT_ORG), ("provider-mine", "mine", "org-a")]
    assert models == [("m-legacy", "legacy/l1", DEFAULT_ORG), ("m-mine-1", "mine/m1", "org-a"), ("m-mine-orgless", "mine/m2", "org-a")]
    assert steps == [("step-env", None, "openai"), ("step-mine", "provider-mine", "mine")]
    assert metrics == [("step-env", None)]
    assert default_org == [("default_org", False)]


def test_data_migration_renames_an_orgless_provider_whose_name_is_taken(database_uri: str, engine_for) -> None:
    engine = engine_for(database_uri)
    make_letta_database(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"""
        INSERT INTO organizations (id, name, privileged_tools) VALUES ('{DEFAULT_ORG}', 'default_org', true);
        INSERT INTO providers (id, name, provider_category, organization_id) VALUES
          ('provider-taken', 'clash', 'byok', '{DEFAULT_ORG}'), ('provider-abcdefgh', 'clash', 'byok', NULL);
        INSERT INTO provider_models (id, handle, display_name, name, provider_id, organization_id, model_type, model_endpoint_type) VALUES
          ('m-taken', 'clash/x', 'x', 'x', 'provider-taken', '{DEFAULT_ORG}', 'llm', 'openai'),
          ('m-moved', 'clash/x', 'x', 'x', 'provider-abcdefgh', NULL, 'llm', 'openai');
        """)

    migrations.upgrade(database_uri)

    with engine.connect() as conn:
        providers = conn.execute(sa.text("SELECT id, name, organization_id FROM providers ORDER BY id")).all()
        models = conn.execute(sa.text("SELECT id, handle, organization_id FROM provider_models ORDER BY id")).all()
        orgs = conn.execute(sa.text("SELECT id, privileged_tools FROM organizations")).all()
    assert providers == [("provider-abcdefgh", "clash-abcdefgh", DEFAULT_ORG), ("provider-taken", "clash", DEFAULT_ORG)]
    assert models == [("m-moved", "clash-abcdefgh/x", DEFAULT_ORG), ("m-taken", "clash/x", DEFAULT_ORG)]
    assert orgs == [(DEFAULT_ORG, True)]  # the existing default organization is left as it was


def test_frozen_default_org_matches_letta() -> None:
    """The data migration hard-codes Letta's default organization; read Letta's source (no import)."""
    letta_dir = Path(importlib.util.find_spec("letta").submodule_search_locations[0])
    constants = (letta_dir / "constants.py").read_text()
    assert f'DEFAULT_ORG_ID = "{DEFAULT_ORG}"' in constants
    assert 'DEFAULT_ORG_NAME = "default_org"' in constants


PROXY_ERA_ROWS = """
INSERT INTO organizations (id, name, privileged_tools) VALUES ('org-a', 'a', false);
INSERT INTO providers (id, name, provider_type, provider_category, organization_id, is_deleted) VALUES
  ('provider-cc', 'CC Test', 'openai', 'byok', 'org-a', false);
INSERT INTO provider_models (id, handle, display_name, name, provider_id, organization_id, model_type, model_endpoint_type, is_deleted) VALUES
  ('m-proxy', 'openai-proxy/m1', 'm1', 'm1', 'provider-cc', 'org-a', 'llm', 'openai', false),
  ('m-emb', 'CC Test/e1', 'e1', 'e1', 'provider-cc', 'org-a', 'embedding', 'openai', false);
INSERT INTO agents (id, name, organization_id, message_buffer_autoclear, llm_config) VALUES
  ('agent-proxy', 'p', 'org-a', false,
   '{"model": "m1", "handle": "openai-proxy/m1", "provider_name": "CC Test", "provider_category": "byok"}'),
  ('agent-base', 'b', 'org-a', false,
   '{"model": "gpt-4o", "handle": "openai/gpt-4o", "provider_name": "openai", "provider_category": "base"}');
"""


def test_data_migration_renames_openai_proxy_handles_and_base_configs(database_uri: str, engine_for) -> None:
    engine = engine_for(database_uri)
    make_letta_database(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(PROXY_ERA_ROWS)

    migrations.upgrade(database_uri)

    with engine.connect() as conn:
        handles = dict(conn.execute(sa.text("SELECT id, handle FROM provider_models")).all())
        configs = {r[0]: r[1] for r in conn.execute(sa.text("SELECT id, llm_config FROM agents")).all()}
    assert handles == {"m-proxy": "CC Test/m1", "m-emb": "CC Test/e1"}
    assert configs["agent-proxy"]["handle"] == "CC Test/m1" and configs["agent-proxy"]["model"] == "m1"
    assert configs["agent-base"]["provider_category"] == "byok" and configs["agent-base"]["handle"] == "openai/gpt-4o"


def test_head_revision_constant_is_alembics_head() -> None:
    """migrations.HEAD_REVISION lets start-up skip alembic on an up-to-date database: it must be the real head."""
    from alembic.script import ScriptDirectory

    assert ScriptDirectory(str(migrations.SCRIPT_DIRECTORY)).get_heads() == [migrations.HEAD_REVISION]


def test_upgrade_at_head_is_a_no_op(database_uri: str) -> None:
    migrations.upgrade(database_uri)
    before = migrations.snapshot_database(database_uri)
    migrations.upgrade(database_uri)
    assert migrations.current(database_uri) == migrations.HEAD_REVISION == HEAD
    assert migrations.snapshot_database(database_uri) == before


FLAGGED_ROWS = """
INSERT INTO organizations (id, name, privileged_tools) VALUES ('org-a', 'a', false);
INSERT INTO agents (id, name, organization_id, message_buffer_autoclear) VALUES ('agent-a', 'a', 'org-a', false);
INSERT INTO conversations (id, agent_id, organization_id, is_deleted) VALUES
  ('conv-gone', 'agent-a', 'org-a', true), ('conv-kept', 'agent-a', 'org-a', false);
INSERT INTO messages (id, role, tool_calls, organization_id, agent_id, conversation_id, is_deleted) VALUES
  ('msg-gone', 'user', '[]', 'org-a', 'agent-a', 'conv-gone', true),
  ('msg-kept', 'user', '[]', 'org-a', 'agent-a', 'conv-kept', false),
  ('msg-kept-2', 'user', '[]', 'org-a', 'agent-a', 'conv-kept', false),
  ('msg-flagged-elsewhere', 'user', '[]', 'org-a', 'agent-a', NULL, true);
INSERT INTO conversation_messages (id, conversation_id, agent_id, message_id, position, in_context, organization_id, is_deleted) VALUES
  ('cm-gone', 'conv-gone', 'agent-a', 'msg-gone', 0, true, 'org-a', true),
  ('cm-flagged', 'conv-kept', 'agent-a', 'msg-kept-2', 0, true, 'org-a', true),
  ('cm-kept', 'conv-kept', 'agent-a', 'msg-kept', 1, true, 'org-a', false);
INSERT INTO providers (id, name, provider_type, provider_category, organization_id, is_deleted) VALUES
  ('provider-p', 'p', 'openai', 'byok', 'org-a', false);
INSERT INTO provider_models (id, handle, display_name, name, provider_id, organization_id, model_type, model_endpoint_type, is_deleted) VALUES
  ('m-gone', 'p/old', 'old', 'old', 'provider-p', 'org-a', 'llm', 'openai', true),
  ('m-kept', 'p/new', 'new', 'new', 'provider-p', 'org-a', 'llm', 'openai', false);
"""


def test_data_migration_removes_rows_stock_only_flagged_deleted(database_uri: str, engine_for) -> None:
    engine = engine_for(database_uri)
    make_letta_database(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(FLAGGED_ROWS)

    migrations.upgrade(database_uri)

    with engine.connect() as conn:
        def ids(table: str) -> list[str]:
            return [r[0] for r in conn.execute(sa.text(f"SELECT id FROM {table} ORDER BY id"))]

        assert ids("conversations") == ["conv-kept"]
        assert ids("conversation_messages") == ["cm-kept"]
        assert ids("messages") == ["msg-flagged-elsewhere", "msg-kept", "msg-kept-2"]  # only a deleted conversation's flagged messages go
        assert ids("provider_models") == ["m-kept"]
