"""``ketta keys rotate``: every stored secret (and the check value) under a new key, in one transaction.

Rotation decrypts everything first without locks (the slow part: one PBKDF2 per stored value,
as Letta salts each value), then, in one transaction under the migration advisory lock with the
tables locked against writes (reads go on), re-reads, re-encrypts what changed meanwhile, and
writes every value under the new key with one fresh salt. Any value no key can decrypt aborts
it, naming table, column and row, unless explicitly skipped. Nothing is deleted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from ketta.db.database import one_shot_engine
from ketta.security.keyring.cipher import encrypt, looks_encrypted, prepared_salt
from ketta.security.keyring.key_files import (
    ENV_PREVIOUS,
    NEXT_FILE,
    Keyring,
    KeyringError,
    archive_name,
    write_key_file,
)
from ketta.security.keyring.stored import (
    CHECK_TABLE,
    StoredValue,
    check_key_index,
    decrypt_all,
    migration_lock,
    read_stored,
    read_values,
    write_check,
)


class RotationAborted(KeyringError):
    """Stored values no configured key can decrypt; nothing was changed."""

    def __init__(self, message: str, undecryptable: list[StoredValue]):
        super().__init__(message)
        self.undecryptable = undecryptable


@dataclass
class RotationResult:
    rotated: int  # values now under the new key (plaintext ones included)
    plaintext: int  # values that were stored unencrypted and are now encrypted
    skipped: list[StoredValue]  # undecryptable values left as they were (--skip-undecryptable)
    changed_meanwhile: int  # values written between the read and the locked transaction
    columns: list[tuple[str, str]]
    seconds: float = 0.0  # the whole rotation
    locked_seconds: float = 0.0  # the transaction holding the write locks (writers wait that long)


def _plaintext_of(stored: StoredValue, found: tuple[int, str] | None) -> str | None:
    """The value's plaintext, or None when no key decrypts it."""
    if found is not None:
        return found[1]
    return None if looks_encrypted(stored.value) else stored.value


def _abort(undecryptable: list[StoredValue], keyring: Keyring) -> RotationAborted:
    shown = "; ".join(v.where for v in undecryptable[:20])
    more = f" and {len(undecryptable) - 20} more" if len(undecryptable) > 20 else ""
    return RotationAborted(
        f"{len(undecryptable)} stored value(s) cannot be decrypted with any of the {len(keyring.keys)} configured "
        f"key(s) ({keyring.describe()}): {shown}{more}. Nothing was changed. Add the key they were written with to "
        f"{ENV_PREVIOUS}, or pass --skip-undecryptable to leave them as they are.", undecryptable)


def rotate(uri: str, keyring: Keyring, new_key: str, *, skip_undecryptable: bool = False,
           lock_timeout_s: float = 60, progress: Callable[[int], None] | None = None) -> RotationResult:
    """Re-encrypt every stored secret (and the check value) under ``new_key``, in one transaction.

    Phase 1, no lock: read and decrypt everything (one PBKDF2 per Letta-written value).
    Phase 2, one transaction under the migration advisory lock, the encrypted tables locked
    against writes (SHARE ROW EXCLUSIVE: running servers keep reading): re-read, decrypt what
    changed since phase 1, update every value, rewrite the check value. ``updated_at`` is left
    alone: the values mean what they meant.
    """
    import time

    started = time.monotonic()
    keys = keyring.values()
    engine = one_shot_engine(uri)
    try:
        with engine.connect() as conn:
            columns, first_read, check_row = read_stored(conn)
        known = {(v.table, v.column, v.row_id, v.value): _plaintext_of(v, f)
                 for v, f in zip(first_read, decrypt_all(first_read, keys, progress=progress))}
        if check_row is not None and check_key_index(check_row, keys) is None and not skip_undecryptable:
            raise _abort([StoredValue(CHECK_TABLE, "check_enc", "1", check_row[1])], keyring)
        early = [v for v in first_read if known[(v.table, v.column, v.row_id, v.value)] is None]
        if early and not skip_undecryptable:
            raise _abort(early, keyring)

        salt = prepared_salt(new_key)  # one derivation for every new value (random IV per value)
        locked_at = time.monotonic()
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'"))
            migration_lock(conn)
            tables = sorted({t for t, _ in columns})
            if tables:
                conn.execute(sa.text(f"LOCK TABLE {', '.join(chr(34) + t + chr(34) for t in tables)} IN SHARE ROW EXCLUSIVE MODE"))
            current = read_values(conn, columns)
            changed = [v for v in current if (v.table, v.column, v.row_id, v.value) not in known]
            for stored, found in zip(changed, decrypt_all(changed, keys) if changed else []):
                known[(stored.table, stored.column, stored.row_id, stored.value)] = _plaintext_of(stored, found)
            skipped = [v for v in current if known[(v.table, v.column, v.row_id, v.value)] is None]
            if skipped and not skip_undecryptable:
                raise _abort(skipped, keyring)
            updates: dict[tuple[str, str], list[tuple[str, str]]] = {}
            plaintext = 0
            for v in current:
                text = known[(v.table, v.column, v.row_id, v.value)]
                if text is None:
                    continue
                plaintext += not looks_encrypted(v.value)
                updates.setdefault((v.table, v.column), []).append((v.row_id, encrypt(text, new_key, salt)))
            for (table, column), pairs in updates.items():
                for start in range(0, len(pairs), 2000):
                    batch = pairs[start:start + 2000]
                    conn.execute(sa.text(
                        f'UPDATE "{table}" AS t SET "{column}" = v.value '
                        "FROM unnest(CAST(:ids AS text[]), CAST(:vals AS text[])) AS v(id, value) WHERE t.id::text = v.id"
                    ), {"ids": [p[0] for p in batch], "vals": [p[1] for p in batch]})
            write_check(conn, new_key)
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise KeyringError(f"The rotation failed, nothing was changed: {reason}") from exc
    else:
        finished = time.monotonic()
        rotated = sum(len(p) for p in updates.values())
        return RotationResult(rotated, plaintext, skipped, len(changed), columns, finished - started, finished - locked_at)
    finally:
        engine.dispose()



def rotate_with_files(uri: str, keyring: Keyring, new_key: str, **options: object) -> tuple[RotationResult, Path | None]:
    """:func:`rotate`, keeping ``KETTA_HOME/encryption_key`` in step when the current key lives there.

    The new key is written to ``encryption_key.next`` before the database changes (so a crash
    after the commit leaves a key that reads it, which the keyring picks up); after the commit the
    old key is kept as ``encryption_key.<date>.old`` (0600) and the new one becomes
    ``encryption_key``. With ``LETTA_ENCRYPTION_KEY`` set no file is touched. Returns the result
    and the archived old key's path (None if none was written).
    """
    if keyring.current_from_env or new_key == keyring.current.value:
        return rotate(uri, keyring, new_key, **options), None  # type: ignore[arg-type]
    next_file = keyring.home / NEXT_FILE
    write_key_file(next_file, new_key)
    try:
        result = rotate(uri, keyring, new_key, **options)  # type: ignore[arg-type]
    except BaseException:
        next_file.unlink(missing_ok=True)
        raise
    archived = archive_name(keyring.home)
    write_key_file(archived, keyring.current.value)
    os.replace(next_file, keyring.key_file)
    return result, archived

