"""The ASGI factory: ``uvicorn --factory ketta.app:create_app`` with several workers on one database."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx
import sqlalchemy as sa

from conftest import TEST_TOKEN, clean_env, free_port
from ketta import migrations
from ketta.database import sync_url
from mock_openai import MockOpenAI


AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


def started_workers(log_text: str) -> set[str]:
    """Pids of worker processes whose Letta lifespan completed."""
    return set(re.findall(r"\[Worker (\d+)\] Lifespan startup completed", log_text))


def test_uvicorn_factory_with_two_workers_shares_one_database(database_uri: str, tmp_path) -> None:
    port = free_port()
    # KETTA_LOG_LEVEL=info: the test counts workers by Letta's INFO line "Lifespan startup completed".
    env = clean_env(LETTA_PG_URI=database_uri, KETTA_HOME=str(tmp_path / "home"), KETTA_LOG_LEVEL="info")
    command = [sys.executable, "-m", "uvicorn", "--factory", "ketta.app:create_app", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "2"]
    log = open(tmp_path / "uvicorn.log", "wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "uvicorn.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "workers not healthy in time"
            try:
                if httpx.get(f"{url}/v1/health/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        # Both workers ran create_app: the schema was applied once, under the advisory lock.
        assert migrations.current(database_uri) is not None
        log_text = (tmp_path / "uvicorn.log").read_text()
        deadline = time.monotonic() + 120
        while len(started_workers(log_text)) < 2 and time.monotonic() < deadline:
            time.sleep(1)
            log_text = (tmp_path / "uvicorn.log").read_text()
        assert len(started_workers(log_text)) == 2
        # Whatever worker answers, a provider written through one is seen by all (one database).
        with MockOpenAI() as llm:
            body = {"name": "shared", "provider_type": "openai", "api_key": "sk-x", "base_url": llm.base_url}
            created = httpx.post(f"{url}/v1/providers/", headers=AUTH, json=body, timeout=60)
        assert created.status_code == 200, created.text
        for _ in range(6):
            assert [p["name"] for p in httpx.get(f"{url}/v1/providers/", headers=AUTH, timeout=30).json()] == ["shared"]
        engine = sa.create_engine(sync_url(database_uri), poolclass=sa.NullPool)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM ketta_alembic_version")).scalar() == 1
        engine.dispose()
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
