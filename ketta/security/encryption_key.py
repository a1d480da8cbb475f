"""Encryption at rest by default: Letta encrypts provider keys only if LETTA_ENCRYPTION_KEY is set."""

from __future__ import annotations

from ketta.core.settings import KettaSettings
from ketta.security.keyring.key_files import Keyring, activate, load_keyring


def ensure_encryption_key(settings: KettaSettings) -> Keyring:
    """Use LETTA_ENCRYPTION_KEY if set; else a random key made once under KETTA_HOME (mode 0600).
    Previous keys (``ketta.security.keyring.key_files``) are loaded with it; the current one is exported for Letta."""
    keys = load_keyring(settings)
    activate(keys)
    return keys
