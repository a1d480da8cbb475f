"""The encryption keyring: which keys read the stored secrets, the start-up check, key rotation.

Letta encrypts every ``*_enc`` column (provider keys, agent and sandbox env vars, MCP tokens and
headers, OAuth tokens) with ``LETTA_ENCRYPTION_KEY``: AES-256-GCM under a key derived by PBKDF2
(100 000 rounds, SHA-256) from the master key and a salt, stored base64 as
``salt(16) + iv(12) + ciphertext + tag(16)``. This module reads and writes that format itself
(with ``cryptography``), so the start-up check runs before Letta's slow import, and a rotation
can derive the new key once for all values instead of once per value.

Why it looks like this:

- **Keyring.** The current key (``LETTA_ENCRYPTION_KEY``, else ``KETTA_HOME/encryption_key``)
  encrypts; it and the previous keys (``KETTA_PREVIOUS_ENCRYPTION_KEYS``, then
  ``encryption_key`` if the env var is the current key, an unfinished rotation's
  ``encryption_key.next``, then the ``encryption_key.*.old`` files, newest first) decrypt. Replicas can then be restarted one by one onto a new key.
- **Check value.** ``ketta_encryption_check`` holds a known token encrypted with the key the
  secrets are under. A server whose keyring cannot decrypt it refuses to start with one line,
  instead of answering 500 "Failed to decrypt data" at the first message. A database without it
  (first start, or one made before it existed) is judged on a sample of its stored secrets, then
  gets one.
- **Rotation** decrypts everything first without locks (the slow part: one PBKDF2 per stored
  value, as Letta salts each value), then, in one transaction under the migration advisory lock
  with the tables locked against writes (reads go on), re-reads, re-encrypts what changed
  meanwhile, and writes every value under the new key with one fresh salt. Any value no key can
  decrypt aborts it, naming table, column and row, unless explicitly skipped. Nothing is deleted.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import logging
import os
import secrets as _secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import Connection

from ketta.core.settings import KettaSettings
from ketta.db.database import one_shot_engine, table_exists
from ketta.db.migrations import ENCRYPTION_CHECK_TABLE as CHECK_TABLE

log = logging.getLogger("ketta.keyring")

ENV_KEY = "LETTA_ENCRYPTION_KEY"
ENV_PREVIOUS = "KETTA_PREVIOUS_ENCRYPTION_KEYS"
KEY_FILE = "encryption_key"
NEXT_FILE = "encryption_key.next"  # a rotation's new key, until the database has committed it
OLD_SUFFIX = ".old"
CHECK_TOKEN = "ketta-encryption-check-v1"
SAMPLE_SIZE = 10  # stored secrets tried when a database has no check value yet

# Letta's format (letta/helpers/crypto_utils.py): do not change, stored values depend on it.
_SALT, _IV, _TAG, _KEY_BYTES, _ROUNDS = 16, 12, 16, 32, 100_000
_MIN_ENCRYPTED = _SALT + _IV + _TAG + 1


class KeyringError(RuntimeError):
    """The configured keys cannot be used with this database; the message says what to do."""


class RotationAborted(KeyringError):
    """Stored values no configured key can decrypt; nothing was changed."""

    def __init__(self, message: str, undecryptable: list["StoredValue"]):
        super().__init__(message)
        self.undecryptable = undecryptable


# --- the cipher (Letta's format) -----------------------------------------------------------


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


def validate_new_key(key: str) -> str:
    """A key given by the operator: at least 16 characters, no comma or white space (keys are
    listed comma-separated in KETTA_PREVIOUS_ENCRYPTION_KEYS)."""
    key = key.strip()
    if len(key) < 16 or any(c == "," or c.isspace() for c in key):
        raise KeyringError("A new encryption key needs at least 16 characters and no comma or white space "
                           "(`ketta keys generate` makes one).")
    return key


# --- the keyring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One master key and where it came from (an env var or a file; never the value)."""

    value: str = field(repr=False)
    source: str

    @property
    def id(self) -> str:
        return fingerprint(self.value)


@dataclass(frozen=True)
class Keyring:
    """The current key (encrypts) first, then the keys that only decrypt."""

    keys: tuple[Key, ...]
    home: Path
    current_from_env: bool

    @property
    def current(self) -> Key:
        return self.keys[0]

    @property
    def key_file(self) -> Path:
        return self.home / KEY_FILE

    def values(self) -> list[str]:
        return [k.value for k in self.keys]

    def describe(self) -> str:
        """Where the keys come from, for messages: ``LETTA_ENCRYPTION_KEY + 1 previous``."""
        extra = f" + {len(self.keys) - 1} previous" if len(self.keys) > 1 else ""
        return f"{self.current.source}{extra}"


