"""compose.yaml and the Dockerfile, checked by parsing (no image can be pulled or built here).

What the image runs (wheel, constraints, ``ketta server --host 0.0.0.0``, secrets read through
``*_FILE``) is exercised against a real wheel by tests/test_packaging.py; this checks that the
files say the same, and that every variable compose sets is one Ketta or Letta reads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from conftest import REPO
from ketta.settings import FILE_VARIABLES, KettaSettings

# Read by Letta outside its Settings classes (os.getenv), or by this image.
OTHER_KNOWN = {"ACCEPTABLE_ORIGINS", "LETTA_SERVER_SECURE", "LETTA_SERVER_PASSWORD", "LETTA_DIR"}


def letta_setting_names() -> set[str]:
    """LETTA_* names of Letta's Settings fields, read from its source (importing Letta takes seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("letta")
    assert spec and spec.origin
    source = (Path(spec.origin).parent / "settings.py").read_text()
    body = source.split("class Settings(BaseSettings):", 1)[1].split("\nclass ", 1)[0]
    return {f"LETTA_{name.upper()}" for name in re.findall(r"^    (\w+): ", body, re.M)}


def known_variable(name: str) -> bool:
    if name.endswith("_FILE") and name[: -len("_FILE")] in FILE_VARIABLES:
        return True
    if name.startswith("KETTA_"):
        return name[len("KETTA_"):].lower() in KettaSettings.model_fields
    return name in OTHER_KNOWN or name in letta_setting_names()


def test_compose_runs_pgvector_and_ketta_with_secrets_and_a_volume_per_state() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    db, ketta = compose["services"]["db"], compose["services"]["ketta"]

    assert db["image"].startswith("pgvector/pgvector:")
    assert ketta["build"] == "." and ketta["depends_on"]["db"]["condition"] == "service_healthy"
    env = ketta["environment"]
    for name in env:
        assert known_variable(name), f"compose sets {name}, which neither Ketta nor Letta reads"
    assert {"LETTA_PG_HOST", "LETTA_PG_PORT", "LETTA_PG_USER", "LETTA_PG_DB", "LETTA_PG_PASSWORD_FILE"} <= set(env)
    assert env["LETTA_PG_HOST"] == "db" and env["LETTA_PG_USER"] == db["environment"]["POSTGRES_USER"]
    assert env["LETTA_PG_DB"] == db["environment"]["POSTGRES_DB"]
    assert env["LETTA_PG_PASSWORD_FILE"] == db["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/pg_password"
    assert "http://localhost:8080" in env["ACCEPTABLE_ORIGINS"].split(",")

    # The token is a compose secret, read by Ketta from /run/secrets.
    assert env["LETTA_SERVER_PASSWORD_FILE"] == "/run/secrets/ketta_token"
    assert "LETTA_SERVER_PASSWORD" not in env
    assert set(ketta["secrets"]) == {"ketta_token", "pg_password"} and set(compose["secrets"]) == {"ketta_token", "pg_password"}

    # A volume per state: the database, KETTA_HOME (encryption key), Letta's directory (logs).
    mounts = dict(volume.split(":", 1) for volume in ketta["volumes"])
    assert mounts == {"ketta_home": env["KETTA_HOME"], "letta_dir": env["LETTA_DIR"]}
    assert db["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    assert set(compose["volumes"]) == {"pgdata", "ketta_home", "letta_dir"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_runs_the_wheel_as_a_non_root_user_with_a_healthcheck() -> None:
    steps = dockerfile_instructions()
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    ops = dict((op, arg) for op, arg in final)
    assert ops["FROM"] == "python:3.11-slim"
    assert ops["USER"] == "ketta"
    installs = " ".join(arg for op, arg in final if op == "RUN")
    assert "-c /tmp/install/constraints.txt" in installs and "--only-binary asyncpg,pg8000,pgvector,psycopg2-binary" in installs
    assert "/v1/health/" in ops["HEALTHCHECK"]
    assert json.loads(ops["CMD"]) == ["ketta", "server", "--host", "0.0.0.0", "--port", "8283"]
    assert "8283" in ops["EXPOSE"]
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert compose["services"]["ketta"]["environment"]["KETTA_HOME"] == re.search(r"KETTA_HOME=(\S+)", ops["ENV"]).group(1)
