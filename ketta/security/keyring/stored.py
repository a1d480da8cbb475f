"""What the database stores: every ``*_enc`` cell, and the check value saying which key they are under.

``ketta_encryption_check`` holds a known token encrypted with the key the secrets are under, so
a wrong key is found with one decryption instead of at the first message Letta cannot read.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ketta.db.database import table_exists
from ketta.db.migrations import ENCRYPTION_CHECK_TABLE as CHECK_TABLE
from ketta.security.keyring.cipher import encrypt, fingerprint, looks_encrypted, which_key
from ketta.security.keyring.key_files import KeyringError

CHECK_TOKEN = "ketta-encryption-check-v1"


@dataclass(frozen=True)
class StoredValue:
    """One non-null ``*_enc`` cell."""

    table: str
    column: str
    row_id: str
    value: str = field(repr=False)

    @property
    def where(self) -> str:
        return f"{self.table}.{self.column} of row {self.row_id}"


def encrypted_columns(conn: Connection) -> list[tuple[str, str]]:
    """Every ``*_enc`` text column of schema public (Letta's and any Ketta adds), except the
    check value, found in the live schema so a column this code never heard of is not missed."""
    rows = conn.execute(sa.text(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
        "WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' AND c.column_name LIKE '%\\_enc' "
        "AND c.data_type IN ('text', 'character varying') AND c.table_name <> :check "
        "ORDER BY c.table_name, c.column_name"
    ), {"check": CHECK_TABLE}).all()
    columns = [(table, column) for table, column in rows]
    without_id = sorted({t for t, _ in columns} - set(conn.execute(sa.text(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'id'"
    )).scalars()))
    if without_id:
        raise KeyringError(f"Tables with encrypted columns but no id column: {', '.join(without_id)}")
    return columns


def read_values(conn: Connection, columns: Iterable[tuple[str, str]], limit: int | None = None) -> list[StoredValue]:
    """The non-null cells of ``columns`` (deleted rows too: nothing is skipped or purged)."""
    values: list[StoredValue] = []
    for table, column in columns:
        query = f'SELECT id::text, "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL ORDER BY id'
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        values += [StoredValue(table, column, row_id, value) for row_id, value in conn.execute(sa.text(query))]
    return values



def read_check(conn: Connection) -> tuple[str, str] | None:
    """(key id, encrypted token) of the check row, or None."""
    row = conn.execute(sa.text(f"SELECT key_id, check_enc FROM {CHECK_TABLE} WHERE id = 1")).first()
    return (row[0], row[1]) if row else None


def write_check(conn: Connection, key: str) -> None:
    conn.execute(sa.text(
        f"INSERT INTO {CHECK_TABLE} (id, key_id, check_enc) VALUES (1, :key_id, :check_enc) "
        "ON CONFLICT (id) DO UPDATE SET key_id = EXCLUDED.key_id, check_enc = EXCLUDED.check_enc, rotated_at = now()"
    ), {"key_id": fingerprint(key), "check_enc": encrypt(CHECK_TOKEN, key)})


def check_key_index(check: tuple[str, str], keys: Sequence[str]) -> int | None:
    key_id, token = check
    first = next((i for i, k in enumerate(keys) if fingerprint(k) == key_id), 0)
    found = which_key(token, keys, first)
    return found[0] if found and found[1] == CHECK_TOKEN else None



def migration_lock(conn: Connection) -> None:
    from ketta.db.migrations import MIGRATION_LOCK_KEY

    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})



def decrypt_all(values: Sequence[StoredValue], keys: Sequence[str], workers: int | None = None,
                 progress: Callable[[int], None] | None = None) -> list[tuple[int, str] | None]:
    """``which_key`` for every value, in threads (PBKDF2 releases the GIL); the last key that
    worked is tried first, so a database under one key costs one derivation per value."""
    hint = [0]

    def one(stored: StoredValue) -> tuple[int, str] | None:
        if not looks_encrypted(stored.value):
            return None
        found = which_key(stored.value, keys, hint[0])
        if found is not None:
            hint[0] = found[0]
        return found

    workers = workers or min(8, os.cpu_count() or 1)
    results: list[tuple[int, str] | None] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ketta-keys") as pool:
        for done, result in enumerate(pool.map(one, values, chunksize=16), 1):
            results.append(result)
            if progress and done % 1000 == 0:
                progress(done)
    return results


def read_stored(conn: Connection) -> tuple[list[tuple[str, str]], list[StoredValue], tuple[str, str] | None]:
    """(encrypted columns, their stored values, the check row) of a database with Ketta's schema."""
    if not table_exists(conn, CHECK_TABLE):
        raise KeyringError("This database has no Ketta schema yet: run `ketta db upgrade` (or start the server) first.")
    columns = encrypted_columns(conn)
    return columns, read_values(conn, columns), read_check(conn)