def _read_key_file(path: Path) -> str:
    return path.read_text().strip()


def write_key_file(path: Path, key: str) -> None:
    """Write a key file readable by its owner only (mode 0600 from its creation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def old_key_files(home: Path) -> list[Path]:
    """``encryption_key.<stamp>.old`` files, newest first (stamps sort as text)."""
    return sorted(home.glob(f"{KEY_FILE}.*{OLD_SUFFIX}"), reverse=True)


def load_keyring(settings: KettaSettings, *, create: bool = True) -> Keyring:
    """The configured keys: current first. Without LETTA_ENCRYPTION_KEY the current key is
    ``KETTA_HOME/encryption_key``, made (random, 0600) if missing and ``create``."""
    home = settings.home_dir
    candidates: list[Key] = []
    from ketta.security import server_secrets

    env_value = (server_secrets.get(ENV_KEY) or "").strip()
    from_env = bool(env_value)
    if from_env:
        candidates.append(Key(env_value, ENV_KEY))
    else:
        key_file = home / KEY_FILE
        if not key_file.exists():
            if not create:
                raise KeyringError(f"No encryption key: {ENV_KEY} is not set and {key_file} does not exist.")
            write_key_file(key_file, generate_key())
            log.info("Made a new encryption key in %s", key_file)
        candidates.append(Key(_read_key_file(key_file), str(key_file)))
    previous = settings.previous_encryption_keys.get_secret_value()
    for index, value in enumerate(v.strip() for v in previous.split(",")):
        if value:
            candidates.append(Key(value, f"{ENV_PREVIOUS}[{index}]"))
    # With LETTA_ENCRYPTION_KEY set, a key file left in KETTA_HOME (e.g. from before the switch to
    # the env var) still decrypts.
    files = [home / KEY_FILE] if from_env else []
    files += [home / NEXT_FILE] + old_key_files(home)
    for path in (p for p in files if p.exists()):
        value = _read_key_file(path)
        if value:
            candidates.append(Key(value, str(path)))
    keys: list[Key] = []
    for key in candidates:
        if key.value not in {k.value for k in keys}:
            keys.append(key)
    return Keyring(tuple(keys), home, from_env)


_active: Keyring | None = None


def activate(keyring: Keyring) -> None:
    """Make ``keyring`` this process's: Letta encrypts with its current key (LETTA_ENCRYPTION_KEY
    is read when ``letta.settings`` is imported) and Ketta's patch decrypts with all of them."""
    global _active
    _active = keyring
    os.environ[ENV_KEY] = keyring.current.value


def decryption_keys(current: str | None = None) -> list[str]:
    """The keys Letta's decryption tries: ``current`` first (the key Letta encrypts with at this
    moment, ``letta.settings.settings.encryption_key``, which code may set at run time), then the
    activated keyring's keys (or LETTA_ENCRYPTION_KEY if none was activated, e.g. when the patches
    are applied without ``ketta.app.prepare``), each once."""
    keys = [current] if current else []
    if _active is not None:
        others = _active.values()
    else:
        from ketta.security import server_secrets

        env = server_secrets.get(ENV_KEY) or ""
        others = [env] if env else []
    keys += [k for k in others if k not in keys]
    return keys


def which_key(value: str, keys: Sequence[str], first: int = 0) -> tuple[int, str] | None:
    """(index of the key that decrypts ``value``, plaintext), trying ``keys[first]`` first."""
    order = [first, *(i for i in range(len(keys)) if i != first)] if keys else []
    for index in order:
        try:
            return index, decrypt(value, keys[index])
        except ValueError:
            continue
    return None


# --- what the database stores --------------------------------------------------------------


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


def _check_key_index(check: tuple[str, str], keys: Sequence[str]) -> int | None:
    key_id, token = check
    first = next((i for i, k in enumerate(keys) if fingerprint(k) == key_id), 0)
    found = which_key(token, keys, first)
    return found[0] if found and found[1] == CHECK_TOKEN else None



def _lock(conn: Connection) -> None:
    from ketta.db.migrations import MIGRATION_LOCK_KEY

    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def refusal(keyring: Keyring, detail: str) -> str:
    """The one line a server prints when it refuses to start on a wrong key."""
    if keyring.current_from_env:
        where = f"set {ENV_KEY} to the key this database was written with"
    else:
        where = f"put the key this database was written with in {keyring.key_file} (or set {ENV_KEY})"
    restart = "ketta keys rotate --skip-undecryptable" + (f' --new-key "${ENV_KEY}"' if keyring.current_from_env else "")
    return (f"The configured encryption key ({keyring.describe()}, key id {keyring.current.id}) cannot decrypt "
            f"this database's stored secrets: {detail}. To fix: {where}, keeping other keys in {ENV_PREVIOUS}; "
            f"if that key is lost, `{restart}` makes the database usable again "
            "(the stored secrets it cannot read must then be entered again).")


