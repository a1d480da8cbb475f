"""The server's secrets live in this process's memory, not in its environment.

Anything in ``os.environ`` is inherited by every child process, and Letta runs tool code in
child processes (its local sandbox). So once Letta has read its settings (``LETTA_PG_URI``,
``LETTA_ENCRYPTION_KEY``, ``LETTA_SERVER_PASSWORD`` and the ``*_API_KEY`` variables are read into
``letta.settings`` when it is imported), :func:`take_from_environment` moves them out of
``os.environ`` into this module; Ketta's own code asks :func:`get`.

Letta's settings objects keep their own copies (``settings.letta_pg_uri``,
``settings.encryption_key``, ``model_settings.openai_api_key``, ...), which is what Letta uses.
A ``ketta server --workers N`` supervisor keeps them in its environment until the workers are
started (they are spawned with it); each worker takes them out when it builds its app.
"""

from __future__ import annotations

import os
import re

# Named secrets; plus every variable whose name matches SECRET_PATTERN.
SECRET_NAMES = frozenset({
    "LETTA_PG_URI", "LETTA_PG_PASSWORD", "LETTA_ENCRYPTION_KEY", "KETTA_PREVIOUS_ENCRYPTION_KEYS",
    "LETTA_SERVER_PASSWORD", "KETTA_SERVER_TOKEN", "PGPASSWORD",
})
SECRET_PATTERN = re.compile(r".*(_API_KEY|_ACCESS_KEY|_SECRET_KEY|_SECRET|_PASSWORD|_TOKEN|_AUTH_TOKEN)$", re.IGNORECASE)

_taken: dict[str, str] = {}


def is_secret(name: str) -> bool:
    """Whether an environment variable of this name holds a secret a tool must not see."""
    return name.upper() in SECRET_NAMES or bool(SECRET_PATTERN.match(name))


def get(name: str, default: str | None = None) -> str | None:
    """A secret from the environment, or from here once it was taken out of it."""
    value = os.environ.get(name)
    if value is not None:
        return value
    return _taken.get(name, default)


def taken() -> dict[str, str]:
    """The secrets moved out of the environment (for scrubbing logs; never print them)."""
    return dict(_taken)


def keep(name: str, value: str) -> None:
    """Hold a secret taken from elsewhere (Letta's settings objects) under its env name."""
    _taken.setdefault(name, value)


def take_from_environment() -> list[str]:
    """Move every secret out of ``os.environ`` (after Letta read its settings); returns the names."""
    names = [name for name in os.environ if is_secret(name)]
    for name in names:
        _taken[name] = os.environ.pop(name)
    return sorted(names)
