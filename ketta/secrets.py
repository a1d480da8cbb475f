"""Encryption at rest by default: Letta encrypts provider keys only if LETTA_ENCRYPTION_KEY is set."""

from __future__ import annotations

import os
import secrets as _secrets

from ketta.settings import KettaSettings


def ensure_encryption_key(settings: KettaSettings) -> None:
    """Use LETTA_ENCRYPTION_KEY if set; else a random key made once under KETTA_HOME (mode 0600)."""
    if os.environ.get("LETTA_ENCRYPTION_KEY"):
        return
    home = settings.home_dir
    home.mkdir(parents=True, exist_ok=True)
    key_file = home / "encryption_key"
    if not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(_secrets.token_urlsafe(32) + "\n")
    os.environ["LETTA_ENCRYPTION_KEY"] = key_file.read_text().strip()
