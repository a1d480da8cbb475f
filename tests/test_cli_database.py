"""CLI commands and the database (issue 22, items 7, 9, 12): a command that needs the server's
database finds the running server's or says in one line that none runs; none makes a database,
a KETTA_HOME or a lock file on the way; commands that do not need Letta do not import it.

The commands run in-process (typer's CliRunner) inside a fresh interpreter, so ``sys.modules``
shows what they imported whatever other tests imported before."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, clean_env

RUN_IN_PROCESS = r"""
import json, sys
from typer.testing import CliRunner
import typer.main
from ketta.cli import app

def commands(group, prefix):
    for name, command in getattr(group, "commands", {}).items():
        yield [*prefix, name]
        yield from commands(command, [*prefix, name])

wanted = json.loads(sys.argv[1])
if wanted == "every --help":
    wanted = [["--help"]] + [[*path, "--help"] for path in commands(typer.main.get_command(app), [])]
out = {"runs": []}
for args in wanted:
    result = CliRunner().invoke(app, args)
    out["runs"].append({"args": args, "code": result.exit_code, "output": result.output,
                        "error": repr(result.exception) if result.exception and not isinstance(result.exception, SystemExit) else None})
out["letta"] = sorted(m for m in sys.modules if m == "letta" or m.startswith("letta."))[:5]
print(json.dumps(out))
"""


def run_in_process(args: object, **env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", RUN_IN_PROCESS, json.dumps(args)], env=clean_env(**env), cwd=env.get("CWD", REPO),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["process_output"] = done.stdout + done.stderr  # what reached the process's own stdout and stderr
    return out


NEED_THE_DATABASE = [["db", "current"], ["token", "list"], ["token", "create", "--user", "user-00000000-0000-4000-8000-000000000000"],
                     ["token", "revoke", "ktok-nothing"]]


def test_commands_that_need_the_database_say_in_one_line_that_no_server_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = run_in_process(NEED_THE_DATABASE, KETTA_HOME=str(home), CWD=str(tmp_path))
    for run in out["runs"]:
        assert run["code"] == 1 and run["error"] is None, run
        lines = run["output"].strip().splitlines()
        assert lines == [f"Error: No Ketta server is running on KETTA_HOME={home} and LETTA_PG_URI is not set: start `ketta server` "
                         "first (this command uses its database), or set LETTA_PG_URI (or LETTA_PG_*) as the server has it."], run
    assert not home.exists(), "no KETTA_HOME, no database, no lock file made on the way"
    assert out["letta"] == [], "answered without importing Letta"


def test_import_env_with_a_key_and_no_server_says_so_and_makes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = run_in_process([["providers", "import-env"], ["keys", "check"]], KETTA_HOME=str(home), CWD=str(tmp_path),
                         OPENAI_API_KEY="sk-from-env")
    imported, checked = out["runs"]
    assert imported["code"] == 1 and imported["output"].strip().splitlines() == [
        f"Error: No Ketta server is running on KETTA_HOME={home} and LETTA_PG_URI is not set: start `ketta server` "
        "first (this command uses its database), or set LETTA_PG_URI (or LETTA_PG_*) as the server has it."], imported
    assert checked["code"] == 1 and len(checked["output"].strip().splitlines()) == 1, checked
    assert not home.exists(), "no KETTA_HOME, token, key or database made on the way"


def test_maintenance_commands_never_initdb(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = run_in_process([["db", "upgrade"], ["db", "downgrade", "base"]], KETTA_HOME=str(home), CWD=str(tmp_path))
    for run in out["runs"]:
        assert run["code"] == 1, run
        assert run["output"].strip().splitlines() == [
            f"Error: No Ketta database in KETTA_HOME={home} yet and LETTA_PG_URI is not set: `ketta server` creates it at its "
            "first start, or set LETTA_PG_URI (or LETTA_PG_*) to the server's database."], run
    assert not (home / "pgdata").exists()


def test_import_env_with_nothing_configured_answers_without_letta(tmp_path: Path) -> None:
    out = run_in_process([["providers", "import-env"]], KETTA_HOME=str(tmp_path / "home"), CWD=str(tmp_path))
    [run] = out["runs"]
    assert run["code"] == 0 and run["output"] == "no provider configured in the environment\n", run
    assert out["letta"] == [] and not (tmp_path / "home").exists()


def test_anything_configured_reads_the_names_letta_reads() -> None:
    from ketta.providers.import_env import anything_configured

    assert not anything_configured({"PATH": "/bin", "OPENAI_API_BASE": "http://x", "KETTA_HOME": "/tmp"})
    for name in ("OPENAI_API_KEY", "openai_api_key", "OLLAMA_BASE_URL", "AZURE_API_KEY", "AWS_ACCESS_KEY_ID", "MOONSHOT_API_KEY", "VLLM_API_BASE"):
        assert anything_configured({name: "value"}), name
    assert not anything_configured({"OPENAI_API_KEY": "  "})


def test_every_help_and_patches_verify_without_letta(tmp_path: Path) -> None:
    out = run_in_process("every --help", KETTA_HOME=str(tmp_path / "home"), CWD=str(tmp_path))
    assert len(out["runs"]) > 20, [run["args"] for run in out["runs"]]
    for run in out["runs"]:
        assert run["code"] == 0 and "Usage:" in run["output"], run
    assert out["letta"] == [], "no --help imports Letta"
    verified = run_in_process([["patches", "verify"]], KETTA_HOME=str(tmp_path / "home"), CWD=str(tmp_path))
    assert verified["runs"][0]["code"] == 0 and "patches match the installed Letta" in verified["runs"][0]["output"], verified
    assert verified["letta"] == [], "patches verify reads Letta's source text; it imports Letta only for what text cannot settle"
    assert not (tmp_path / "home").exists()


def test_token_names_the_file_it_came_from(tmp_path: Path) -> None:
    secret = tmp_path / "server_token"
    secret.write_text("file-token-0123456789abcdef\n")
    out = run_in_process([["token"]], KETTA_HOME=str(tmp_path / "home"), LETTA_SERVER_PASSWORD="",
                         LETTA_SERVER_PASSWORD_FILE=str(secret), CWD=str(tmp_path))
    [run] = out["runs"]
    assert run["code"] == 0, run
    assert f"server token (from LETTA_SERVER_PASSWORD_FILE={secret})" in run["output"] and "file-token-0123456789abcdef" in run["output"], run


def test_a_token_file_made_by_the_cli_is_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = run_in_process([["token"]], KETTA_HOME=str(home), LETTA_SERVER_PASSWORD="", CWD=str(tmp_path))
    assert out["runs"][0]["code"] == 0, out
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "server_token").stat().st_mode) == 0o600


def test_the_lock_file_names_the_server_url_for_the_in_use_refusal() -> None:
    from ketta.db.database import describe_holder

    assert describe_holder("pid 42 port 5555 url http://localhost:8283\n") == "the Ketta server on http://localhost:8283 (pid 42)"
    assert "5555" not in describe_holder("pid 42 port 5555 url http://localhost:8283")
    assert describe_holder("pid 42\n").startswith("a Ketta process (pid 42")
    assert describe_holder("") == "another process"
