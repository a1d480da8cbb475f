"""Where the encryption keys come from, and the keyring this process decrypts with.

The current key (``LETTA_ENCRYPTION_KEY``, else ``KETTA_HOME/encryption_key``) encrypts; it and
the previous keys (``KETTA_PREVIOUS_ENCRYPTION_KEYS``, then ``encryption_key`` if the env var is
the current key, an unfinished rotation's ``encryption_key.next``, then the
``encryption_key.*.old`` files, newest first) decrypt. Replicas can then be restarted one by one
onto a new key. Key files are written 0600 from their creation; ``ketta keys export/import``
carry the keyring to another machine.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ketta.core.settings import KettaSettings
from ketta.security.keyring.cipher import fingerprint, generate_key

log = logging.getLogger("ketta.keyring")

ENV_KEY = "LETTA_ENCRYPTION_KEY"
ENV_PREVIOUS = "KETTA_PREVIOUS_ENCRYPTION_KEYS"
KEY_FILE = "encryption_key"
NEXT_FILE = "encryption_key.next"  # a rotation's new key, until the database has committed it
OLD_SUFFIX = ".old"


class KeyringError(RuntimeError):
    """The configured keys cannot be used with this database; the message says what to do."""


def validate_new_key(key: str) -> str:
    """A key given by the operator: at least 16 characters, no comma or white space (keys are
    listed comma-separated in KETTA_PREVIOUS_ENCRYPTION_KEYS)."""
    key = key.strip()
    if len(key) < 16 or any(c == "," or c.isspace() for c in key):
        raise KeyringError("A new encryption key needs at least 16 characters and no comma or white space "
                           "(`ketta keys generate` makes one).")
    return key



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


def _written_beside(path: Path, key: str) -> Path:
    """A new file beside ``path`` holding ``key``, readable by its owner only (mode 0600 from its
    creation), named for this process alone (another process may be writing the same key file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def write_key_file(path: Path, key: str) -> None:
    """Write (or replace) a key file readable by its owner only."""
    os.replace(_written_beside(path, key), path)


def create_key_file(path: Path, key: str) -> bool:
    """Write a key file only if none exists; False if another process made it first (workers of
    ``uvicorn --factory`` start on a new KETTA_HOME at once: each must end up with the same key,
    never one replacing the key another has already written the database's check value with)."""
    tmp = _written_beside(path, key)
    try:
        os.link(tmp, path)  # atomic, and fails if the name exists
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


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
            if create_key_file(key_file, generate_key()):
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



def archive_name(home: Path, now: dt.datetime | None = None) -> Path:
    """``encryption_key.<UTC date and time>.old``, unique in ``home``."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    path, n = home / f"{KEY_FILE}.{stamp}{OLD_SUFFIX}", 1
    while path.exists():
        path, n = home / f"{KEY_FILE}.{stamp}-{n}{OLD_SUFFIX}", n + 1
    return path



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
