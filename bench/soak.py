"""Memory under a long load: RSS of every server process over time (issue 24).

Starts an embedded PostgreSQL and ``ketta server --workers W`` on it (as bench/bench.py does), a
provider on the local mock LLM (tests/mock_openai.py, 127.0.0.1) and one ``letta_v1_agent`` per
client; then ``--clients`` clients each send messages to their own agent and, every fifth request,
list their agent's messages and ``GET /v1/agents/``, for ``--minutes``. Every ``--every`` seconds it
prints the RSS (MiB) of the server's main process and of each worker, with requests and errors so
far. At the end: each process's RSS growth over the last two thirds of the run (after warm-up),
which the issue wants under 5 %.

An agent's context grows with every message, and each message loads all of it: RSS then grows with
the working set, leak or not. ``--reset-every N`` resets each agent's messages
(``PATCH /v1/agents/{id}/reset-messages``) after every N of its requests, so every request does the
same work all the run long and growth after warm-up is memory kept. ``--context-window T`` gives
each agent a context window of T tokens instead: Letta compacts (summarizes) a context that grows
past it, as it does for a long-lived agent, so contexts stay bounded the way Letta bounds them. At
the end the run prints how many messages the agents' contexts hold.

    .venv/bin/python bench/soak.py [--minutes 30] [--clients 16] [--workers 2] [--every 30] [--reset-every 40 | --context-window 12000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench as shared  # noqa: E402  (bench/bench.py: servers, mock LLM, provider and agent set-up)


def rss_by_process(pid: int) -> dict[int, float]:
    """RSS (MiB) of the server process and each of its child processes (the workers)."""
    try:
        main = psutil.Process(pid)
        processes = [main, *main.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    found = {}
    for process in processes:
        try:
            found[process.pid] = process.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            pass
    return found


async def load(url: str, agent_ids: list[str], seconds: float, counts: dict[str, int], reset_every: int = 0) -> None:
    deadline = time.monotonic() + seconds

    async def client(agent_id: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=300, headers=shared.AUTH_HEADERS) as http:
            i = 0
            while time.monotonic() < deadline:
                if reset_every and i % (reset_every + 1) == reset_every:
                    responses = [await http.patch(f"/v1/agents/{agent_id}/reset-messages",
                                                  json={"add_default_initial_messages": True})]  # as a new agent
                elif i % 5 == 4:
                    responses = [await http.get(f"/v1/agents/{agent_id}/messages", params={"limit": 50}),
                                 await http.get("/v1/agents/", params={"limit": 20})]
                else:
                    responses = [await http.post(f"/v1/agents/{agent_id}/messages",
                                                 json={"messages": [{"role": "user", "content": f"Soak message {i}."}]})]
                for response in responses:
                    counts["requests"] += 1
                    if response.status_code != 200:
                        counts["errors"] += 1
                        failed = f"{response.request.method} {response.status_code}"
                        counts[failed] = counts.get(failed, 0) + 1
                i += 1

    await asyncio.gather(*(client(agent_id) for agent_id in agent_ids))


async def sample(pid: int, seconds: float, every: float, counts: dict[str, int], samples: list[tuple[float, dict[int, float]]]) -> None:
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        await asyncio.sleep(min(every, max(0.0, seconds - (time.monotonic() - began))))
        rss = rss_by_process(pid)
        samples.append((time.monotonic() - began, rss))
        cells = "  ".join(f"{p}: {v:6.1f}" for p, v in sorted(rss.items()))
        print(f"{time.monotonic() - began:7.0f}s  requests {counts['requests']:6d}  errors {counts['errors']:4d}  RSS MiB  {cells}", flush=True)


def growth(samples: list[tuple[float, dict[int, float]]], total_s: float) -> dict[int, tuple[float, float]]:
    """Per process: (RSS at one third of the run, RSS at the end)."""
    after_warmup = [s for s in samples if s[0] >= total_s / 3] or samples
    first, last = after_warmup[0][1], samples[-1][1]
    return {pid: (first[pid], last[pid]) for pid in last if pid in first}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30, help="length of the load (default 30)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    parser.add_argument("--every", type=float, default=30, help="seconds between RSS samples (default 30)")
    parser.add_argument("--reset-every", type=int, default=0, help="reset each agent's messages after this many requests (default 0: never)")
    parser.add_argument("--context-window", type=int, default=0, help="each agent's context window in tokens; Letta compacts past it (default 0: the model's)")
    args = parser.parse_args(argv)
    from ketta.db.database import EmbeddedPostgres, free_port
    from mock_openai import MockOpenAI

    work = Path(tempfile.mkdtemp(prefix="ketta-soak-"))
    postgres = EmbeddedPostgres(home=work / "pg")
    try:
        uri = postgres.start()
        home = work / "ketta-home"
        home.mkdir()
        port = free_port()
        env = shared.server_env(LETTA_PG_URI=uri, KETTA_HOME=str(home), HOME=str(home))
        command = [str(shared.BIN / "ketta"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)]
        with MockOpenAI(chat_models=(shared.CHAT_MODEL,), api_key=shared.PROVIDER_KEY) as llm:
            server = shared.ServerProcess(command, env, port, work / "ketta.log")
            try:
                server.wait_healthy()
                with httpx.Client(base_url=server.url, timeout=120, headers=shared.AUTH_HEADERS) as http:
                    shared.create_provider(http, "soak-provider", llm)
                    chat, embedding = shared.listed_handles(http, "soak-provider", llm.base_url)
                    agent_ids = [shared.make_agent(http, chat, embedding, args.context_window) for _ in range(args.clients)]
                seconds = args.minutes * 60
                reset = f", messages reset every {args.reset_every} requests" if args.reset_every else ""
                reset += f", context window {args.context_window} tokens" if args.context_window else ""
                print(f"ketta server, {args.workers} workers, {args.clients} clients, {args.minutes:g} min{reset}", flush=True)
                counts = {"requests": 0, "errors": 0}
                samples: list[tuple[float, dict[int, float]]] = []

                async def run() -> None:
                    await asyncio.gather(load(server.url, agent_ids, seconds, counts, args.reset_every),
                                         sample(server.proc.pid, seconds, args.every, counts, samples))

                asyncio.run(run())
                with httpx.Client(base_url=server.url, timeout=120, headers=shared.AUTH_HEADERS) as http:
                    held = sorted(len(http.get(f"/v1/agents/{agent_id}").json().get("message_ids") or []) for agent_id in agent_ids)
                print(f"messages in the agents' contexts at the end: {held[0]} to {held[-1]}", flush=True)
            finally:
                server.stop()
        failures = {key: value for key, value in counts.items() if key not in ("requests", "errors")}
        print(f"\n{counts['requests']} requests, {counts['errors']} errors {failures or ''}")
        for pid, (first, last) in growth(samples, args.minutes * 60).items():
            print(f"  process {pid}: {first:.1f} -> {last:.1f} MiB over the last two thirds ({(last / first - 1) * 100:+.1f} %)")
        return 0
    finally:
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
