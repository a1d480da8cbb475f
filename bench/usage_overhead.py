"""What the usage ledger costs a message round trip: Ketta with KETTA_USAGE_LEDGER on and off.

    .venv/bin/python bench/usage_overhead.py [--messages 40] [--warmup 3]

Two Ketta servers (ledger on, ledger off) on two databases of one embedded PostgreSQL, each with
a provider on the local mock LLM and a ``letta_v1_agent``; non-streaming messages alternate
between them one at a time (ABBA order, as ``bench/bench.py`` does), so drift in machine load
weighs on both. Prints the medians, the median of the per-round differences (steadier on a busy
machine) and the ledger's share of a round trip; the ledger server's rows are counted to show
every message was recorded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (AUTH_HEADERS, BIN, PROVIDER_KEY, CHAT_MODEL, ServerFigures, ServerProcess, Session, alternating,  # noqa: E402
                   free_port, server_env, set_up, timed_ms, with_database)
from mock_openai import MockOpenAI  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    from ketta.db import migrations
    from ketta.db.database import EmbeddedPostgres, sync_url

    work = Path(tempfile.mkdtemp(prefix="ketta-usage-bench-"))
    postgres = EmbeddedPostgres(home=work / "pg")
    admin_uri = with_database(postgres.start(), "postgres")
    admin = sa.create_engine(sync_url(admin_uri), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    uris = {}
    with admin.connect() as conn:
        for name in ("on", "off"):
            conn.execute(sa.text(f'CREATE DATABASE "usage_{name}"'))
            uris[name] = with_database(admin_uri, f"usage_{name}")
    admin.dispose()
    for uri in uris.values():
        migrations.upgrade(uri)
    servers: dict[str, ServerProcess] = {}
    try:
        with MockOpenAI(chat_models=(CHAT_MODEL,), api_key=PROVIDER_KEY) as llm:
            sessions = []
            for name, setting in (("on", "true"), ("off", "false")):
                home = work / f"{name}-home"
                home.mkdir()
                port = free_port()
                env = server_env(LETTA_PG_URI=uris[name], KETTA_HOME=str(home), HOME=str(home), KETTA_USAGE_LEDGER=setting)
                servers[name] = ServerProcess([str(BIN / "ketta"), "server", "--host", "127.0.0.1", "--port", str(port)], env, port,
                                              work / f"{name}.log")
            for name, server in servers.items():
                server.wait_healthy()
                sessions.append(Session(ServerFigures(name=f"ledger {name}"), server,
                                        httpx.Client(base_url=server.url, timeout=120, headers=AUTH_HEADERS)))
            for session in sessions:
                set_up(session, llm)
            for i, session in alternating(sessions, args.warmup):
                session.send(i).raise_for_status()
            for i, session in alternating(sessions, args.messages):
                session.figures.message_ms.append(timed_ms(lambda: session.send(i)))
        engine = sa.create_engine(sync_url(uris["on"]), poolclass=sa.NullPool)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT count(*) FROM ketta_usage WHERE status = 'ok' AND prompt_tokens IS NOT NULL")).scalar()
        engine.dispose()
        on, off = (statistics.median(s.figures.message_ms) for s in sessions)
        # Paired: each round sends one message to each server back to back, so a round's difference
        # is measured under the same machine load; its median is the steadier figure on a busy machine.
        paired = statistics.median(a - b for a, b in zip(sessions[0].figures.message_ms, sessions[1].figures.message_ms))
        print(f"message round trip, median of {args.messages}: ledger on {on:.1f} ms, off {off:.1f} ms, "
              f"difference of medians {on - off:+.1f} ms ({(on - off) / off * 100:+.1f} %), median paired difference "
              f"{paired:+.1f} ms ({paired / off * 100:+.1f} %); ledger rows with tokens: {rows}")
    finally:
        for server in servers.values():
            server.stop()
        postgres.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
