"""A wheel built from a clean checkout installs and serves, as the container image runs it.

One slow test: build the wheel, install it into a new venv with the constraints (PostgreSQL
drivers from binary wheels only, no ``pg_config`` and no compiler on PATH: pip resolves every
dependency, and the ones the suite's venv already holds at the very versions resolved are shared
with the new venv rather than unpacked and compiled a second time, ~60 s of CPU), then run the
Dockerfile's command, ``ketta server --host 0.0.0.0``, from a directory outside the checkout,
with the container's configuration: ``LETTA_PG_*`` parts naming the database and the server
token read from a secret file (``LETTA_SERVER_PASSWORD_FILE``). pip's cache is reused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa

import loopback_only
from conftest import REPO, TEST_TOKEN, KettaProcess, clean_env
from ketta.db.database import sync_url

BINARY_ONLY = "asyncpg,pg8000,pgvector,psycopg2-binary,psycopg2"  # psycopg2 itself has no wheel: must not be needed


def checkout_copy(dest: Path) -> Path:
    """The files a fresh clone has (tracked and new, minus ignored), as in this working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def installed_version(name: str) -> str | None:
    """The version of a distribution in the suite's venv, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_wheel_installs_without_pg_config_and_serves_from_any_directory(tmp_path: Path, make_database) -> None:
    source = checkout_copy(tmp_path / "clone")
    started = time.monotonic()
    # Building (isolated build environment) and resolving the wheel ask the package registry: the
    # only steps of the suite run in the host's network (tests/loopback_only.py).
    run(loopback_only.host_network([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(source)]), timeout=600)
    [wheel] = (tmp_path / "dist").glob("ketta-*.whl")
    built_s = time.monotonic() - started

    venv = tmp_path / "venv"
    bin_dir = venv / "bin"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    # Only the venv on PATH: no pg_config, no C compiler.
    env = {**os.environ, "PATH": str(bin_dir), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    assert shutil.which("pg_config", path=env["PATH"]) is None and shutil.which("cc", path=env["PATH"]) is None
    # This venv's pip (>= 25, as the README's command upgrades to) works on the new venv (--python).
    pip = [sys.executable, "-m", "pip", "--python", str(bin_dir / "python")]
    started = time.monotonic()
    # What pip installs for the wheel with the constraints, PostgreSQL drivers from binary wheels only:
    # resolved in full (a dry run), not unpacked again: the suite's own venv holds the same set,
    # installed by the same command, and the new venv sees it (a .pth line after its own packages).
    report = tmp_path / "install-report.json"
    run(loopback_only.host_network([*pip, "install", "-q", "--dry-run", "--report", str(report), "-c", str(source / "constraints.txt"),
                                    "--only-binary", BINARY_ONLY, str(wheel)]), env=env, timeout=1800)
    resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in json.loads(report.read_text())["install"]}
    assert "psycopg2-binary" in resolved and "psycopg2" not in resolved, "the source psycopg2 is not installed"
    assert resolved["letta"] == "0.16.8" and "ketta" in resolved
    mismatched = {name: wanted for name, wanted in resolved.items() if name != "ketta" and installed_version(name) != wanted}
    assert mismatched == {}, f"the suite's venv does not hold what the wheel resolves to: {mismatched}"
    run([*pip, "install", "-q", "--no-deps", str(wheel)], env=env, timeout=600)
    [site_packages] = venv.glob("lib/python3.*/site-packages")
    (site_packages / "the-suites-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed_s = time.monotonic() - started
    where = run([str(bin_dir / "python"), "-c", "import ketta; print(ketta.__file__)"], env=env, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(site_packages)), f"ketta is imported from the wheel, not from the checkout: {where}"
    migrations = run([str(bin_dir / "python"), "-c", "import ketta.db.migrations as m, pathlib; "
                      "print(len(list((pathlib.Path(m.__file__).parent / 'versions').glob('0*.py'))))"], env=env)
    assert int(migrations.stdout) >= 3, "the migration scripts are inside the wheel"

    # The container's configuration: LETTA_PG_* parts and the token from a secret file.
    database_uri = make_database()
    parts = urlsplit(database_uri)
    secret = tmp_path / "secrets" / "ketta_token"
    secret.parent.mkdir()
    secret.write_text(TEST_TOKEN + "\n")
    workdir = tmp_path / "elsewhere"  # not the checkout: nothing may be read from the source tree
    workdir.mkdir()
    server_env = clean_env(
        PATH=env["PATH"], KETTA_HOME=str(tmp_path / "home"), LETTA_DIR=str(tmp_path / "letta"),
        LETTA_PG_HOST=parts.hostname or "", LETTA_PG_PORT=str(parts.port), LETTA_PG_USER=parts.username or "",
        LETTA_PG_PASSWORD=parts.password or "", LETTA_PG_DB=parts.path.lstrip("/"),
        LETTA_SERVER_PASSWORD_FILE=str(secret), LETTA_SERVER_SECURE="true",
    )
    del server_env["LETTA_SERVER_PASSWORD"]
    server = KettaProcess(server_env, workdir / "server.log", ketta=[str(bin_dir / "ketta")], host="0.0.0.0", token=TEST_TOKEN)
    try:
        start_s = server.wait_healthy(timeout_s=300)
        health = httpx.get(f"{server.url}/v1/health/")
        assert health.status_code == 200 and health.json()["version"] == "0.16.8"
        with server.client() as api:
            providers = api.get("/v1/providers/")
        assert providers.status_code == 200 and providers.json() == [], providers.text
        assert httpx.get(f"{server.url}/v1/providers/").status_code == 401, "the token from the secret file is required"
    finally:
        server.stop()
    engine = sa.create_engine(sync_url(database_uri), poolclass=sa.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM ketta_alembic_version")).scalar_one()
    engine.dispose()
    assert not (tmp_path / "home" / "pgdata").exists(), "LETTA_PG_* given: no embedded database"
    print(f"\nwheel build {built_s:.0f}s, install into a new venv {installed_s:.0f}s, start to healthy {start_s:.1f}s")
