"""The ASGI factory: ``uvicorn --factory ketta.app:create_app`` with several workers on one database."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import httpx
import sqlalchemy as sa

from conftest import TEST_TOKEN, clean_env, free_port
from ketta.db import migrations
from ketta.db.database import sync_url
from mock_openai import MockOpenAI


AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
# A loaded 2-core machine imports Letta twice at once: generous, but every wait polls a condition.
READY_S = 400


def started_workers(log_text: str) -> set[str]:
    """Pids of worker processes whose Letta lifespan completed."""
    return set(re.findall(r"\[Worker (\d+)\] Lifespan startup completed", log_text))


def wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + READY_S
    while not condition():
        assert proc.poll() is None, f"uvicorn exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} not within {READY_S} s:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.25)  # poll interval


def healthy(poller: httpx.Client, url: str) -> bool:
    """``poller``: one client for every poll (``httpx.get`` builds one, and a TLS context, per call: ~20-45 ms of CPU)."""
    try:
        return poller.get(f"{url}/v1/health/").status_code == 200
    except httpx.HTTPError:
        return False


def test_uvicorn_factory_with_two_workers_shares_one_database(database_uri: str, tmp_path) -> None:
    port = free_port()
    # KETTA_LOG_LEVEL=info: Letta's "Lifespan startup completed" per worker and alembic's
    # "Running upgrade A -> B" per revision applied reach the console.
    env = clean_env(LETTA_PG_URI=database_uri, KETTA_HOME=str(tmp_path / "home"), KETTA_LOG_LEVEL="info")
    command = [sys.executable, "-m", "uvicorn", "--factory", "ketta.app:create_app", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "2"]
    log_path = tmp_path / "uvicorn.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=5) as poller:
            wait_for(lambda: healthy(poller, url), "a healthy worker", proc, log_path)
        wait_for(lambda: len(started_workers(log_path.read_text(errors="replace"))) == 2, "both workers' lifespans", proc, log_path)
        log_text = log_path.read_text(errors="replace")

        # Both workers ran create_app on the empty database; the schema was applied once: each
        # revision's upgrade ran exactly once (the second worker waited for the advisory lock,
        # then found the database at head), ending at head, and one version row.
        applied = Counter(re.findall(r"Running upgrade (\S*) ?-> (\w+)", log_text))
        assert applied, log_text[-3000:]
        assert set(applied.values()) == {1}, f"a revision was applied more than once: {applied}"
        targets = [target for _, target in applied]
        assert targets[-1] == migrations.HEAD_REVISION and [f for f, _ in applied][0] == ""
        versions = list((Path(migrations.__file__).parent / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
        assert len(applied) == len(versions), f"every revision once: {applied}"
        assert migrations.current(database_uri) == migrations.HEAD_REVISION
        engine = sa.create_engine(sync_url(database_uri), poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text(f"SELECT count(*) FROM {migrations.VERSION_TABLE}")).scalar() == 1
        finally:
            engine.dispose()

        # Whatever worker answers, a provider written through one is seen by all (one database).
        with MockOpenAI() as llm:
            body = {"name": "shared", "provider_type": "openai", "api_key": "sk-x", "base_url": llm.base_url}
            created = httpx.post(f"{url}/v1/providers/", headers=AUTH, json=body, timeout=120)
        assert created.status_code == 200, created.text
        for _ in range(6):
            assert [p["name"] for p in httpx.get(f"{url}/v1/providers/", headers=AUTH, timeout=120).json()] == ["shared"]
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
