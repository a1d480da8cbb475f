"""Overhead of provider health recording: message round trips with KETTA_PROVIDER_HEALTH on and off.

Two ``ketta server`` processes from this venv on one embedded PostgreSQL (two databases), one
local mock LLM; each timed ``POST /v1/agents/{id}/messages`` alternates between them (ABBA), one
request at a time, as ``bench/bench.py`` does. Prints the medians and their ratio (on/off).

    .venv/bin/python bench/health_overhead.py --messages 40
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ketta-health-bench-"))
    postgres, uris = bench.prepare_databases(work)  # databases "letta" and "ketta": here health off / on
    servers = {}
    try:
        with bench.MockOpenAI(chat_models=(bench.CHAT_MODEL,), api_key=bench.PROVIDER_KEY) as llm:
            for name, health in (("letta", "false"), ("ketta", "true")):
                home = work / f"{name}-home"
                home.mkdir()
                port = bench.free_port()
                env = bench.server_env(LETTA_PG_URI=uris[name], KETTA_HOME=str(home), HOME=str(home), KETTA_PROVIDER_HEALTH=health)
                servers[name] = bench.ServerProcess([str(bench.BIN / "ketta"), "server", "--host", "127.0.0.1", "--port", str(port)],
                                                    env, port, work / f"{name}.log")
            sessions = []
            for name, server in servers.items():
                server.wait_healthy()
                session = bench.Session(bench.ServerFigures(name=name), server, httpx.Client(base_url=server.url, timeout=120, headers=bench.AUTH_HEADERS))
                bench.set_up(session, llm)
                sessions.append(session)
            for i, session in bench.alternating(sessions, args.warmup):
                session.send(i).raise_for_status()
            for i, session in bench.alternating(sessions, args.messages):
                session.figures.message_ms.append(bench.timed_ms(lambda: session.send(i)))
        off, on = (statistics.median(s.figures.message_ms) for s in sessions)
        print(f"message round trip median: health off {off:.1f} ms, health on {on:.1f} ms, ratio on/off {on / off:.3f} "
              f"({args.messages} messages each, alternating)")
        return 0
    finally:
        for server in servers.values():
            server.stop()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