def _refuse_unsaved_env_key(keyring: Keyring, index: int) -> None:
    """LETTA_ENCRYPTION_KEY cannot read the database but a key file of KETTA_HOME can: refuse.

    Serving would encrypt every new secret under the env key, which is saved nowhere Ketta
    knows of, while the stored ones stay under the file's key (a restart with the file's key
    then cannot read the new ones). A rotation is explicit: ``ketta keys rotate``, or the old
    key named in KETTA_PREVIOUS_ENCRYPTION_KEYS while one is under way.
    """
    found = keyring.keys[index]
    if index == 0 or not keyring.current_from_env or not found.source.startswith(str(keyring.home)):
        return  # the env key reads it, or the key that does was named by the operator (previous keys)
    raise KeyringError(
        f"{ENV_KEY} (key id {keyring.current.id}) cannot decrypt this database's stored secrets, but {found.source} "
        f"(key id {found.id}) can: unset {ENV_KEY} to keep using that key, or move the database to the new key "
        f'explicitly with `ketta keys rotate --new-key "${ENV_KEY}"` (or name the old key in {ENV_PREVIOUS} '
        "while a rotation is under way).")


def verify(uri: str, keyring: Keyring) -> Key:
    """The start-up check: the key the stored secrets are under, which must be in ``keyring``.

    Reads the check value; on a database without one (fresh, or older than the check), tries a
    sample of stored secrets and then records the check value, under the migration lock so
    replicas starting together agree. Raises :class:`KeyringError` with the one line to print.
    """
    keys = keyring.values()
    engine = one_shot_engine(uri)
    try:
        with engine.connect() as conn:
            check = read_check(conn)
        if check is None:
            with engine.connect() as conn, conn.begin():
                _lock(conn)
                check = read_check(conn)
                if check is None:
                    index = _sample_key_index(conn, keyring)
                    _refuse_unsaved_env_key(keyring, index)
                    write_check(conn, keys[index])
                    return keyring.keys[index]
        index = _check_key_index(check, keys)
        if index is None:
            raise KeyringError(refusal(keyring, f"its check value ({CHECK_TABLE}) was written with key id {check[0]}"))
        _refuse_unsaved_env_key(keyring, index)
        if index > 0:
            log.warning("Stored secrets are under a previous key (%s, key id %s), not the current one: finish the "
                        "rotation with `ketta keys rotate --new-key <current key>`", keyring.keys[index].source,
                        keyring.keys[index].id)
        return keyring.keys[index]
    finally:
        engine.dispose()


def _sample_key_index(conn: Connection, keyring: Keyring) -> int:
    """The key that decrypts the first decryptable value of a sample; 0 if nothing is encrypted."""
    sample = [v for v in read_values(conn, encrypted_columns(conn), limit=SAMPLE_SIZE) if looks_encrypted(v.value)]
    sample = sample[:SAMPLE_SIZE]
    for stored in sample:
        found = which_key(stored.value, keyring.values())
        if found is not None:
            return found[0]
    if sample:
        raise KeyringError(refusal(keyring, f"none of {len(sample)} sampled stored secrets (e.g. {sample[0].where}) "
                                            "decrypts with it"))
    return 0


# --- `ketta keys check` ----------------------------------------------------------------------


@dataclass
class Report:
    """What ``ketta keys check`` and ``ketta keys rotate`` found."""

    keyring: Keyring
    check_key: int | None = None  # index in the keyring of the check value's key; None: unreadable/absent
    check_key_id: str | None = None
    per_key: list[int] = field(default_factory=list)  # secrets each key decrypts
    plaintext: list[StoredValue] = field(default_factory=list)  # stored unencrypted (Letta without a key)
    undecryptable: list[StoredValue] = field(default_factory=list)
    columns: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.per_key) + len(self.plaintext) + len(self.undecryptable)


