"""``ketta server`` as a user runs it: versions, the embedded PostgreSQL, and database errors.

Extends tests/test_smoke.py (health on a LETTA_PG_URI server) with the default path: no
LETTA_PG_URI, so Ketta starts its own PostgreSQL under KETTA_HOME.
"""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import httpx
import pytest

from conftest import REPO, KettaProcess, clean_env, free_port

STOPPED_BY_SIGTERM = (0, 128 + signal.SIGTERM)  # clean exit, or SystemExit(143) after a clean shutdown


def postgres_processes(pgdata: Path) -> list[int]:
    """Pids of PostgreSQL server processes whose command line names ``pgdata`` (``-D <pgdata>``)."""
    pids = []
    for cmdline_file in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline_file.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"postgres") and str(pgdata).encode() in args:
            pids.append(int(cmdline_file.parent.name))
    return pids


def test_version_prints_ketta_and_letta_versions() -> None:
    result = subprocess.run([sys.executable, "-m", "ketta", "--version"], env=clean_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"ketta {version('ketta')}" in result.stdout
    assert f"letta {version('letta')}" in result.stdout
    assert version("letta") == "0.16.8"


@pytest.mark.slow
def test_embedded_postgres_serves_refuses_a_second_server_and_stops_on_sigterm(
    start_ketta: Callable[..., KettaProcess], tmp_path: Path
) -> None:
    home = tmp_path / "home"  # start_ketta's KETTA_HOME; LETTA_PG_URI is scrubbed from the env
    server = start_ketta()

    health = httpx.get(f"{server.url}/v1/health/", headers=server.headers)
    assert health.status_code == 200
    assert health.json()["version"] == "0.16.8"
    assert httpx.get(f"{server.url}/v1/agents/", headers=server.headers).json() == []
    pgdata = home / "pgdata"
    assert (pgdata / "PG_VERSION").is_file(), "the embedded PostgreSQL keeps its data under KETTA_HOME"
    assert postgres_processes(pgdata), "an embedded PostgreSQL runs on KETTA_HOME/pgdata"

    second = start_ketta(wait=False)
    second_code = second.proc.wait(timeout=120)
    assert second_code != 0
    refusal = second.log_text()
    assert str(home) in refusal and "in use" in refusal, refusal[-2000:]
    assert f"in use by the Ketta server on {server.url} (pid {server.proc.pid})" in refusal, "names the server's port, not its PostgreSQL's"
    assert "Traceback" not in refusal, "a clear message, not a stack trace"
    assert httpx.get(f"{server.url}/v1/health/", headers=server.headers).status_code == 200, "the first server is unharmed"

    assert server.stop() in STOPPED_BY_SIGTERM, server.log_tail()
    assert postgres_processes(pgdata) == [], "SIGTERM stops the embedded PostgreSQL"
    assert not (pgdata / "postmaster.pid").exists(), "PostgreSQL was shut down cleanly"
    assert (home / "server.lock").read_text() == "", "no pid or port left in the lock file of a stopped server"
    mode = stat.S_IMODE(home.stat().st_mode)
    after = subprocess.run([sys.executable, "-m", "ketta", "db", "current"], env=clean_env(KETTA_HOME=str(home)), cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert after.returncode == 1 and after.stdout == "", after.stdout + after.stderr
    assert after.stderr.startswith(f"Error: No Ketta server is running on KETTA_HOME={home}") and after.stderr.count("\n") == 1, after.stderr
    assert postgres_processes(pgdata) == [] and stat.S_IMODE(home.stat().st_mode) == mode, "nothing started, nothing loosened"


def test_unreachable_database_uri_exits_non_zero_with_a_clear_message(
    start_ketta: Callable[..., KettaProcess], tmp_path: Path
) -> None:
    dead_port = free_port()  # nothing listens there
    server = start_ketta(env={"LETTA_PG_URI": f"postgresql://letta:s3cret-pw@127.0.0.1:{dead_port}/letta"}, wait=False)
    code = server.proc.wait(timeout=120)
    output = server.log_text()
    assert code != 0
    assert f"127.0.0.1:{dead_port}" in output and "LETTA_PG_URI" in output, output[-2000:]
    assert "s3cret-pw" not in output, "the password is not printed"
    assert "Traceback" not in output, "a clear message, not a stack trace"
    assert not (tmp_path / "home" / "pgdata").exists(), "no embedded PostgreSQL when LETTA_PG_URI is set"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v1/health/", headers=server.headers)
