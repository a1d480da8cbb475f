"""Pooled database connections (ketta/letta_modifications/server/db.py): sessions are reused, and a
restarted PostgreSQL is survived without restarting Ketta. The outage test stops and restarts a
PostgreSQL of its own (not the session's shared one)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest
import sqlalchemy as sa

from conftest import KettaProcess
from ketta.database import EmbeddedPostgres, sync_url, with_database


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