def _decrypt_all(values: Sequence[StoredValue], keys: Sequence[str], workers: int | None = None,
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


def _read_stored(conn: Connection) -> tuple[list[tuple[str, str]], list[StoredValue], tuple[str, str] | None]:
    """(encrypted columns, their stored values, the check row) of a database with Ketta's schema."""
    if not table_exists(conn, CHECK_TABLE):
        raise KeyringError("This database has no Ketta schema yet: run `ketta db upgrade` (or start the server) first.")
    columns = encrypted_columns(conn)
    return columns, read_values(conn, columns), read_check(conn)


def check(uri: str, keyring: Keyring) -> Report:
    """Decrypt every stored secret with the keyring and count what each key reads."""
    keys = keyring.values()
    engine = one_shot_engine(uri)
    try:
        with engine.connect() as conn:
            columns, values, check_row = _read_stored(conn)
    finally:
        engine.dispose()
    report = Report(keyring, per_key=[0] * len(keys), columns=columns)
    if check_row is not None:
        report.check_key_id = check_row[0]
        report.check_key = _check_key_index(check_row, keys)
    for stored, found in zip(values, _decrypt_all(values, keys)):
        if found is not None:
            report.per_key[found[0]] += 1
        elif looks_encrypted(stored.value):
            report.undecryptable.append(stored)
        else:
            report.plaintext.append(stored)
    return report


# --- `ketta keys rotate` ---------------------------------------------------------------------


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
            columns, first_read, check_row = _read_stored(conn)
        known = {(v.table, v.column, v.row_id, v.value): _plaintext_of(v, f)
                 for v, f in zip(first_read, _decrypt_all(first_read, keys, progress=progress))}
        if check_row is not None and _check_key_index(check_row, keys) is None and not skip_undecryptable:
            raise _abort([StoredValue(CHECK_TABLE, "check_enc", "1", check_row[1])], keyring)
        early = [v for v in first_read if known[(v.table, v.column, v.row_id, v.value)] is None]
        if early and not skip_undecryptable:
            raise _abort(early, keyring)

        salt = os.urandom(_SALT)  # one derivation for every new value (random IV per value)
        _derive(new_key, salt)
        locked_at = time.monotonic()
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'"))
            _lock(conn)
            tables = sorted({t for t, _ in columns})
            if tables:
                conn.execute(sa.text(f"LOCK TABLE {', '.join(chr(34) + t + chr(34) for t in tables)} IN SHARE ROW EXCLUSIVE MODE"))
            current = read_values(conn, columns)
            changed = [v for v in current if (v.table, v.column, v.row_id, v.value) not in known]
            for stored, found in zip(changed, _decrypt_all(changed, keys) if changed else []):
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


def archive_name(home: Path, now: dt.datetime | None = None) -> Path:
    """``encryption_key.<UTC date and time>.old``, unique in ``home``."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    path, n = home / f"{KEY_FILE}.{stamp}{OLD_SUFFIX}", 1
    while path.exists():
        path, n = home / f"{KEY_FILE}.{stamp}-{n}{OLD_SUFFIX}", n + 1
    return path


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


# --- export / import -------------------------------------------------------------------------


def export_text(keyring: Keyring) -> str:
    """The keyring as env-file lines (usable as a docker/systemd env file, or ``ketta keys import``)."""
    lines = ["# Ketta encryption keys: a database backup cannot be read without them. Keep this file secret.",
             f"{ENV_KEY}={keyring.current.value}"]
    previous = [k.value for k in keyring.keys[1:]]
    if previous:
        lines.append(f"{ENV_PREVIOUS}={','.join(previous)}")
    return "\n".join(lines) + "\n"


def parse_export(text: str) -> tuple[str, list[str]]:
    """(current key, previous keys) from :func:`export_text`'s format."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    if not values.get(ENV_KEY):
        raise KeyringError(f"No {ENV_KEY}=... line in the file (expected the output of `ketta keys export`).")
    previous = [v.strip() for v in values.get(ENV_PREVIOUS, "").split(",") if v.strip()]
    return values[ENV_KEY], previous


def import_keys(home: Path, current: str, previous: Sequence[str], *, force: bool = False) -> list[Path]:
    """Install keys under ``home``: ``current`` as ``encryption_key``, the others as ``.old``
    files. A different existing ``encryption_key`` is refused unless ``force``, and then kept
    as an ``.old`` file too. Returns the files written."""
    home.mkdir(parents=True, exist_ok=True)
    key_file = home / KEY_FILE
    written: list[Path] = []
    known = {_read_key_file(p) for p in [key_file, *old_key_files(home)] if p.exists()}
    if key_file.exists() and _read_key_file(key_file) != current:
        if not force:
            raise KeyringError(f"{key_file} already holds another key; pass --force to replace it "
                               "(it is kept as an encryption_key.<date>.old file).")
        archived = archive_name(home)
        write_key_file(archived, _read_key_file(key_file))
        written.append(archived)
    for value in previous:
        if value not in known and value != current:
            path = archive_name(home)
            write_key_file(path, value)
            written.append(path)
            known.add(value)
    write_key_file(key_file, current)
    written.append(key_file)
    return written
