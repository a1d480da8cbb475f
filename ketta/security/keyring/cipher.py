"""Letta's ciphertext format, read and written by Ketta (``letta/helpers/crypto_utils.py``).

AES-256-GCM under a key derived by PBKDF2 (100 000 rounds, SHA-256) from the master key and a
salt, stored base64 as ``salt(16) + iv(12) + ciphertext + tag(16)``. Do not change it: stored
values depend on it. Derivations are cached, so values sharing a salt cost one PBKDF2.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets as _secrets
from functools import lru_cache
from typing import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_SALT, _IV, _TAG, _KEY_BYTES, _ROUNDS = 16, 12, 16, 32, 100_000
_MIN_ENCRYPTED = _SALT + _IV + _TAG + 1


@lru_cache(maxsize=4096)
def _derive(key: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", key.encode(), salt, _ROUNDS, _KEY_BYTES)


def encrypt(plaintext: str, key: str, salt: bytes | None = None) -> str:
    """Encrypt as Letta does; a given ``salt`` lets many values share one key derivation."""
    salt = salt or os.urandom(_SALT)
    iv = os.urandom(_IV)
    sealed = AESGCM(_derive(key, salt)).encrypt(iv, plaintext.encode(), None)  # ciphertext + tag
    return base64.b64encode(salt + iv + sealed).decode()


def decrypt(value: str, key: str) -> str:
    """The plaintext of a Letta-encrypted value; ValueError if ``key`` did not encrypt it."""
    raw = _decode(value)
    if raw is None:
        raise ValueError("not an encrypted value")
    salt, iv, sealed = raw[:_SALT], raw[_SALT:_SALT + _IV], raw[_SALT + _IV:]
    try:
        return AESGCM(_derive(key, salt)).decrypt(iv, sealed, None).decode()
    except (InvalidTag, UnicodeDecodeError) as exc:
        raise ValueError("wrong key or corrupted value") from exc


def _decode(value: str) -> bytes | None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) >= _MIN_ENCRYPTED else None


def looks_encrypted(value: str) -> bool:
    """Whether a stored value has the shape of Letta's ciphertext. Letta stores plaintext in the
    ``*_enc`` columns when it runs without a key; such a value is used as is."""
    return _decode(value) is not None


@lru_cache(maxsize=64)
def fingerprint(key: str) -> str:
    """A short id of a key, safe to print and store (as slow to brute-force as the check value)."""
    return hashlib.pbkdf2_hmac("sha256", key.encode(), b"ketta-key-id", _ROUNDS, 6).hex()


def generate_key() -> str:
    """A new random master key (256 bits)."""
    return _secrets.token_urlsafe(32)

def prepared_salt(key: str) -> bytes:
    """A fresh salt whose derivation under ``key`` is already done: every value encrypted with
    it costs no further PBKDF2 (each value still gets its own random IV)."""
    salt = os.urandom(_SALT)
    _derive(key, salt)
    return salt


def which_key(value: str, keys: Sequence[str], first: int = 0) -> tuple[int, str] | None:
    """(index of the key that decrypts ``value``, plaintext), trying ``keys[first]`` first."""
    order = [first, *(i for i in range(len(keys)) if i != first)] if keys else []
    for index in order:
        try:
            return index, decrypt(value, keys[index])
        except ValueError:
            continue
    return None

