"""``.env`` and settings mistakes (issue 22, item 8): one line naming the file and line (or the
variable and where it came from), and no start on a line Ketta cannot read."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_cli_database import run_in_process


def one_error_line(tmp_path: Path, env_text: str, args: list[str], **env: str) -> str:
    (tmp_path / ".env").write_text(env_text)
    out = run_in_process([args], KETTA_HOME=str(tmp_path / "home"), CWD=str(tmp_path), **env)
    [run] = out["runs"]
    assert run["code"] == 1 and run["error"] is None, run
    lines = run["output"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), run["output"]
    assert out["letta"] == [], "refused before anything slow"
    return lines[0]


def test_a_malformed_line_stops_the_server_once_naming_file_and_line(tmp_path: Path) -> None:
    line = one_error_line(tmp_path, "KETTA_LOG_LEVEL=warning\nthis is not a setting\nKETTA_HARD_DELETE=true\n", ["server"])
    assert line == (f"Error: {tmp_path / '.env'}: line 2 is not NAME=value. Write NAME=value, with a value holding spaces or # in "
                    "matching quotes; Ketta does not start with a line it cannot read.")
    assert not (tmp_path / "home").exists()


def test_an_unclosed_quote_in_the_database_uri_is_an_error_not_the_embedded_database(tmp_path: Path) -> None:
    line = one_error_line(tmp_path, 'LETTA_PG_URI="postgresql://ketta:pw-s3cret@db.example:5432/letta\n', ["db", "current"])
    assert f"{tmp_path / '.env'}: line 1 (LETTA_PG_URI) has an unclosed \" quote" in line, line
    assert "pw-s3cret" not in line, "a malformed line is never echoed: it may hold a password"


@pytest.mark.parametrize(("env_text", "env", "where"), [
    ("KETTA_LLM_READ_TIMEOUT=abc\n", {}, ".env, line 1"),
    ("", {"KETTA_LLM_READ_TIMEOUT": "abc"}, "the environment"),
])
def test_an_invalid_value_names_the_variable_and_its_source(tmp_path: Path, env_text: str, env: dict, where: str) -> None:
    line = one_error_line(tmp_path, env_text, ["server"], **env)
    source = f"{tmp_path / '.env'}, line 1" if where.startswith(".env") else where
    assert line == f"Error: KETTA_LLM_READ_TIMEOUT='abc' (from {source}): Input should be a valid number, unable to parse string as a number.", line


def test_a_secret_setting_is_never_echoed() -> None:
    from ketta.core import env_file
    from pydantic import BaseModel, SecretStr, ValidationError

    class Probe(BaseModel):
        previous_encryption_keys: SecretStr

    with pytest.raises(ValidationError) as invalid:
        Probe(previous_encryption_keys=12345)
    text = env_file.describe_invalid(invalid.value, secret_fields=frozenset({"previous_encryption_keys"}))
    assert text.startswith("KETTA_PREVIOUS_ENCRYPTION_KEYS (from the environment): ") and "12345" not in text
