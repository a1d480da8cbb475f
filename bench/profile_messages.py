"""Where a Ketta server's CPU goes while it answers messages: a py-spy sampling profile, summarised.

Starts ``ketta server`` (of this venv, or ``--ketta`` naming another checkout's ``ketta``) on an
embedded PostgreSQL of its own, gives it an ``openai`` provider on a local mock LLM
(tests/mock_openai.py, 127.0.0.1, answers at once) and an agent, then records the server with
``py-spy record --gil`` (200 Hz, only the thread holding the GIL: busy Python CPU) while N messages are sent one
at a time. Prints the functions with the largest share of busy samples (own time and
inclusive), and the share of a few known costs (a new TLS context per HTTP client, a new
database connection per session). Run it on two checkouts to compare before and after::

    .venv/bin/python bench/profile_messages.py --messages 100
    .venv/bin/python bench/profile_messages.py --messages 100 --ketta /path/to/other/.venv/bin/ketta
"""

from __future__ import annotations

import argparse
import collections
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (same directory: server_env, ServerProcess, providers, agents)
from ketta.db.database import EmbeddedPostgres, free_port  # noqa: E402
from mock_openai import MockOpenAI  # noqa: E402

# Known costs, by a frame that appears in their stacks (substring of "function (file)").
KNOWN_COSTS = {
    "new TLS context (ssl.create_default_context)": "create_default_context",
    "new database connection (asyncpg connect)": "connect_utils.py",
    "JSON (de)serialisation": "json",
    "pydantic validation/serialisation": "pydantic",
    "SQLAlchemy": "sqlalchemy",
}


def folded_stacks(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) output: [(frames root first, samples)]."""
    stacks = []
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    return stacks


def package_of(frame: str) -> str:
    """'execute (asyncpg/connection.py:377)' -> 'asyncpg'; a stdlib file -> its module ('selectors')."""
    location = frame.rpartition("(")[2].rstrip(")")
    path = location.rsplit(":", 1)[0]
    return path.split("/", 1)[0].removesuffix(".py") if path else "?"


def summarise(stacks: list[tuple[list[str], int]], top: int) -> None:
    total = sum(count for _, count in stacks)
    if not total:
        print("no samples")
        return
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"\n{total} busy samples")
    print(f"\ntop {top} by own time (share of busy CPU):")
    for frame, count in own.most_common(top):
        print(f"  {100 * count / total:5.1f} %  {frame}")
    by_package: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        by_package[package_of(frames[-1])] += count
    print("\nown time by package (share of busy CPU):")
    print("  " + ", ".join(f"{name} {100 * count / total:.1f} %" for name, count in by_package.most_common(12)))
    print(f"\nknown costs (inclusive share of busy CPU):")
    for label, needle in KNOWN_COSTS.items():
        count = sum(c for frames, c in stacks if any(needle in frame for frame in frames))
        print(f"  {100 * count / total:5.1f} %  {label}")
    for package in ("sqlalchemy", "openai"):
        print(f"\n{package} by caller (the last letta/ketta frame before it; inclusive share of busy CPU):")
        for caller, count in callers_of(stacks, package).most_common(12):
            print(f"  {100 * count / total:5.1f} %  {caller}")


def callers_of(stacks: list[tuple[list[str], int]], package: str) -> collections.Counter[str]:
    """Samples spent inside ``package``, by the Letta or Ketta function that called into it."""
    callers: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        first = next((i for i, frame in enumerate(frames) if package_of(frame) == package), None)
        if first is None:
            continue
        caller = next((frame for frame in reversed(frames[:first]) if package_of(frame) in ("letta", "ketta")), "?")
        callers[caller] += count
    return callers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--ketta", default=str(bench.BIN / "ketta"), help="the ketta executable to profile")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--save", type=Path, help="also keep py-spy's raw output in this file")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(bench.BIN / "py-spy")

    work = Path(tempfile.mkdtemp(prefix="ketta-profile-"))
    postgres = EmbeddedPostgres(home=work / "pg")
    server = None
    try:
        uri = postgres.start()
        port = free_port()
        env = bench.server_env(LETTA_PG_URI=uri, KETTA_HOME=str(work / "home"), HOME=str(work / "home"))
        server = bench.ServerProcess([args.ketta, "server", "--host", "127.0.0.1", "--port", str(port)], env, port,
                                     work / "server.log")
        print(f"{args.ketta}: healthy after {server.wait_healthy(300):.1f} s", flush=True)
        with MockOpenAI(chat_models=(bench.CHAT_MODEL,), api_key=bench.PROVIDER_KEY) as llm, \
                httpx.Client(base_url=server.url, timeout=120, headers=bench.AUTH_HEADERS) as http:
            session = bench.Session(bench.ServerFigures(name="ketta"), server, http)
            bench.set_up(session, llm)
            for i in range(5):
                session.send(i).raise_for_status()
            raw = work / "profile.txt"
            spy = subprocess.Popen([py_spy, "record", "--pid", str(server.proc.pid), "--rate", str(args.rate), "--format", "raw",
                                    "--output", str(raw), "--gil"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # py-spy attaches; the messages below are what it samples (no synchronisation relies on it)
            timings = []
            for i in range(args.messages):
                start = time.perf_counter()
                session.send(i).raise_for_status()
                timings.append((time.perf_counter() - start) * 1000)
            spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
            spy.wait(60)
        print(f"{args.messages} messages, median {statistics.median(timings):.0f} ms, "
              f"p90 {sorted(timings)[int(0.9 * (len(timings) - 1))]:.0f} ms")
        if args.save:
            shutil.copy(raw, args.save)
        summarise(folded_stacks(raw), args.top)
        return 0
    finally:
        if server is not None:
            server.stop()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
