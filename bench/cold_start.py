"""Cold start of ``ketta server`` (and optionally ``letta server``): wall time and CPU time.

Each start runs alone on one new database on the PostgreSQL of ``--pg-uri`` (or on an embedded one
this script starts): process start to the first ``200`` of ``GET /v1/health/``, and the CPU time (user+sys)
the server's process tree had used at that moment (read from /proc, so children such as an
embedded PostgreSQL count too). Prints every figure, the medians and the load average before and
after, since the machine may be shared. Nothing leaves the machine (bench.py's environment).

    .venv/bin/python bench/cold_start.py [--starts 5] [--letta] [--before /path/to/other/.venv/bin/ketta] [--pg-uri URI]

``--before``: also start another checkout's ``ketta`` (its own venv), alternating, for a before/after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BIN, ServerProcess, server_env  # noqa: E402
from ketta.db.database import free_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """user+sys seconds of ``pid`` and its live descendants (and of children they reaped)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        fields = stats.get(current)
        if fields:
            total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        todo += children.get(current, [])
    return total / TICKS


def one_start(name: str, command: str, uri: str, work: Path, run: int) -> tuple[float, float]:
    home = work / f"{name}-home"  # one per server: a restart, as in production (the key stays)
    home.mkdir(exist_ok=True)
    port = free_port()
    env = server_env(LETTA_PG_URI=uri, KETTA_HOME=str(home), HOME=str(home))
    server = ServerProcess([command, "server", "--host", "127.0.0.1", "--port", str(port)], env, port,
                           work / f"{name}-{run}.log")
    try:
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {server.proc.returncode}; see {server.log_path}")
            try:
                if httpx.get(f"{server.url}/v1/health/", timeout=2).status_code == 200:
                    return time.monotonic() - server.started_at, tree_cpu_s(server.proc.pid)
            except httpx.HTTPError:
                pass
            if time.monotonic() - server.started_at > 300:
                raise TimeoutError(f"{name} not healthy after 300 s; see {server.log_path}")
            time.sleep(0.05)
    finally:
        server.stop()


def fresh_database(server_uri: str) -> str:
    """A new empty database on the server of ``server_uri``, at Ketta's schema; returns its URI."""
    import uuid

    import sqlalchemy as sa

    from ketta.db import migrations
    from ketta.db.database import sync_url, with_database

    name = f"cold_start_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(sync_url(with_database(server_uri, "postgres")), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    uri = with_database(server_uri, name)
    migrations.upgrade(uri)
    return uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="starts per server (default 5)")
    parser.add_argument("--letta", action="store_true", help="also start stock `letta server`, alternating")
    parser.add_argument("--before", help="another checkout's ketta executable, started alternately as 'before'")
    parser.add_argument("--pg-uri", help="URI of a PostgreSQL server to make the databases on (default: an embedded one)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ketta-cold-start-"))
    postgres = None
    commands = {"ketta": str(BIN / "ketta")}
    if args.before:
        commands["before"] = args.before
    if args.letta:
        commands["letta"] = str(BIN / "letta")
    names = list(commands)
    server_uri = args.pg_uri
    if not server_uri:
        from ketta.db.database import EmbeddedPostgres

        postgres = EmbeddedPostgres(home=work / "pg")
        server_uri = postgres.start()
    uris = {name: fresh_database(server_uri) for name in names}  # one each: each home has its own key
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    print(f"load average before: {os.getloadavg()}", flush=True)
    try:
        for run in range(args.starts):
            for name in (names if run % 2 == 0 else names[::-1]):
                wall, cpu = one_start(name, commands[name], uris[name], work, run)
                figures[name].append((wall, cpu))
                print(f"{name} start {run + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU (load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        if postgres is not None:
            postgres.stop()
    print(f"load average after: {os.getloadavg()}")
    for name, runs in figures.items():
        print(f"{name}: median {statistics.median(w for w, _ in runs):.2f} s wall, "
              f"{statistics.median(c for _, c in runs):.2f} s CPU over {len(runs)} starts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
