"""Letta's database variables: LETTA_PG_URI or the LETTA_PG_* parts, never a silent embedded fallback.

Configuration mistakes are reported in one line, with a non-zero exit, before the slow start
(importing Letta); the password is never printed.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from conftest import REPO, KettaProcess, clean_env, free_port
from ketta.db.database import sync_url

PASSWORD = "pw-not-to-be-printed"


def parts_of(uri: str) -> dict[str, str]:
    parts = urlsplit(uri)
    return {"LETTA_PG_HOST": parts.hostname or "", "LETTA_PG_PORT": str(parts.port), "LETTA_PG_USER": parts.username or "",
            "LETTA_PG_PASSWORD": parts.password or "", "LETTA_PG_DB": parts.path.lstrip("/")}


def start_failing(tmp_path: Path, **env: str) -> tuple[int, str, float]:
    """Run ``ketta server`` expecting a refusal; (exit code, output, seconds)."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "ketta", "server", "--host", "127.0.0.1", "--port", str(free_port())],
                            env=clean_env(KETTA_HOME=str(tmp_path / "home"), **env), cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    return result.returncode, (result.stdout + result.stderr).strip(), time.monotonic() - started


def assert_one_line_refusal(code: int, output: str, tmp_path: Path) -> None:
    assert code != 0
    assert len(output.splitlines()) == 1, output
    assert output.startswith("Error: ") and "Traceback" not in output
    assert PASSWORD not in output
    assert not (tmp_path / "home" / "pgdata").exists(), "no fallback to the embedded database"


def test_partial_letta_pg_parts_name_the_missing_ones(tmp_path: Path) -> None:
    code, output, _ = start_failing(tmp_path, LETTA_PG_HOST="127.0.0.1", LETTA_PG_PORT="5432", LETTA_PG_PASSWORD=PASSWORD)
    assert_one_line_refusal(code, output, tmp_path)
    assert "LETTA_PG_DB, LETTA_PG_USER not set" in output


@pytest.mark.parametrize("uri, reason", [
    (f"postgresql://letta:{PASSWORD}@db:port/letta", "bad port"),
    ("not a uri", "not a URI"),
    (f"mysql://letta:{PASSWORD}@db:3306/letta", "not PostgreSQL"),
    (f"postgresql://letta:{PASSWORD}@db:5432", "no database"),
    (f"postgres://letta:{PASSWORD}@db:5432/letta", "write 'postgresql://'"),
])
def test_malformed_uri_is_one_line(tmp_path: Path, uri: str, reason: str) -> None:
    code, output, _ = start_failing(tmp_path, LETTA_PG_URI=uri)
    assert_one_line_refusal(code, output, tmp_path)
    assert "LETTA_PG_URI" in output and reason in output


def test_parts_are_built_into_letta_uri_with_any_character_in_user_and_password(monkeypatch) -> None:
    from ketta.db.database import configured_uri

    for name in ("LETTA_PG_URI",):
        monkeypatch.delenv(name, raising=False)
    parts = {"LETTA_PG_HOST": "db.internal", "LETTA_PG_PORT": "6543", "LETTA_PG_USER": "me@corp",
             "LETTA_PG_PASSWORD": "p@ss:w/rd%41#?", "LETTA_PG_DB": "agents"}
    for name, value in parts.items():
        monkeypatch.setenv(name, value)
    uri, source = configured_uri()
    assert source == "LETTA_PG_HOST/PORT/USER/PASSWORD/DB"
    url = sa.engine.make_url(uri)
    assert url.drivername == "postgresql+pg8000", "Letta's own URI form"
    assert (url.username, url.password, url.host, url.port, url.database) == ("me@corp", "p@ss:w/rd%41#?", "db.internal", 6543, "agents")


def test_parts_naming_a_dead_port_is_one_line(tmp_path: Path) -> None:
    dead = free_port()
    code, output, _ = start_failing(tmp_path, LETTA_PG_HOST="127.0.0.1", LETTA_PG_PORT=str(dead), LETTA_PG_USER="letta",
                                    LETTA_PG_PASSWORD=PASSWORD, LETTA_PG_DB="letta")
    assert_one_line_refusal(code, output, tmp_path)
    assert f"127.0.0.1:{dead}" in output and "LETTA_PG_HOST/PORT/USER/PASSWORD/DB" in output


def test_port_in_use_is_reported_before_the_database_is_prepared(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "ketta", "server", "--host", "127.0.0.1", "--port", str(port)],
                                env=clean_env(KETTA_HOME=str(tmp_path / "home")), cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - started
    output = (result.stdout + result.stderr).strip()
    assert_one_line_refusal(result.returncode, output, tmp_path)  # no embedded PostgreSQL was even started
    assert f"Port {port} on 127.0.0.1 is in use" in output and "--port" in output
    assert elapsed < 10, f"refused after {elapsed:.1f}s: before the slow start"


@pytest.mark.slow
def test_letta_pg_parts_from_dotenv_and_env_name_the_database(tmp_path: Path, database_uri: str) -> None:
    """``.env`` in the working directory feeds Letta's variables too; the process environment wins."""
    parts = parts_of(database_uri)
    dead = free_port()
    (tmp_path / ".env").write_text(
        "".join(f"{k}={v}\n" for k, v in parts.items() if k != "LETTA_PG_PORT")
        + f"LETTA_PG_PORT={dead}\n"  # overridden by the process environment below
        + "KETTA_LOG_LEVEL=info\n"  # a Ketta setting from .env
    )
    env = clean_env(KETTA_HOME=str(tmp_path / "home"), LETTA_PG_PORT=parts["LETTA_PG_PORT"])
    server = KettaProcess(env, tmp_path / "server.log")  # cwd: tmp_path, where .env is
    try:
        server.wait_healthy()
        with server.client() as api:
            assert api.get("/v1/agents/").json() == []
    finally:
        server.stop()
    log = server.log_text()
    assert f"database: PostgreSQL {parts['LETTA_PG_HOST']}:{parts['LETTA_PG_PORT']}/{parts['LETTA_PG_DB']}" in log
    assert parts["LETTA_PG_PASSWORD"] not in log
    assert "Lifespan startup completed" in log, "KETTA_LOG_LEVEL=info from .env shows Letta's INFO lines"
    assert not (tmp_path / "home" / "pgdata").exists()
    engine = sa.create_engine(sync_url(database_uri), poolclass=sa.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM organizations")).scalar_one() == 1, "Letta's rows landed there"
        assert conn.execute(sa.text("SELECT version_num FROM ketta_alembic_version")).scalar_one()
    engine.dispose()
