"""Pooled database connections (ketta/letta_modifications/server/db.py): sessions are reused, and a
restarted PostgreSQL is survived without restarting Ketta. The outage test stops and restarts a
PostgreSQL of its own (not the session's shared one)."""

from __future__ import annotations

import os
import sys
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest
import sqlalchemy as sa

from conftest import KettaProcess
from ketta.db import migrations
from ketta.db.database import EmbeddedPostgres, free_port, sync_url, with_database
from mock_openai import MockOpenAI


def sessions_opened(uri: str) -> int:
    """How many connections PostgreSQL has accepted for the database so far (pg_stat_database)."""
    engine = sa.create_engine(sync_url(with_database(uri, "postgres")), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            return int(conn.execute(sa.text("SELECT sessions FROM pg_stat_database WHERE datname = 'letta'")).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.slow
def test_sessions_reuse_pooled_connections_and_a_restarted_postgres_is_survived(
    start_ketta: Callable[..., KettaProcess], tmp_path: Path
) -> None:
    pg = EmbeddedPostgres(home=tmp_path / "own-pg")
    uri = pg.start()
    try:
        server = start_ketta(env={"LETTA_PG_URI": uri, "KETTA_DB_POOL_SIZE": "5"})
        with server.client() as client:
            assert client.get("/v1/agents/").status_code == 200
            before = sessions_opened(uri)
            for _ in range(20):
                assert client.get("/v1/agents/").status_code == 200
            opened = sessions_opened(uri) - before
            # Letta's NullPool opens a connection per session (several per request): here the pool's serve all.
            assert opened <= 5, f"{opened} new connections for 20 requests"

            pg.stop()
            down = client.get("/v1/agents/")
            assert down.status_code == 503, down.text
            assert "database" in down.text.lower(), down.text

            pg.start()
            restarted = time.monotonic()
            after = client.get("/v1/agents/")
            assert after.status_code == 200, after.text
            print(f"first request after the restart answered in {time.monotonic() - restarted:.2f} s")
            assert client.get("/v1/agents/").status_code == 200
    finally:
        pg.stop()


def start_pgbouncer(uri: str, workdir: Path) -> tuple[subprocess.Popen, int]:
    """PgBouncer in transaction mode in front of ``uri``'s server; (process, port) once it accepts logins."""
    target = sa.engine.make_url(uri)
    port = free_port()
    workdir.mkdir(mode=0o755)
    workdir.chmod(0o755)
    (workdir / "userlist.txt").write_text(f'"{target.username}" "{target.password}"\n')
    (workdir / "pgbouncer.ini").write_text(
        f"[databases]\nletta = host=127.0.0.1 port={target.port} dbname={target.database}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = scram-sha-256\nauth_file = {workdir / 'userlist.txt'}\npool_mode = transaction\n"
        f"default_pool_size = 4\nmax_client_conn = 200\n"
        + ("user = embedded_postgres\n" if os.geteuid() == 0 else "")  # PgBouncer refuses to run as root
    )
    for path in workdir.iterdir():
        path.chmod(0o644)
    log_path = workdir.parent / "pgbouncer.log"  # its stderr: the service user may not write in workdir
    proc = subprocess.Popen([PGBOUNCER, str(workdir / "pgbouncer.ini")], stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    through = target.set(port=port)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log_path.read_text()[-2000:]
        try:
            engine = sa.create_engine(sync_url(through.render_as_string(hide_password=False)), poolclass=sa.NullPool)
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            engine.dispose()
            return proc, port
        except sa.exc.OperationalError:
            assert time.monotonic() < deadline, "PgBouncer did not accept a login within 60 s"
            time.sleep(0.2)


PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@pytest.mark.slow
@pytest.mark.skipif(not Path(PGBOUNCER).exists(), reason="PgBouncer is not installed (Debian: apt-get install pgbouncer)")
def test_ketta_runs_behind_pgbouncer_in_transaction_mode(start_ketta: Callable[..., KettaProcess], tmp_path: Path) -> None:
    """Migrations (transaction-scoped advisory lock), providers, agents and a message, every
    database statement through PgBouncer in transaction mode (KETTA_DB_PGBOUNCER=true)."""
    pg = EmbeddedPostgres(home=tmp_path / "own-pg")
    uri = pg.start()
    workdir = Path(tempfile.mkdtemp(prefix="ketta-pgbouncer-"))
    bouncer, port = start_pgbouncer(uri, workdir / "conf")
    try:
        through = sa.engine.make_url(uri).set(port=port).render_as_string(hide_password=False)
        server = start_ketta(env={"LETTA_PG_URI": through, "KETTA_DB_PGBOUNCER": "true", "KETTA_DB_POOL_SIZE": "3"})
        with MockOpenAI(chat_models=("mock-chat-1",)) as llm, server.client() as client:
            created = client.post("/v1/providers/", json={"name": "bounced", "provider_type": "openai", "api_key": "sk-bounce",
                                                          "base_url": llm.base_url})
            assert created.status_code == 200, created.text
            agent = client.post("/v1/agents/", json={"name": "bounced-agent", "agent_type": "letta_v1_agent",
                                                     "model": "bounced/mock-chat-1", "embedding": "bounced/text-embedding-3-small"})
            assert agent.status_code == 200, agent.text
            for i in range(5):  # statements of many transactions on the few server connections PgBouncer has
                answer = client.post(f"/v1/agents/{agent.json()['id']}/messages",
                                     json={"messages": [{"role": "user", "content": f"hello {i}"}]})
                assert answer.status_code == 200, answer.text
            assert len(llm.chat_requests()) >= 5
        assert migrations.current(uri) == migrations.HEAD_REVISION
    finally:
        bouncer.terminate()
        bouncer.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
        pg.stop()


_LOOPS = """
import asyncio, sys
from ketta import letta_modifications
from ketta.core.settings import KettaSettings
letta_modifications.apply_all(KettaSettings())
import sqlalchemy as sa
from letta.server.db import db_registry

async def once():
    async with db_registry.async_session() as session:
        await session.execute(sa.text("SELECT 1"))

for _ in range(int(sys.argv[1])):
    asyncio.run(once())  # a new event loop each time (Letta's tests, asyncio.run in a thread)
engine = sa.create_engine(sys.argv[2], poolclass=sa.NullPool)
with engine.connect() as conn:
    print(conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar())
"""


def test_pools_of_ended_event_loops_give_their_connections_back(database_uri: str) -> None:
    """Each event loop gets its own pool; when a loop has ended, its connections are released on
    the next loop's first session (40 loops in a row kept 40 sessions open and Letta's own test
    suite ran PostgreSQL out of connection slots)."""
    from conftest import clean_env

    done = subprocess.run([sys.executable, "-c", _LOOPS, "40", sync_url(database_uri)], env=clean_env(LETTA_PG_URI=database_uri),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert int(done.stdout.strip().splitlines()[-1]) <= 2
