"""Key rotation end to end: secrets stored through a Ketta server over REST, `ketta keys rotate`,
refused and accepted starts, and two servers on one database through a rolling rotation.

Both tests read one rolling rotation (the module fixture ``rolling``: four server starts, one
``ketta keys rotate``), whose database also holds every kind of secret the first test follows:
a server start costs ~10 s of CPU, and the first test's own two starts checked nothing the
rolling rotation's do not (its refused start, which stops before Letta is loaded, is its own).

The LLM endpoints are local mocks that accept only their provider's key, so a message that
succeeds proves the server decrypted the right stored key.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import httpx
import pytest
import sqlalchemy as sa

from conftest import KettaProcess, clean_env, own_database
from ketta.security.keyring import cipher, stored
from ketta.db.database import sync_url
from mock_openai import MockOpenAI

KEY_A = "rotation-key-A-" + uuid.uuid4().hex
KEY_B = "rotation-key-B-" + uuid.uuid4().hex
LLM_KEY_1 = "sk-first-provider-key"
LLM_KEY_2 = "sk-second-provider-key"
AGENT_SECRET = "agent-secret-value"
SANDBOX_SECRET = "sandbox-secret-value"


def enc_values(db_uri: str) -> dict[tuple[str, str, str], str]:
    """Every non-null *_enc cell of the database, as stored."""
    engine = sa.create_engine(sync_url(db_uri), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return {(v.table, v.column, v.row_id): v.value for v in stored.read_values(conn, stored.encrypted_columns(conn))}
    finally:
        engine.dispose()


def decrypted(values: dict[tuple[str, str, str], str], key: str) -> dict[tuple[str, str, str], str]:
    return {where: cipher.decrypt(value, key) for where, value in values.items()}


def keys_cli(db_uri: str, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ketta", "keys", *args], capture_output=True, text=True, timeout=600,
                          env=clean_env(LETTA_PG_URI=db_uri, KETTA_HOME=str(home), **env))


def add_provider(api: httpx.Client, name: str, llm: MockOpenAI, key: str) -> None:
    created = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": key, "base_url": llm.base_url})
    assert created.status_code == 200, created.text


def add_agent(api: httpx.Client, provider: str, **extra: Any) -> str:
    created = api.post("/v1/agents/", json={"model": f"{provider}/mock-chat-1", "embedding": f"{provider}/text-embedding-3-small",
                                            "agent_type": "letta_v1_agent", **extra})
    assert created.status_code == 200, created.text
    return created.json()["id"]


def send(api: httpx.Client, agent_id: str, text: str = "hi") -> httpx.Response:
    return api.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": text}]})


@pytest.fixture(scope="module")
def rolling(tmp_path_factory: pytest.TempPathFactory, pg_uri: str) -> Iterator[SimpleNamespace]:
    """Two servers on one database under key A, restarted one by one on keyring [B, A] under load,
    then the database rotated to B while both serve; yields what the two tests check, both
    servers still running on [B, A].

    Stored first under A, through s1 over REST: two providers (mocks accepting only their own key),
    an agent's secret and a sandbox env var (MCP servers, whose tokens are rotated too, cannot be
    created here: Letta refuses non-public URLs and syncs tools from a public one;
    tests/test_keyring.py stores them with SQL), and the provider of the load's three agents."""
    root = tmp_path_factory.mktemp("rolling")
    started: list[KettaProcess] = []

    def start(name: str, key: str, previous: str = "") -> KettaProcess:
        env = {"LETTA_PG_URI": db_uri, "KETTA_HOME": str(root / f"home-{name}"), "LETTA_ENCRYPTION_KEY": key}
        if previous:
            env["KETTA_PREVIOUS_ENCRYPTION_KEYS"] = previous
        server = KettaProcess(clean_env(**env), root / f"server{len(started)}-{name}.log")
        started.append(server)
        server.wait_healthy(timeout_s=300)  # two servers and a load on a shared machine start slowly
        return server

    with own_database(pg_uri, "rolling") as db_uri, MockOpenAI(api_key=LLM_KEY_1) as llm, \
            MockOpenAI(api_key=LLM_KEY_1) as llm1, MockOpenAI(api_key=LLM_KEY_2) as llm2:
        try:
            s1, s2 = start("s1", KEY_A), start("s2", KEY_A)
            api = s1.client()
            add_provider(api, "first", llm1, LLM_KEY_1)
            add_provider(api, "second", llm2, LLM_KEY_2)
            agent1 = add_agent(api, "first", secrets={"AGENT_SECRET": AGENT_SECRET})
            agent2 = add_agent(api, "second")
            sandbox = api.post("/v1/sandbox-config/local/default")
            assert sandbox.status_code == 200, sandbox.text
            env_var = api.post(f"/v1/sandbox-config/{sandbox.json()['id']}/environment-variable",
                               json={"key": "SANDBOX_SECRET", "value": SANDBOX_SECRET})
            assert env_var.status_code == 200, env_var.text
            first_message = send(api, agent1).status_code
            add_provider(api, "rolling", llm, LLM_KEY_1)
            agents = [add_agent(api, "rolling") for _ in range(3)]
            under_a = enc_values(db_uri)  # every secret, stored under A

            with Load(agents) as load:
                load.add("s1", s1)
                load.add("s2", s2)
                load.wait_for_successes("s1", 1)
                load.wait_for_successes("s2", 1)

                def restart_on_keyring_b_a(name: str, old: KettaProcess) -> KettaProcess:
                    """``old`` out of the load, stopped, started again on keyring [B, A], back in the load."""
                    load.drain(name)
                    old.stop()
                    server = start(name, KEY_B, KEY_A)
                    load.add(name, server)
                    return server

                # s2 restarted on keyring [B, A] while s1 keeps running on [A]: both answer.
                s2 = restart_on_keyring_b_a("s2", s2)
                load.wait_for_successes("s2", 2)
                load.wait_for_successes("s1", 2)

                # s1 too, then the database is rotated to B while both serve.
                s1 = restart_on_keyring_b_a("s1", s1)
                load.wait_for_successes("s1", 1)
                started_at = time.monotonic()
                rotated = keys_cli(db_uri, root / "cli-home", "rotate", "--new-key", KEY_B,
                                   LETTA_ENCRYPTION_KEY=KEY_B, KETTA_PREVIOUS_ENCRYPTION_KEYS=KEY_A)
                assert rotated.returncode == 0, rotated.stderr
                print(f"rotation under load: {time.monotonic() - started_at:.1f}s; {rotated.stdout.strip()}")
                load.wait_for_successes("s1", 2)
                load.wait_for_successes("s2", 2)
            print(f"messages answered: {load.ok}, failed: {len(load.failures)}")
            yield SimpleNamespace(db_uri=db_uri, s1=s1, s2=s2, servers=started, llm=llm, llm1=llm1, llm2=llm2,
                                  agent1=agent1, agent2=agent2, sandbox_id=sandbox.json()["id"], first_message=first_message,
                                  under_a=under_a, rotated=rotated, after=enc_values(db_uri), load=load)
        finally:
            for server in started:
                server.stop()


