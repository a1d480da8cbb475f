"""What the usage ledger costs a message round trip: Ketta with KETTA_USAGE_LEDGER on and off.

    .venv/bin/python bench/usage_overhead.py [--rounds 40] [--block 5] [--warmup 3] [--direct 2000] [--reset-every 4]

Two Ketta servers (ledger on, ledger off) on two databases of one embedded PostgreSQL, each with
a provider on the local mock LLM and a ``letta_v1_agent``. A round sends ``--block``
non-streaming messages to one server, then as many to the other, one at a time (the order
flipped every round, ABBA, as ``bench/bench.py`` does), so drift in machine load weighs on both.

For each block it measures, per message:

- the **wall time** of the round trip (what a client waits);
- the **server's CPU time** (user + system of the server process and its children, from
  ``/proc/<pid>/stat``), which does not count time spent waiting for a CPU another process holds,
  so it is far less noisy than wall time on a shared machine;
- the **PostgreSQL CPU time** of that server's database (its backends' ``/proc/<pid>/stat``,
  found in ``pg_stat_activity``; a backend that ends between two readings loses its share).

The ledger writes its row in a task of its own after the answer; each block's CPU is read once
the server is idle again (``--settle`` s later), so those writes are inside the block.

Each round gives one paired difference (on minus off) per figure; the script prints their mean
with a 95 % confidence interval (Student's t over the rounds), their median with a 95 % interval
(sign test: robust to the rare block that holds a full garbage collection of the server's heap),
and both as a share of the ledger-off figure; the ledger server's rows are counted to show every message was recorded.

Each message loads the agent's whole context, which grows by two messages per message: over a long
run a message's CPU grows several times over, and so does the noise. ``--reset-every N`` resets both
agents' messages (untimed, between rounds) every N rounds, so every round measures the same work.

The difference of two noisy servers needs many rounds to resolve 1 %, so ``--direct N`` also
measures the recording itself: this process runs the ledger's own ``record_later`` (the task the
server starts as a call ends: cost, row and budget spend in one statement) N times, one at a
time, on the ledger server's database with its provider, agent and user, and prints its CPU time
(this process's, and PostgreSQL's backends') and wall time per call; a message of this bench
makes one LLM call. It alternates blocks of the recording as written (the statement sent on a
pooled connection's asyncpg connection, in autocommit) with the same statement sent through a
SQLAlchemy session in autocommit (as recorded before 2026-12-04 11:00).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (AUTH_HEADERS, BIN, PROVIDER_KEY, CHAT_MODEL, ServerFigures, ServerProcess, Session,  # noqa: E402
                   free_port, server_env, set_up, with_database)
from mock_openai import MockOpenAI  # noqa: E402

TICK_S = 1 / os.sysconf("SC_CLK_TCK")
# Two-sided 95 % quantiles of Student's t by degrees of freedom (1.96 beyond the table).
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 12: 2.18, 15: 2.13,
       20: 2.09, 25: 2.06, 30: 2.04, 40: 2.02, 60: 2.00, 120: 1.98}


def t95(df: int) -> float:
    return next((T95[k] for k in sorted(T95) if k >= df), 1.96)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 'state' on (the command may hold spaces)


def process_cpu_s(pid: int, with_children: bool = True) -> float:
    """User + system CPU seconds of ``pid``, and with its live descendants and waited-for children."""
    stats = {}
    if with_children:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
                stats[int(entry.name)] = fields
    else:
        stats = {pid: fields} if (fields := _stat(pid)) is not None else {}
    children: dict[str, list[int]] = {}
    for other, fields in stats.items():
        children.setdefault(fields[1], []).append(other)  # by ppid

    def ticks(one: int) -> int:
        fields = stats.get(one)
        if fields is None:
            return 0
        own = sum(int(v) for v in fields[11:15 if with_children else 13])  # utime stime [cutime cstime]
        return own + (sum(ticks(child) for child in children.get(str(one), [])) if with_children else 0)

    return ticks(pid) * TICK_S


def backends_cpu_s(admin: sa.Engine, database: str) -> float:
    with admin.connect() as conn:
        pids = conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND backend_type = 'client backend'"), {"d": database}).scalars().all()
    return sum(process_cpu_s(pid, with_children=False) for pid in pids)


_sessions: list = []  # the bench's session factory (direct)


async def _record_in_a_session(call, tokens, status, error_class=None) -> None:
    """The recording as written before 2026-12-04 11:00: the same parameters and statement, run
    through a SQLAlchemy session's connection in autocommit (for the --direct comparison)."""
    from ketta.usage import ledger as usage_ledger

    if call.done:
        return
    call.done = True
    parameters = usage_ledger.row_parameters(call, tokens, status, error_class)
    async with _sessions[-1]() as session:
        connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        await connection.execute(usage_ledger._RECORD, parameters)
        await session.commit()


