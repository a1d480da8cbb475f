"""Shared fixtures: a real PostgreSQL (embedded, or LETTA_PG_URI's server) and Ketta servers.

Remote LLM APIs are the only thing replaced, by local HTTP servers on 127.0.0.1.

How the suite stays fast (README "Tests"): the whole suite runs on parallel workers
(pytest-xdist, ``-n auto --dist loadgroup`` set in ``pytest_cmdline_main`` below:
``WORKERS_FOR_THE_SUITE`` workers when no test file is named, in-process when one is). Each worker is a pytest session of its own, so every session
fixture below exists once per worker. A new server start costs every run ~15 s of CPU: prefer,
in this order,

- ``api`` / ``shared_server`` / ``shared_db``: the session's Ketta server (default settings, login
  on with ``TEST_TOKEN``) on the suite's PostgreSQL; use ``unique()`` names, assert only on what
  your test made (other tests share it).
- ``switches_off_server``: a server with a few independent switches off (KETTA_OFFLINE,
  KETTA_KIMI_PROVIDER, KETTA_ENV_KEY_FALLBACK, KETTA_PROVIDER_POOLS), for a test of one of them in any
  module. Another switch that changes nothing the others check can join it.
- ``debug_server``: a server logging at debug level, for tests that a secret is in no log line.
- ``operator_keys_server``: a server whose operator set every env key Letta reads, for tests that
  none reaches an endpoint.
  These three (``SESSION_SERVERS_OF_THEIR_OWN``) start once per run: their tests, from any module,
  are kept on one worker and marked ``slow`` at collection.
- a module-scoped fixture built on ``server_of_its_own(pg_uri, home, prefix, **env)`` when tests
  need other settings: one server per module, on a database of its own. Tests using a
  module-scoped fixture are kept on one worker (``xdist_group`` set at collection), so it starts once.
- ``start_ketta`` only when the test is about a start or a stop (or kills the server); pass
  ``LETTA_PG_URI=database_uri`` unless the embedded PostgreSQL is what is tested (an embedded one
  runs ``initdb``: several seconds more).

Markers follow from fixtures: a test using ``start_ketta`` or a module/session fixture that
starts a server of its own is marked ``slow`` at collection, so ``-m "not slow"`` leaves them out.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import resource
import shutil
import socketserver
import threading
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import sqlalchemy as sa

from ketta.db.database import EmbeddedPostgres, free_port, sync_url, with_database
import forked_servers
import loopback_only
from mock_openai import MockOpenAI
from operator_env import OPERATOR_KEYS, RecordingEndpoint

REPO = Path(__file__).resolve().parents[1]

# In-process tests call the local mock LLMs too (through the URL guard): allow loopback, as
# clean_env does for servers.
LOOPBACK_ALLOWED = "127.0.0.1,localhost"
os.environ["KETTA_ALLOW_PRIVATE_HOSTS"] = LOOPBACK_ALLOWED


def pytest_configure(config: pytest.Config) -> None:
    """A temp root of this run's own: pytest prunes old numbered temp dirs of *other* runs, and a
    PostgreSQL whose data directory vanishes mid-run crashes (seen with two pytest runs at once).

    Bytecode caches are written even under PYTHONDONTWRITEBYTECODE (``__pycache__`` is gitignored):
    without them each of the run's ~100 processes (workers, servers, CLIs, Letta's runner) compiles
    Ketta again and each pytest process rewrites the test modules' asserts again (~4 s of CPU per
    worker)."""
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        sys.dont_write_bytecode = False  # this process; its workers, servers and CLIs inherit the environment
    if not config.option.basetemp:
        config.option.basetemp = tempfile.mkdtemp(prefix="ketta-pytest-")
        config._ketta_basetemp = config.option.basetemp  # type: ignore[attr-defined]
    if not hasattr(config, "workerinput"):
        # Before any worker, server or PostgreSQL starts: they inherit the loopback-only network.
        loopback_only.enter()
    if hasattr(config, "workerinput") and config.workerinput.get("ketta_dist") == "loadgroup":
        # A worker parses only the command line, which does not carry the ``--dist loadgroup`` set in
        # pytest_cmdline_main: without this its tests get no ``@group`` suffix and the controller
        # spreads a module's tests over every worker, each setting the module's server up again.
        config.option.loadgroup = True
        config.pluginmanager.register(_GroupsThatXdistSees(), "ketta-xdist-groups")
    if hasattr(config, "workerinput") and not config.option.collectonly:
        # An xdist worker of a suite run: fork its servers from a zygote (tests/forked_servers.py),
        # made now, before collection imports Letta into this process. A named test file runs
        # in-process without one (a zygote costs more than it saves for a few starts).
        basetemp = config.option.basetemp  # the worker's own, inside the controller's
        forked_servers.start_zygote(Path(basetemp).parent if basetemp else None)


def pytest_unconfigure(config: pytest.Config) -> None:
    basetemp = getattr(config, "_ketta_basetemp", None)
    if basetemp:
        shutil.rmtree(basetemp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Speed: parallel workers, markers from fixtures, the longest tests first, the wall time printed.

# Workers for a run of the whole suite (or of directories). Tests mostly wait on servers and
# subprocesses, so more workers than the 2 cores CI has still pays; a named test file runs in-process.
WORKERS_FOR_THE_SUITE = 4  # 2026-12-04: 560, 589, 643 s wall with 4; 602, 613 s with 3 (same code but the worker count; noisy)
_STARTED = time.monotonic()

# Tests that take minutes, started first so the others fill the workers around them (measured).
LONGEST_FIRST = (
    "tests/upstream/test_upstream_suite.py::test_letta_tests_pass_under_ketta_except_the_declared_differences",
    "tests/test_packaging.py::",
    "tests/upstream/test_upstream_suite.py::test_a_",
)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the options
def pytest_cmdline_main(config: pytest.Config) -> None:
    """``-n auto --dist loadgroup`` in the test order of pytest_collection_modifyitems, unless ``-n``
    was given; set here rather than in pyproject's addopts so a venv without pytest-xdist still runs."""
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return
    if config.option.numprocesses is None:
        config.option.numprocesses = "auto"
    if config.option.dist == "no":
        config.option.dist = "loadgroup"
        config.option.loadscopereorder = False


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown without pytest-xdist
def pytest_configure_node(node: object) -> None:
    """Tell each worker the controller's distribution mode (read in pytest_configure)."""
    node.workerinput["ketta_dist"] = node.config.option.dist  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown without pytest-xdist
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject): WORKERS_FOR_THE_SUITE for the suite or directories, none (in-process,
    no worker start-up) when test files or ids are named; PYTEST_XDIST_AUTO_NUM_WORKERS overrides."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    if any(".py" in arg for arg in config.args):
        return 0
    return WORKERS_FOR_THE_SUITE