@pytest.mark.slow
def test_rotation_keeps_every_secret_and_refuses_a_start_with_the_old_key(
    rolling: SimpleNamespace, start_ketta: Callable[..., KettaProcess]
) -> None:
    """Every secret stored under A (through s1 over REST, a message answered) decrypts under B
    after the rotation and no longer with A; a start with only A is refused; the servers on
    [B, A] read every secret and send each provider's own key."""
    assert rolling.first_message == 200
    before = rolling.under_a
    originals = decrypted(before, KEY_A)
    kinds = {(table, column) for table, column, _ in originals}
    assert {("providers", "api_key_enc"), ("agent_environment_variables", "value_enc"),
            ("sandbox_environment_variables", "value_enc")} <= kinds
    assert {LLM_KEY_1, LLM_KEY_2, AGENT_SECRET, SANDBOX_SECRET} <= set(originals.values())

    assert f"re-encrypted {len(before)} stored values" in rolling.rotated.stdout

    # Every value decrypts under B to what it was; none is still readable with A.
    after = rolling.after
    assert after.keys() == before.keys()
    assert decrypted(after, KEY_B) == originals
    for value in after.values():
        with pytest.raises(ValueError):
            cipher.decrypt(value, KEY_A)

    # A start with only A is refused, in one line, before Letta is even loaded.
    refused = start_ketta(env={"LETTA_PG_URI": rolling.db_uri, "LETTA_ENCRYPTION_KEY": KEY_A, "KETTA_LOG_LEVEL": "info"},
                          wait=False)
    assert refused.proc.wait(timeout=120) == 1
    output = refused.log_text()
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert "cannot decrypt this database's stored secrets" in errors[0] and "LETTA_ENCRYPTION_KEY" in errors[0]
    assert "Ketta applied" not in output and KEY_A not in output and KEY_B not in output
    assert "Encryption key:" not in output  # refused before the line an accepted start logs

    # A start with B (keyring B, A) works, and each agent's call carries its provider's key.
    server = rolling.s1
    api = server.client()
    block = f"key:      LETTA_ENCRYPTION_KEY + 1 previous (key id {cipher.fingerprint(KEY_B)}); a database backup cannot be read"
    assert block in server.log_text()
    llm1, llm2 = rolling.llm1, rolling.llm2
    llm1.clear(), llm2.clear()
    assert send(api, rolling.agent1).status_code == 200
    assert send(api, rolling.agent2).status_code == 200
    assert [r.api_key for r in llm1.chat_requests()] == [LLM_KEY_1]
    assert [r.api_key for r in llm2.chat_requests()] == [LLM_KEY_2]
    secrets = api.get(f"/v1/agents/{rolling.agent1}").json()["secrets"]
    assert [(s["key"], s["value"]) for s in secrets] == [("AGENT_SECRET", AGENT_SECRET)]
    env_vars = api.get(f"/v1/sandbox-config/{rolling.sandbox_id}/environment-variable").json()
    assert [(v["key"], v["value"]) for v in env_vars] == [("SANDBOX_SECRET", SANDBOX_SECRET)]
    for each in rolling.servers:
        assert KEY_A not in each.log_text() and KEY_B not in each.log_text()


