"""``.env`` read strictly: a line Ketta cannot read stops the start, said once, naming file and line.

python-dotenv skips a malformed line with a warning, and Ketta, pydantic-settings and Letta each
read ``.env`` (the same warning six times, in three formats), then the server started without
that setting: ``LETTA_PG_URI="postgresql://...`` with its closing quote missing silently became
the embedded database. A setting's value that does not validate (``KETTA_LLM_READ_TIMEOUT=abc``)
is also said in one line naming the variable and where it came from (:func:`describe_invalid`).
Values are never echoed for a malformed line: it may hold a password.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

NAME = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*)$", re.S)

# variable -> (file, line) for each value load_environment took from a .env file
origins: dict[str, tuple[Path, int]] = {}


def _problem(text: str) -> str:
    """What is wrong with one malformed line, naming its variable but never its value."""
    found = NAME.match(text.rstrip("\n"))
    if not found:
        return "is not NAME=value"
    name, value = found.group(1), found.group(2).strip()
    if value[:1] in ("'", '"') and (len(value) < 2 or not value.endswith(value[0])):
        return f"({name}) has an unclosed {value[0]} quote"
    return f"({name}) cannot be read"


def check(path: Path) -> None:
    """SettingsError (one line) for every line of ``path`` python-dotenv cannot parse."""
    from dotenv.parser import parse_stream

    from ketta.core.settings import SettingsError

    with path.open(encoding="utf-8", errors="replace") as stream:
        bad = [f"line {b.original.line} {_problem(b.original.string)}" for b in parse_stream(stream) if b.error]
    if bad:
        raise SettingsError(f"{path}: {'; '.join(bad)}. Write NAME=value, with a value holding spaces or # in matching "
                            "quotes; Ketta does not start with a line it cannot read.")


def remember(path: Path, names: set[str]) -> None:
    """Record the line of each variable taken from ``path`` (for :func:`describe_invalid`)."""
    from dotenv.parser import parse_stream

    with path.open(encoding="utf-8", errors="replace") as stream:
        for binding in parse_stream(stream):
            if binding.key in names:
                origins[binding.key] = (path, binding.original.line)


def describe_invalid(exc: Any, prefix: str = "KETTA_", secret_fields: frozenset[str] = frozenset()) -> str:
    """One line for a pydantic ValidationError of a settings class: each variable, its value (not
    for secrets), where it came from (.env file and line, or the environment) and what is wrong."""
    parts = []
    for error in exc.errors():
        field = str(error.get("loc", ("?",))[0])
        name = f"{prefix}{field.upper()}"
        shown = "" if field in secret_fields else f"={error.get('input')!r}"
        where = f"{origins[name][0]}, line {origins[name][1]}" if name in origins else "the environment"
        parts.append(f"{name}{shown} (from {where}): {error.get('msg', 'invalid')}")
    return "; ".join(parts) + "."