# Session fixtures that start a server for a few tests in several modules (not shared_server, which
# the many quick tests use): their tests are marked slow and kept on one worker, like a module's.
SESSION_SERVERS_OF_THEIR_OWN = ("debug_server", "switches_off_server", "operator_keys_server")
_STARTS_SERVER = ("server_of_its_own(", "KettaProcess(", "start_ketta(", "subprocess.Popen(")
_fixture_starts_server: dict[object, bool] = {}


def _starts_a_server(func: object) -> bool:
    """Whether a fixture function starts a server of its own (read from its source, cached)."""
    if func not in _fixture_starts_server:
        try:
            source = inspect.getsource(func)  # type: ignore[arg-type]
        except (OSError, TypeError):
            source = ""
        _fixture_starts_server[func] = any(call in source for call in _STARTS_SERVER)
    return _fixture_starts_server[func]


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks from fixtures, and the order the workers take tests in.

    - ``slow``: the test uses ``start_ketta``, a module/class-scoped fixture that starts a server, or
      one of the SESSION_SERVERS_OF_THEIR_OWN.
    - ``xdist_group(<module>)``: the test uses a module/class-scoped fixture: that module's tests run
      on one worker, so the fixture is set up once; ``xdist_group(<fixture>)`` for a session server of
      its own (its tests, from any module, on one worker).
    - order: LONGEST_FIRST, then tests that start servers, then the rest (stable otherwise).
    """
    rank: dict[str, int] = {}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        names = info.names_closure if info else []
        defs = [d for name in names for d in (info.name2fixturedefs.get(name) or ())[-1:]]
        scoped = [d for d in defs if d.scope in ("module", "class", "package")]
        session_server = next((name for name in SESSION_SERVERS_OF_THEIR_OWN if name in names), None)
        own_server = "start_ketta" in names or session_server is not None or any(_starts_a_server(d.func) for d in scoped)
        if own_server and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
        if session_server and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(session_server))
        if scoped and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
        longest = next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), None)
        rank[item.nodeid] = longest if longest is not None else (len(LONGEST_FIRST) if own_server else len(LONGEST_FIRST) + 1)
    items.sort(key=lambda item: rank[item.nodeid])


class _GroupsThatXdistSees:
    """pytest 9 reads a node's id from ``item._id``; xdist 3.8 writes its ``@group`` suffix to the
    old ``item._nodeid``, which nothing reads, so the controller saw no groups at all and spread a
    module's tests (and its server) over every worker. Registered on workers: copy the suffix over."""

    @pytest.hookimpl(trylast=True)  # after xdist's worker hook added the suffix
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        from _pytest.nodeid import NodeId

        for item in items:
            grouped = item.__dict__.get("_nodeid")
            if isinstance(grouped, str) and grouped != item.nodeid:
                item._id = NodeId.parse(grouped)  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """How long the run took, for the README's figure (the controller's wall clock, workers included)."""
    if hasattr(config, "workerinput") or config.option.collectonly:
        return
    workers = getattr(config.option, "numprocesses", 0) or 0
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime  # workers, servers, CLIs (not PostgreSQL)
    terminalreporter.write_line(
        f"Ketta test suite: {time.monotonic() - _STARTED:.0f} s wall, {cpu:.0f} s CPU, {workers or 'no'} parallel worker(s), "
        f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}, network: {loopback_only.state}"
    )

