"""Nothing outside KETTA_HOME (ketta/core/home.py): Letta's files move in, secrets are 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import KettaProcess
from test_agent_e2e import PROVIDER_KEY, create_provider, llm, marker, model_handles  # noqa: F401 - llm is a fixture

SECRETS = ("encryption_key", "server_token", "pg_password", "postgres.log", "letta/logs/Letta.log")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
def test_a_start_and_a_message_write_nothing_outside_ketta_home(start_ketta: Callable[..., KettaProcess], tmp_path: Path,
                                                               llm) -> None:  # noqa: F811
    user_home = tmp_path / "user-home"
    user_home.mkdir()
    ketta_home = user_home / ".ketta"  # the default KETTA_HOME of this HOME
    marker_file = tmp_path / "marker"
    marker_file.touch()
    past = time.time() - 2  # strictly older than anything the server writes, whatever the clock's resolution
    os.utime(marker_file, (past, past))
    before_cwd = sorted(p.name for p in tmp_path.iterdir())

    server = start_ketta(env={"HOME": str(user_home), "KETTA_HOME": str(ketta_home), "LETTA_SERVER_PASSWORD": ""})
    server.token = (ketta_home / "server_token").read_text().strip()
    name = f"home-{marker()}"
    create_provider(server, name, llm)
    chat, embedding = model_handles(server, name, llm.base_url)
    with server.client() as api:
        agent = api.post("/v1/agents/", json={"model": chat, "embedding": embedding, "agent_type": "letta_v1_agent"})
        assert agent.status_code == 200, agent.text
        said = marker()
        answer = api.post(f"/v1/agents/{agent.json()['id']}/messages", json={"messages": [{"role": "user", "content": said}]})
        assert answer.status_code == 200 and said in answer.text, answer.text
    assert llm.chat_requests(), "the message reached the mock LLM"
    server.stop()

    found = subprocess.run(["find", str(user_home), "-newer", str(marker_file), "-not", "-path", f"{ketta_home}*"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert found == [str(user_home)] or found == [], found  # HOME itself changes only by .ketta being made
    after_cwd = sorted(p.name for p in tmp_path.iterdir())
    assert set(after_cwd) - set(before_cwd) - {"server0.log", "user-home"} == set(), after_cwd
    assert not (tmp_path / "openapi_letta.json").exists()
    assert not (user_home / ".letta").exists()

    # KETTA_HOME private (traversable only, when root runs the embedded PostgreSQL as its own user).
    assert mode(ketta_home) == (0o711 if os.geteuid() == 0 else 0o700)
    for secret in SECRETS:
        assert mode(ketta_home / secret) == 0o600, secret
    readable = [str(p) for p in ketta_home.rglob("*") if p.is_file() and "pgdata" not in p.parts and mode(p) & 0o077]
    assert readable == []
    assert not (ketta_home / "letta" / "openapi_letta.json").exists(), "built at import by stock Letta only (ketta.app skips it)"
    # The database password is in pg_password only; the token and the provider key in no file.
    password = (ketta_home / "pg_password").read_text().strip()
    for path in ketta_home.rglob("*"):
        if path.is_file() and "pgdata" not in path.parts and path.name != "pg_password":
            text = path.read_bytes()
            assert password.encode() not in text, path
            assert server.token.encode() not in text or path.name == "server_token", path
            assert PROVIDER_KEY.encode() not in text, path
