"""The start-up check and ``ketta keys check``: can the configured keys read this database?

A server whose keyring cannot decrypt the check value refuses to start with one line, instead
of answering 500 "Failed to decrypt data" at the first message. A database without a check value
(first start, or one made before it existed) is judged on a sample of its stored secrets, then
gets one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from ketta.db.database import one_shot_engine
from ketta.security.keyring.cipher import looks_encrypted, which_key
from ketta.security.keyring.key_files import ENV_KEY, ENV_PREVIOUS, Key, Keyring, KeyringError
from ketta.security.keyring.stored import (
    CHECK_TABLE,
    StoredValue,
    check_key_index,
    decrypt_all,
    encrypted_columns,
    migration_lock,
    read_check,
    read_stored,
    read_values,
    write_check,
)

log = logging.getLogger("ketta.keyring")

SAMPLE_SIZE = 10  # stored secrets tried when a database has no check value yet


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
                migration_lock(conn)
                check = read_check(conn)
                if check is None:
                    index = _sample_key_index(conn, keyring)
                    _refuse_unsaved_env_key(keyring, index)
                    write_check(conn, keys[index])
                    return keyring.keys[index]
        index = check_key_index(check, keys)
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



def check(uri: str, keyring: Keyring) -> Report:
    """Decrypt every stored secret with the keyring and count what each key reads."""
    keys = keyring.values()
    engine = one_shot_engine(uri)
    try:
        with engine.connect() as conn:
            columns, values, check_row = read_stored(conn)
    finally:
        engine.dispose()
    report = Report(keyring, per_key=[0] * len(keys), columns=columns)
    if check_row is not None:
        report.check_key_id = check_row[0]
        report.check_key = check_key_index(check_row, keys)
    for stored, found in zip(values, decrypt_all(values, keys)):
        if found is not None:
            report.per_key[found[0]] += 1
        elif looks_encrypted(stored.value):
            report.undecryptable.append(stored)
        else:
            report.plaintext.append(stored)
    return report