def direct(admin: sa.Engine, uri: str, database: str, calls: int, blocks: int = 10) -> list[str]:
    """The ledger's recording of ``calls`` calls, one at a time, on ``uri`` (see the docstring), as
    written (the statement on the pooled connection's asyncpg connection) and through a SQLAlchemy
    session in autocommit (the recording before 2026-12-04 11:00), in alternating blocks."""
    import asyncio
    from dataclasses import replace

    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from ketta.db.database import sync_url
    from ketta.usage import ledger as usage_ledger
    from ketta.usage.tokens import Tokens

    reader = sa.create_engine(sync_url(uri), poolclass=sa.NullPool)
    with reader.connect() as conn:
        seen = conn.execute(sa.text("SELECT organization_id, user_id, agent_id, provider_name, provider_type, model, handle "
                                    "FROM ketta_usage WHERE status = 'ok' ORDER BY id DESC LIMIT 1")).one()
    async_uri = sync_url(uri).replace("postgresql+psycopg2://", "postgresql+asyncpg://", 1).replace("sslmode=", "ssl=")
    as_written = usage_ledger.record
    variants = {"driver connection (as written)": as_written, "session, autocommit (before)": _record_in_a_session}
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}

    async def run() -> None:
        engine = create_async_engine(async_uri, pool_size=2)
        sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        usage_ledger._engine = lambda: engine  # type: ignore[assignment]  # this process is the worker

        async def session() -> object:  # its budget checks (the wrapper's, below)
            return sessions()

        usage_ledger._session = session  # type: ignore[assignment]
        _sessions.append(sessions)
        template = usage_ledger.Call(organization_id=seen.organization_id, user_id=seen.user_id, agent_id=seen.agent_id, run_id=None,
                                     provider=seen.provider_name, model=seen.model, handle=seen.handle, pool=None, fallback=False,
                                     streamed=False, provider_type=seen.provider_type)
        tokens = Tokens(prompt=1234, completion=56, cached_input=1000, reasoning=20)
        per_block = max(1, calls // blocks)
        for block in range(-1, blocks):  # block -1: connections made, statements prepared
            for name in (variants if block % 2 == 0 else reversed(list(variants))):
                usage_ledger.record = variants[name]  # type: ignore[assignment]  # what record_later's task runs
                cpu, pg, wall = time.process_time(), backends_cpu_s(admin, database), time.perf_counter()
                for _ in range(per_block if block >= 0 else 20):
                    usage_ledger.record_later(replace(template), tokens, "ok")
                    await usage_ledger.drain()
                if block >= 0:
                    figures[name].append(((time.process_time() - cpu) / per_block * 1000,
                                          (backends_cpu_s(admin, database) - pg) / per_block * 1000,
                                          (time.perf_counter() - wall) / per_block * 1000))
        usage_ledger.record = as_written  # type: ignore[assignment]
        await engine.dispose()

        # The wrapper on the call's own path (who it is for, the provider's row remembered by the
        # request, the usage read from the answer, the recording task started), its write left out.
        class Client:
            actor = type("Actor", (), {"organization_id": seen.organization_id, "id": seen.user_id})()

        config = type("Config", (), {"provider_name": seen.provider_name, "model": seen.model, "handle": seen.handle,
                                     "model_endpoint_type": seen.provider_type})()
        answer = {"choices": [], "usage": {"prompt_tokens": 1234, "completion_tokens": 56, "total_tokens": 1290,
                                           "prompt_tokens_details": {"cached_tokens": 1000}, "completion_tokens_details": {"reasoning_tokens": 20}}}

        async def request_async(request_data: dict, llm_config: object) -> dict:
            return answer

        async def describe(name: str, organization_id: str) -> tuple[str, str]:
            return seen.provider_type, "http://127.0.0.1:1/v1"

        writes = usage_ledger.record
        usage_ledger.record = lambda *args: asyncio.sleep(0)  # type: ignore[assignment]
        wrapped = usage_ledger.wrap(Client(), request_async, False, describe, lambda exc: "error")
        for _ in range(200):
            await wrapped({}, config)
        cpu = time.process_time()
        for _ in range(calls):
            await wrapped({}, config)
            await usage_ledger.drain()
        wrapper.append((time.process_time() - cpu) / calls * 1000)
        usage_ledger.record = writes  # type: ignore[assignment]

    wrapper: list[float] = []
    asyncio.run(run())
    reader.dispose()
    lines = [f"recording one call ({blocks} alternating blocks of {calls // blocks} calls per variant), per call:"]
    for name, rows in figures.items():
        cpu, pg, wall = (statistics.fmean(r[i] for r in rows) for i in range(3))
        lines.append(f"  {name:<32} {cpu:.3f} ms CPU here + {pg:.3f} ms PostgreSQL CPU = {cpu + pg:.3f} ms CPU; {wall:.3f} ms wall")
    lines.append(f"  and on the call's path (the wrapper, its write left out): {wrapper[0]:.3f} ms CPU")
    return lines


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """The median and a distribution-free 95 % interval for it (order statistics of the sign test),
    which a few outliers (a full garbage collection in one server's block) do not widen."""
    ordered, n = sorted(values), len(values)
    k, below = 0, 0.0
    while True:  # the largest k with P(Binomial(n, 1/2) < k) <= 0.025
        below_next = below + math.comb(n, k) / 2 ** n
        if below_next > 0.025:
            break
        below, k = below_next, k + 1
    k = max(k, 1)
    return statistics.median(ordered), ordered[k - 1], ordered[n - k]


def summary(name: str, unit: str, on: list[float], off: list[float]) -> str:
    """Paired differences per round: mean with its 95 % interval (Student's t), median with its
    95 % interval (sign test), and their share of the 'off' mean."""
    differences = [a - b for a, b in zip(on, off)]
    mean_off, mean_diff = statistics.fmean(off), statistics.fmean(differences)
    half = t95(len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    median, low, high = median_interval(differences)

    def share(value: float) -> str:
        return f"{value / mean_off * 100:+.2f} %"

    return (f"{name:<24} on {statistics.fmean(on):7.2f} {unit}, off {mean_off:7.2f} {unit}; on-off mean {mean_diff:+6.2f} {unit} "
            f"[{mean_diff - half:+.2f}, {mean_diff + half:+.2f}] = {share(mean_diff)} [{share(mean_diff - half)}, {share(mean_diff + half)}]; "
            f"median {median:+6.2f} {unit} [{low:+.2f}, {high:+.2f}] = {share(median)} [{share(low)}, {share(high)}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--block", type=int, default=5, help="messages per server per round")
    parser.add_argument("--warmup", type=int, default=3, help="rounds before measuring")
    parser.add_argument("--settle", type=float, default=0.3, help="seconds after a block before its CPU is read")
    parser.add_argument("--direct", type=int, default=0, help="also time the recording of this many calls in this process")
    parser.add_argument("--reset-every", type=int, default=0,
                        help="reset both agents' messages (untimed) every N rounds: each message then loads a context of "
                             "the same size all run long, instead of one that grows (default 0: never)")
    parser.add_argument("--control", action="store_true",
                        help="both servers with the ledger off (an A/A run): the difference two server processes show "
                             "without any ledger, the bench's own offset")
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
    for uri in uris.values():
        migrations.upgrade(uri)
    servers: dict[str, ServerProcess] = {}
    figures: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": [], "pg": []} for name in ("on", "off")}
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        with MockOpenAI(chat_models=(CHAT_MODEL,), api_key=PROVIDER_KEY) as llm:
            sessions: dict[str, Session] = {}
            for name, setting in (("on", "false" if args.control else "true"), ("off", "false")):
                home = work / f"{name}-home"
                home.mkdir()
                port = free_port()
                env = server_env(LETTA_PG_URI=uris[name], KETTA_HOME=str(home), HOME=str(home), KETTA_USAGE_LEDGER=setting)
                servers[name] = ServerProcess([str(BIN / "ketta"), "server", "--host", "127.0.0.1", "--port", str(port)], env, port,
                                              work / f"{name}.log")
            for name, server in servers.items():
                server.wait_healthy()
                sessions[name] = Session(ServerFigures(name=f"ledger {name}"), server,
                                         httpx.Client(base_url=server.url, timeout=120, headers=AUTH_HEADERS))
            for session in sessions.values():
                set_up(session, llm)
            sent = 0
            for round_number in range(args.warmup + args.rounds):
                if args.reset_every and round_number and round_number % args.reset_every == 0:
                    for session in sessions.values():
                        session.http.patch(f"/v1/agents/{session.agent_id}/reset-messages",
                                           json={"add_default_initial_messages": True}).raise_for_status()
                order = ("on", "off") if round_number % 2 == 0 else ("off", "on")
                for name in order:
                    session = sessions[name]
                    cpu, pg = process_cpu_s(session.server.proc.pid), backends_cpu_s(admin, f"usage_{name}")
                    wall = 0.0
                    for _ in range(args.block):
                        begin = time.perf_counter()
                        session.send(sent).raise_for_status()
                        wall += time.perf_counter() - begin
                        sent += 1
                    time.sleep(args.settle)
                    if round_number >= args.warmup:
                        figures[name]["wall"].append(wall / args.block * 1000)
                        figures[name]["cpu"].append((process_cpu_s(session.server.proc.pid) - cpu) / args.block * 1000)
                        figures[name]["pg"].append((backends_cpu_s(admin, f"usage_{name}") - pg) / args.block * 1000)
        engine = sa.create_engine(sync_url(uris["on"]), poolclass=sa.NullPool)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT count(*) FROM ketta_usage WHERE status = 'ok' AND prompt_tokens IS NOT NULL")).scalar()
        engine.dispose()
        on, off = figures["on"], figures["off"]
        if args.direct and not args.control:  # the recording needs a row of the ledger server
            print("\n".join(direct(admin, uris["on"], "usage_on", args.direct)))
        if args.rounds < 2:
            return 0
        if args.control:
            print("CONTROL RUN: both servers have the ledger off; 'on' is the server started first, as in a real run")
        print(f"{args.rounds} rounds of {args.block} messages per server ({args.warmup} warm-up rounds), "
              f"{time.monotonic() - started:.0f} s; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
              f"ledger rows with tokens: {rows} (LLM calls of {(args.warmup + args.rounds) * args.block} messages)")
        print("per message, mean over rounds; on-off: the paired differences' mean and median [95 % intervals], and as a share of off")
        print(summary("wall time of round trip", "ms", on["wall"], off["wall"]))
        print(summary("server CPU", "ms", on["cpu"], off["cpu"]))
        print(summary("PostgreSQL CPU", "ms", on["pg"], off["pg"]))
        print(summary("server + PostgreSQL CPU", "ms", [a + b for a, b in zip(on["cpu"], on["pg"])],
                      [a + b for a, b in zip(off["cpu"], off["pg"])]))
    finally:
        for server in servers.values():
            server.stop()
        admin.dispose()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