# Env vars a developer's shell may carry that would change what a test server does.
_SCRUBBED_PREFIXES = ("LETTA_", "KETTA_", "OPENAI_", "ANTHROPIC_", "GEMINI_", "OLLAMA_", "MOONSHOT_", "KIMI_", "GROQ_",
                      "TOGETHER_", "DEEPSEEK_", "XAI_", "MISTRAL_", "AZURE_", "OPENROUTER_", "VLLM_")


@pytest.fixture(scope="session")
def pg_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server with pgvector: LETTA_PG_URI's if set, else an embedded one."""
    external = os.environ.get("LETTA_PG_URI")
    if external:
        yield external
        return
    server = EmbeddedPostgres(home=tmp_path_factory.mktemp("pg"))
    uri = server.start()
    yield uri
    server.stop()


@pytest.fixture
def make_database(pg_uri: str) -> Iterator[Callable[[], str]]:
    """Factory of empty databases on the test server (dropped afterwards); returns their URIs."""
    admin = sa.create_engine(sync_url(with_database(pg_uri, "postgres")), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    made: list[str] = []

    def make() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return with_database(pg_uri, name)

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_uri(make_database: Callable[[], str]) -> str:
    """One empty database for this test."""
    return make_database()


# The server token every test server is started with (LETTA_SERVER_PASSWORD); test requests send
# it through ``KettaProcess.headers`` / ``KettaProcess.client()``.
TEST_TOKEN = "ketta-test-token-0123456789"


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env["LETTA_SERVER_PASSWORD"] = TEST_TOKEN
    env["KETTA_ALLOW_PRIVATE_HOSTS"] = LOOPBACK_ALLOWED  # the local mock LLMs
    env.update(overrides)
    return env


class KettaProcess:
    """A ``ketta server`` subprocess on a free port; ``stop()`` sends SIGTERM like a user would."""

    def __init__(self, env: dict[str, str], log_path: Path, args: list[str] | None = None,
                 ketta: list[str] | None = None, host: str = "127.0.0.1", token: str | None = None, fork: bool = True):
        """``ketta``: the command that runs Ketta (default: this interpreter's ``-m ketta``); ``fork=False``:
        a plain subprocess even where the zygote could fork it (a test that reads /proc/<pid>/environ)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.db_uri = env.get("LETTA_PG_URI", "")
        self.token = token if token is not None else env.get("LETTA_SERVER_PASSWORD", "")
        self._log = open(log_path, "ab")
        command = [*(ketta or [sys.executable, "-m", "ketta"]), "server", "--host", host, "--port", str(self.port), *(args or [])]
        # Forked from the zygote (tests/forked_servers.py) when it can be: ~6 s of CPU less per start.
        self.proc = forked_servers.popen(command, env, log_path.parent, self._log, fork=fork)

    @property
    def headers(self) -> dict[str, str]:
        """What every test request sends: the server token as a Bearer header."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kwargs: object) -> httpx.Client:
        """An HTTP client for this server that sends the token."""
        return httpx.Client(**{"base_url": self.url, "headers": self.headers, "timeout": 120, **kwargs})

    def wait_healthy(self, timeout_s: float = 900) -> float:
        """Seconds until /v1/health/ answers 200. The limit is generous: several workers starting servers
        at once on a 2-core machine shared with other work took over 300 s (a start is ~20 s of CPU)."""
        start = time.monotonic()
        # One client for every poll: ``httpx.get`` builds a client (and its TLS context) per call,
        # ~20-45 ms of CPU each, four times a second for the whole start (~2-6 s of CPU per start).
        with httpx.Client(timeout=2) as poller:
            while time.monotonic() - start < timeout_s:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"ketta server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if poller.get(f"{self.url}/v1/health/").status_code == 200:
                        return time.monotonic() - start
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
        raise TimeoutError(f"ketta server not healthy after {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_ketta(tmp_path: Path) -> Iterator[Callable[..., KettaProcess]]:
    """Factory: start a ketta server with a clean env plus overrides; stopped after the test."""
    started: list[KettaProcess] = []

    def start(env: dict[str, str] | None = None, wait: bool = True, args: list[str] | None = None) -> KettaProcess:
        overrides = {"KETTA_HOME": str(tmp_path / "home"), **(env or {})}
        proc = KettaProcess(clean_env(**overrides), tmp_path / f"server{len(started)}.log", args)
        started.append(proc)
        if wait:
            proc.wait_healthy()
        return proc

    yield start
    for proc in started:
        proc.stop()


@contextlib.contextmanager
def own_database(pg_uri: str, prefix: str) -> Iterator[str]:
    """A new database on the test PostgreSQL for a session- or module-long server; dropped (even
    with connections left) afterwards. Yields its URI."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(sync_url(with_database(pg_uri, "postgres")), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(pg_uri, name)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def server_of_its_own(pg_uri: str, home: Path, prefix: str, **env: str) -> Iterator[KettaProcess]:
    """A healthy ketta server on a new database of its own (session and module fixtures); stopped,
    and its database dropped, afterwards."""
    with own_database(pg_uri, prefix) as db_uri:
        proc = KettaProcess(clean_env(KETTA_HOME=str(home), LETTA_PG_URI=db_uri, **env), home / "server.log")
        try:
            proc.wait_healthy()
            yield proc
        finally:
            proc.stop()


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory, pg_uri: str) -> Iterator[KettaProcess]:
    """One Ketta server for the many API tests (each test uses its own provider names)."""
    fallback_demo_port = free_port()
    with server_of_its_own(
        pg_uri, tmp_path_factory.mktemp("shared-home"), "shared",
        KETTA_ENV_KEY_FALLBACK="true",  # off by default; on here for the fallback tests
        KETTA_FALLBACK_DEMO_API_KEY="sk-from-env",  # env fallback for a provider named "ketta fallback demo"
        # ... sent only to its own endpoint: a mock on this port (MockOpenAI(port=shared_server.fallback_demo_port))
        KETTA_FALLBACK_DEMO_API_BASE=f"http://127.0.0.1:{fallback_demo_port}/v1",
        KETTA_STORED_WINS_API_KEY="sk-env-must-lose",  # a provider named "ketta stored wins" stores its own key
    ) as proc:
        proc.fallback_demo_port = fallback_demo_port  # type: ignore[attr-defined]
        yield proc


@pytest.fixture(scope="session")
def switches_off_server(tmp_path_factory: pytest.TempPathFactory, pg_uri: str) -> Iterator[KettaProcess]:
    """One server with several of Ketta's switches off, for the tests that each check one switch
    (tests/test_settings_and_env.py, tests/test_provider_pools.py): KETTA_OFFLINE, KETTA_KIMI_PROVIDER,
    KETTA_ENV_KEY_FALLBACK (an env key ``NO_STORED_KEY_API_KEY`` it must not use) and
    KETTA_PROVIDER_POOLS, each independent of the others; HTTP(S) through a recording proxy
    (``.proxy``). Its tests are marked ``slow`` and kept on one worker at collection."""
    proxy = RecordingProxy()
    try:
        with server_of_its_own(
            pg_uri, tmp_path_factory.mktemp("switches-off-home"), "switchesoff", KETTA_LOG_LEVEL="info", **proxy.env(),
            KETTA_OFFLINE="false", KETTA_KIMI_PROVIDER="false", KETTA_ENV_KEY_FALLBACK="false", KETTA_PROVIDER_POOLS="false",
            NO_STORED_KEY_API_KEY="sk-env-fallback-is-off",
        ) as proc:
            proc.proxy = proxy  # type: ignore[attr-defined]
            yield proc
    finally:
        proxy.close()


@pytest.fixture(scope="session")
def debug_server(tmp_path_factory: pytest.TempPathFactory, pg_uri: str) -> Iterator[KettaProcess]:
    """A server logging at debug level (Letta's debug mode and logging, Ketta's log level), on a
    database and a HOME of its own (``.user_home``, where Letta writes its log files), for the tests
    that a secret appears in no log line (tests/test_auth.py, tests/test_redaction.py); its tests are
    marked ``slow`` and kept on one worker at collection. Its output is unbuffered, so every line is in the log when read. A
    test appends to ``.never_logged`` what its output must still not hold after the stop (the lines
    logged while shutting down): checked when the session ends, an error there names it."""
    root = tmp_path_factory.mktemp("debug-server")
    user_home = root / "user-home"
    with server_of_its_own(
        pg_uri, root, "debug", LETTA_DEBUG="true", LETTA_LOGGING_DEBUG="true", LETTA_LOGGING_LOG_LEVEL="DEBUG",
        KETTA_LOG_LEVEL="debug", HOME=str(user_home), PYTHONUNBUFFERED="1",
    ) as proc:
        proc.user_home = user_home  # type: ignore[attr-defined]
        proc.never_logged = []  # type: ignore[attr-defined]
        yield proc
        proc.stop()
        logs = {"server output": proc.log_text()}
        for path in [*user_home.rglob("*.log"), *root.glob("*.log")]:
            logs[str(path)] = path.read_text(errors="replace")
        for where, text in logs.items():
            found = [line for line in text.splitlines() if any(secret in line for secret in proc.never_logged)]
            assert found == [], f"after the debug server stopped, a secret in {where}: {found[:5]}"


@pytest.fixture(scope="session")
def operator_endpoint() -> Iterator[RecordingEndpoint]:
    """The operator's own Azure endpoint (AZURE_BASE_URL of ``operator_keys_server``), where Letta would
    spend AZURE_API_KEY."""
    endpoint = RecordingEndpoint(port=free_port())
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="session")
def operator_keys_server(tmp_path_factory: pytest.TempPathFactory, pg_uri: str, operator_endpoint: RecordingEndpoint) -> Iterator[KettaProcess]:
    """A server whose operator set every key Letta reads (``operator_env.OPERATOR_KEYS``), the env-key
    fallback off (the default), Azure's base URL at ``operator_endpoint`` and OPENAI_API_BASE at a port
    of its own (``.openai_own_port``, where a test may run a mock) (tests/test_operator_keys.py,
    tests/test_identity_and_env_keys.py)."""
    own_port = free_port()
    with server_of_its_own(pg_uri, tmp_path_factory.mktemp("opkeys-home"), "opkeys", **OPERATOR_KEYS,
                           OPENAI_API_BASE=f"http://127.0.0.1:{own_port}/v1",
                           AZURE_BASE_URL=f"{operator_endpoint.url}/operator-azure/openai/v1", AZURE_API_VERSION="2024-09-01-preview",
                           AWS_DEFAULT_REGION="us-east-1") as proc:
        proc.openai_own_port = own_port  # type: ignore[attr-defined]
        yield proc


@pytest.fixture(scope="session")
def shared_db(shared_server: KettaProcess) -> Iterator[sa.Engine]:
    """A synchronous engine on the shared server's database, for asserting on rows."""
    engine = sa.create_engine(sync_url(shared_server.db_uri), poolclass=sa.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def api(shared_server: KettaProcess) -> Iterator[httpx.Client]:
    """A client of the shared server that sends the token."""
    with shared_server.client() as client:
        yield client


@pytest.fixture
def llm() -> Iterator[MockOpenAI]:
    """A mock OpenAI-compatible LLM of this test's own (nothing another test sent is in its
    requests); it accepts the key 'sk-good'."""
    with MockOpenAI(api_key="sk-good") as mock:
        yield mock


def unique(prefix: str) -> str:
    """A provider (or agent) name no other test uses, on the shared server."""
    return f"{prefix} {uuid.uuid4().hex[:6]}"


class RecordingProxy:
    """A proxy on 127.0.0.1 that records the first line of every connection and forwards nothing:
    point HTTP(S)_PROXY at it to see what a process tried to reach, with nothing leaving the machine."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        recorded = self.requests

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(4096).decode("latin-1").strip()
                if line:
                    recorded.append(line)
                self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def env(self) -> dict[str, str]:
        """Proxy variables for a child process; loopback stays direct."""
        return {"HTTP_PROXY": self.url, "HTTPS_PROXY": self.url, "http_proxy": self.url, "https_proxy": self.url,
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def recording_proxy() -> Iterator[RecordingProxy]:
    proxy = RecordingProxy()
    yield proxy
    proxy.close()
