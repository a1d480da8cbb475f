"""The keyring patch of Letta's CryptoUtils: decryption tries every configured key, encryption
uses the current one; and Ketta's own cipher (ketta.security.keyring.cipher) reads and writes Letta's format."""

from __future__ import annotations

import asyncio
from typing import Iterator

import pytest

from ketta.security.keyring import cipher, key_files
from ketta.core import patching
from ketta.letta_modifications.helpers import crypto_utils as patch_module

KEY_A = "key-A-" + "a" * 40
KEY_B = "key-B-" + "b" * 40
KEY_X = "key-X-" + "x" * 40


@pytest.fixture
def letta_crypto(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[type]:
    """Letta's CryptoUtils with the keyring patch applied and keyring [B, A] active."""
    from letta.helpers.crypto_utils import CryptoUtils
    from letta.settings import settings

    monkeypatch.setattr(settings, "encryption_key", KEY_B)
    monkeypatch.setattr(key_files, "_active", key_files.Keyring(
        (key_files.Key(KEY_B, "LETTA_ENCRYPTION_KEY"), key_files.Key(KEY_A, "KETTA_PREVIOUS_ENCRYPTION_KEYS[0]")), tmp_path, True))
    monkeypatch.setenv("LETTA_ENCRYPTION_KEY", KEY_B)
    applied = [p for p in patch_module.PATCHES if patching.apply(p)]
    yield CryptoUtils
    for p in applied:
        patching.revert(p)


def test_ketta_and_letta_read_each_others_ciphertext() -> None:
    from letta.helpers.crypto_utils import CryptoUtils

    assert cipher.decrypt(CryptoUtils.encrypt("from letta", master_key=KEY_A), KEY_A) == "from letta"
    assert CryptoUtils.decrypt(cipher.encrypt("from ketta", KEY_A), master_key=KEY_A) == "from ketta"
    shared_salt = b"s" * 16
    one, two = cipher.encrypt("one", KEY_A, shared_salt), cipher.encrypt("two", KEY_A, shared_salt)
    assert one != two and CryptoUtils.decrypt(two, master_key=KEY_A) == "two"
    assert CryptoUtils.is_encrypted(one) and cipher.looks_encrypted(one) and not cipher.looks_encrypted("sk-plain")


def test_decryption_tries_current_then_previous_keys(letta_crypto: type) -> None:
    from letta.schemas.secret import Secret

    under_a, under_b = cipher.encrypt("old", KEY_A), cipher.encrypt("new", KEY_B)
    assert letta_crypto.decrypt(under_a) == "old" and letta_crypto.decrypt(under_b) == "new"
    assert asyncio.run(letta_crypto.decrypt_async(under_a)) == "old"
    assert Secret.from_encrypted(under_a).get_plaintext() == "old"
    assert asyncio.run(Secret.from_encrypted(under_a).get_plaintext_async()) == "old"
    # Encryption uses the current key only.
    assert cipher.decrypt(letta_crypto.encrypt("written"), KEY_B) == "written"
    # An explicit key is honoured as upstream: no fallback.
    with pytest.raises(ValueError, match="Failed to decrypt data"):
        letta_crypto.decrypt(under_a, master_key=KEY_B)


def test_a_value_no_key_reads_fails_as_letta_does_with_the_count(letta_crypto: type) -> None:
    from letta.schemas.secret import Secret

    under_x = cipher.encrypt("lost", KEY_X)
    with pytest.raises(ValueError, match="Failed to decrypt data with any of the 2 configured encryption keys"):
        letta_crypto.decrypt(under_x)
    with pytest.raises(ValueError, match="Failed to decrypt data with any of the 2"):
        asyncio.run(letta_crypto.decrypt_async(under_x))
    with pytest.raises(ValueError, match="Failed to decrypt data"):
        Secret.from_encrypted(under_x).get_plaintext()
    assert Secret.from_encrypted("sk-stored-unencrypted").get_plaintext() == "sk-stored-unencrypted"


def test_without_the_patch_a_previous_key_is_not_tried(letta_crypto: type) -> None:
    for p in patch_module.PATCHES:
        patching.revert(p)
    try:
        with pytest.raises(ValueError, match="Failed to decrypt data"):
            letta_crypto.decrypt(cipher.encrypt("old", KEY_A))
    finally:
        for p in patch_module.PATCHES:
            patching.apply(p)


def test_a_key_set_at_run_time_decrypts_what_it_just_encrypted(letta_crypto: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """Letta's test_secret sets settings.encryption_key at run time: encryption reads it at each call,
    so decryption must try it too (first), before the keyring read at start, which keeps working."""
    from letta.schemas.secret import Secret
    from letta.settings import settings

    under_a, under_b = cipher.encrypt("old", KEY_A), cipher.encrypt("new", KEY_B)
    monkeypatch.setattr(settings, "encryption_key", KEY_X)
    stored = Secret.from_plaintext("set at run time").get_encrypted()
    assert cipher.decrypt(stored, KEY_X) == "set at run time"  # written under the run-time key
    assert Secret.from_encrypted(stored).get_plaintext() == "set at run time"
    assert asyncio.run(Secret.from_encrypted(stored).get_plaintext_async()) == "set at run time"
    assert asyncio.run(Secret.from_plaintext_async("async too")).get_plaintext() == "async too"
    # The keyring's keys still decrypt (rotation), after the run-time key.
    assert letta_crypto.decrypt(under_a) == "old" and letta_crypto.decrypt(under_b) == "new"
    assert asyncio.run(letta_crypto.decrypt_async(under_a)) == "old"
    assert key_files.decryption_keys(KEY_X) == [KEY_X, KEY_B, KEY_A]
    assert key_files.decryption_keys(KEY_B) == [KEY_B, KEY_A]  # the usual case: the current key once
    with pytest.raises(ValueError, match="any of the 3 configured encryption keys"):
        letta_crypto.decrypt(cipher.encrypt("lost", "key-Y-" + "y" * 40))
