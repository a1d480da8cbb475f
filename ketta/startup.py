"""What ``ketta server`` checks before its slow start, and the one block it prints once ready.

Preparing the database and importing Letta take many seconds: a port that is already taken
is reported before any of it, in one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ketta.core import ports


class PortInUse(RuntimeError):
    """The server could not listen where asked; the message says what to do."""


def check_port(host: str, port: int) -> None:
    """Bind (host, port) the way uvicorn will, and release it; refuse clearly if that fails."""
    try:
        ports.bound_socket(host, port).close()
    except OSError as exc:
        raise PortInUse(ports.refusal(host, port, exc)) from None


@dataclass(frozen=True)
class StartInfo:
    """What the start-up block tells: where, on which database, with which protections."""

    url: str
    database_uri: str
    embedded_home: Path | None
    revision: str | None
    login: bool | None
    patches_applied: int
    cors_origins: list[str]
    encryption_key: str = ""  # source and key id of the current encryption key (never the key)


def login_enabled(settings: object) -> bool | None:
    """Login on or off, from Ketta's auth setting when it exists, else Letta's LETTA_SERVER_SECURE."""
    insecure = getattr(settings, "insecure_no_login", None)
    if insecure is not None:
        return not insecure
    return os.environ.get("LETTA_SERVER_SECURE", "").lower() == "true"


def block(info: StartInfo) -> str:
    """The short start-up block (no password, no key)."""
    from ketta import LETTA_VERSION, __version__
    from ketta.db.database import describe

    if info.embedded_home is not None:
        database = f"embedded PostgreSQL, data in {info.embedded_home / 'pgdata'}"
    else:
        database = f"PostgreSQL {describe(info.database_uri)}"
    login = {True: "on (Authorization: Bearer <token>; `ketta token` prints it)", False: "OFF: anyone who reaches this port can use it", None: "unknown"}[info.login]
    lines = [
        f"Ketta {__version__} (Letta {LETTA_VERSION}) on {info.url}",
        f"  database: {database}, schema {info.revision or 'none'}",
        f"  login:    {login}",
        f"  patches:  {info.patches_applied} applied ('ketta patches' lists them)",
        f"  CORS:     {', '.join(info.cors_origins) or 'no browser origin allowed'}",
    ]
    if info.encryption_key:
        lines.append(f"  key:      {info.encryption_key}; a database backup cannot be read without it ('ketta keys export')")
    return "\n".join(lines)
