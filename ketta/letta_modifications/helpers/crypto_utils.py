"""Patches of ``letta/helpers/crypto_utils.py``: decryption tries every key of Ketta's keyring.

Stock Letta decrypts with ``LETTA_ENCRYPTION_KEY`` alone, so a server cannot read values written
under another key: replicas could not be moved to a new key one at a time. With the keyring
(``ketta.security.keyring.key_files``: current key, ``KETTA_PREVIOUS_ENCRYPTION_KEYS``, ``encryption_key.*.old``),
the key Letta encrypts with is tried first, then the keyring's; encryption is unchanged. The
key Letta encrypts with is ``settings.encryption_key`` read at each call (as stock encryption
and decryption read it), not the keyring read at start: code that sets it at run time can
decrypt what it has just encrypted. An explicit ``master_key`` argument is honoured as upstream. When every key fails, the error
still says "Failed to decrypt data" (``Secret.get_plaintext`` recognises it) and how many keys
were tried.
"""

from __future__ import annotations

from typing import Optional

from ketta.security.keyring import key_files
from ketta.core import patching
from ketta.core.patching import Patch
from letta.helpers.crypto_utils import CryptoUtils
from letta.settings import settings as letta_settings

TARGET = "letta.helpers.crypto_utils:CryptoUtils"


def _failure(tried: int, last: ValueError) -> ValueError:
    return ValueError(f"Failed to decrypt data with any of the {tried} configured encryption keys "
                      f"(LETTA_ENCRYPTION_KEY, {key_files.ENV_PREVIOUS}; see `ketta keys check`): {last}")


def decrypt(cls: type[CryptoUtils], encrypted: str, master_key: Optional[str] = None) -> str:
    original = patching.original(f"{TARGET}.decrypt")
    keys = [master_key] if master_key is not None else key_files.decryption_keys(letta_settings.encryption_key)
    if len(keys) <= 1:
        return original(cls, encrypted, keys[0] if keys else None)
    last: ValueError | None = None
    for key in keys:
        try:
            return original(cls, encrypted, key)
        except ValueError as exc:
            last = exc
    raise _failure(len(keys), last)  # type: ignore[arg-type]


async def decrypt_async(cls: type[CryptoUtils], encrypted: str, master_key: Optional[str] = None) -> str:
    original = patching.original(f"{TARGET}.decrypt_async")
    keys = [master_key] if master_key is not None else key_files.decryption_keys(letta_settings.encryption_key)
    if len(keys) <= 1:
        return await original(cls, encrypted, keys[0] if keys else None)
    last: ValueError | None = None
    for key in keys:
        try:
            return await original(cls, encrypted, key)
        except ValueError as exc:
            last = exc
    raise _failure(len(keys), last)  # type: ignore[arg-type]


WHY = ("Decryption tries the key Letta encrypts with (settings.encryption_key at call time), then the keyring's "
       "(KETTA_PREVIOUS_ENCRYPTION_KEYS, encryption_key.*.old), so replicas can move to a new key one at a time.")

PATCHES = [
    Patch(target=f"{TARGET}.decrypt", replacement=classmethod(decrypt), fingerprint="2309ba9f588897ab",
          setting="encryption_keyring", why=WHY),
    Patch(target=f"{TARGET}.decrypt_async", replacement=classmethod(decrypt_async), fingerprint="ca5f3dd75246f786",
          setting="encryption_keyring", why=WHY),
]
