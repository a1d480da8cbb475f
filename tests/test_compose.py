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
from ketta.core.settings import FILE_VARIABLES, KettaSettings

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


def parse_seconds(text: str) -> float:
    """A compose duration ('30s', '1m30s', '90') in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)?", str(text))
    return sum(float(number) * units[unit or "s"] for number, unit in parts)


def test_compose_sets_nothing_inert_and_outlasts_the_shutdown_grace() -> None:
    """Issue 22, item 12: LETTA_SERVER_SECURE does nothing under Ketta; Docker's SIGKILL must come
    after KETTA_SHUTDOWN_GRACE (running requests) plus the pools' close."""
    ketta = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["ketta"]
    assert "LETTA_SERVER_SECURE" not in ketta["environment"]
    grace = float(ketta["environment"].get("KETTA_SHUTDOWN_GRACE", KettaSettings.model_fields["shutdown_grace"].default))
    assert parse_seconds(ketta["stop_grace_period"]) >= grace + 10, (ketta.get("stop_grace_period"), grace)


def test_secrets_are_never_world_readable_and_each_container_can_read_its_own() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Containers (compose)", 1)[1].split("\n### ", 1)[0]
    assert "chmod 644" not in readme and "chmod 640 secrets/*" in section
    assert "sudo chgrp 10001 secrets/ketta_token" in section and "sudo chgrp 999 secrets/pg_password" in section
    assert "umask 077" in section, "never world-readable, not even before the chmod"
    assert "999" in [str(group) for group in compose["services"]["ketta"]["group_add"]], "ketta reads pg_password through postgres' group"
    steps = dockerfile_instructions()
    assert any(op == "RUN" and "groupadd --gid 10001 ketta" in arg and "--uid 10001 --gid 10001" in arg for op, arg in steps)


def test_the_build_venv_and_dist_stay_out_of_git_and_the_image_context() -> None:
    for name in (".gitignore", ".dockerignore"):
        lines = (REPO / name).read_text().splitlines()
        assert ".build/" in lines, name
    wheel_block = (REPO / "README.md").read_text().split("### A wheel, on any machine", 1)[1].split("```", 2)[1]
    assert "cp constraints.txt dist/" in wheel_block and "-c dist/constraints.txt dist/ketta-" in wheel_block