class Load:
    """A few client threads sending messages to whichever servers are in rotation, like a load
    balancer that drains a replica before it is restarted; every failure is recorded."""

    def __init__(self, agents: list[str], threads: int = 3, pause_s: float = 2.0):
        """``pause_s`` between a thread's requests: requests stay in flight through every restart and
        the rotation (three threads: about one request a second), without the load taking the
        machine's CPU from the servers starting beside it (at 1 s, ~100 messages a run, ~12 s of CPU)."""
        self.agents = agents
        self.live: dict[str, KettaProcess] = {}
        self.in_flight: dict[str, int] = {}
        self.ok: dict[str, int] = {}
        self.failures: list[str] = []
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._pause_s = pause_s
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def add(self, name: str, server: KettaProcess) -> None:
        with self._lock:
            self.live[name] = server
            self.in_flight.setdefault(name, 0)

    def drain(self, name: str) -> None:
        """Take a server out of rotation and wait for its requests in flight."""
        with self._lock:
            self.live.pop(name)
            self._lock.wait_for(lambda: self.in_flight[name] == 0, timeout=300)

    def _run(self, index: int) -> None:
        turn = index
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                with self._lock:
                    names = sorted(self.live)
                    if not names:
                        self._lock.wait(0.1)
                        continue
                    name = names[turn % len(names)]
                    server = self.live[name]
                    self.in_flight[name] += 1
                turn += 1
                agent = self.agents[index % len(self.agents)]
                try:
                    response = client.post(f"{server.url}/v1/agents/{agent}/messages", headers=server.headers,
                                           json={"messages": [{"role": "user", "content": f"load {turn}"}]})
                    if response.status_code != 200:
                        self.failures.append(f"{name}: {response.status_code} {response.text[:300]}")
                    else:
                        self.ok[name] = self.ok.get(name, 0) + 1
                except httpx.HTTPError as exc:
                    self.failures.append(f"{name}: {exc!r}")
                finally:
                    with self._lock:
                        self.in_flight[name] -= 1
                        self._lock.notify_all()
                self._stop.wait(self._pause_s)

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(180)

    def wait_for_successes(self, name: str, more: int, timeout_s: float = 300) -> None:
        """Block until ``name`` answered ``more`` further messages successfully."""
        target = self.ok.get(name, 0) + more
        deadline = time.monotonic() + timeout_s
        while self.ok.get(name, 0) < target:
            assert time.monotonic() < deadline, f"{name} answered no message in {timeout_s}s; failures: {self.failures}"
            assert not self.failures, self.failures
            time.sleep(0.2)


@pytest.mark.slow
def test_rolling_rotation_of_two_servers_on_one_database_under_load(rolling: SimpleNamespace) -> None:
    """s1 and s2 on key A under a load of messages; s2 restarted on [B, A] while s1 serves on A, then
    s1; the database rotated to B while both serve (the fixture waits for answers from each server
    at every step): no request failed, every call carried the provider's key, every stored value is under B."""
    assert rolling.rotated.returncode == 0, rolling.rotated.stderr
    assert rolling.load.failures == []
    assert rolling.load.ok.get("s1", 0) >= 5 and rolling.load.ok.get("s2", 0) >= 5, rolling.load.ok
    assert all(r.api_key == LLM_KEY_1 for r in rolling.llm.chat_requests())
    assert set(decrypted(rolling.after, KEY_B).values()) == {LLM_KEY_1, LLM_KEY_2, AGENT_SECRET, SANDBOX_SECRET}
