"""ketta.security.keyring (check, rotation, key files) on a real PostgreSQL: the check value, ``keys check`` counts, rotation (all
encrypted columns, nothing lost, abort on an undecryptable row with nothing changed), key files.

Rows are written here with SQL in Letta's ciphertext format (the end-to-end tests store them
through a server over REST); that ``ketta.security.keyring`` and Letta's ``CryptoUtils`` read each
other's values is tested in tests/letta_modifications/helpers/test_crypto_utils.py.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from conftest import clean_env
from ketta.security.keyring import check, cipher, key_files, rotation, stored
from ketta.db import migrations
from ketta.db.database import sync_url
from ketta.core.settings import KettaSettings

KEY_A = "key-A-" + "a" * 40
KEY_B = "key-B-" + "b" * 40
KEY_X = "key-X-" + "x" * 40  # a key no keyring here holds
ORG = "org-keys-test"

# (table, column, row id, plaintext) of every value the seeded database stores.
SECRETS = [
    ("providers", "api_key_enc", "provider-1", "sk-provider-one"),
    ("providers", "access_key_enc", "provider-1", "AKIA-access-key"),
    ("providers", "api_key_enc", "provider-2", "sk-provider-two"),
    ("mcp_server", "token_enc", "mcp-1", "mcp-token"),
    ("mcp_server", "custom_headers_enc", "mcp-1", '{"X-Api-Key": "header-secret"}'),
    ("sandbox_environment_variables", "value_enc", "sbx-env-1", "sandbox-secret"),
]


@pytest.fixture
def db(database_uri: str) -> Iterator[tuple[str, sa.Engine]]:
    migrations.upgrade(database_uri)
    engine = sa.create_engine(sync_url(database_uri), poolclass=sa.NullPool)
    yield database_uri, engine
    engine.dispose()


def seed(engine: sa.Engine, key: str) -> None:
    """Letta's rows holding each kind of secret, each encrypted (own salt) with ``key``."""
    enc = {(t, c, i): cipher.encrypt(p, key) for t, c, i, p in SECRETS}
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO organizations (id, name, privileged_tools) VALUES (:o, 'o', false)"), {"o": ORG})
        for pid, name in (("provider-1", "one"), ("provider-2", "two")):
            conn.execute(sa.text(
                "INSERT INTO providers (id, name, organization_id, provider_type, api_key_enc, access_key_enc, updated_at) "
                "VALUES (:id, :n, :o, 'openai', :k, :a, '2026-01-01T00:00:00Z')"
            ), {"id": pid, "n": name, "o": ORG, "k": enc[("providers", "api_key_enc", pid)],
                "a": enc.get(("providers", "access_key_enc", pid))})
        conn.execute(sa.text(
            "INSERT INTO mcp_server (id, server_name, server_type, organization_id, token_enc, custom_headers_enc) "
            "VALUES ('mcp-1', 'm', 'sse', :o, :t, :h)"
        ), {"o": ORG, "t": enc[("mcp_server", "token_enc", "mcp-1")], "h": enc[("mcp_server", "custom_headers_enc", "mcp-1")]})
        conn.execute(sa.text("INSERT INTO sandbox_configs (id, type, config, organization_id) VALUES ('sbx-1', 'LOCAL', '{}', :o)"), {"o": ORG})
        conn.execute(sa.text(
            "INSERT INTO sandbox_environment_variables (id, key, value, value_enc, sandbox_config_id, organization_id) "
            "VALUES ('sbx-env-1', 'K', '', :v, 'sbx-1', :o)"
        ), {"o": ORG, "v": enc[("sandbox_environment_variables", "value_enc", "sbx-env-1")]})


def stored_cells(engine: sa.Engine) -> dict[tuple[str, str, str], str]:
    """Every non-null *_enc cell plus the check row, as stored."""
    with engine.connect() as conn:
        values = {(v.table, v.column, v.row_id): v.value for v in stored.read_values(conn, stored.encrypted_columns(conn))}
        check = stored.read_check(conn)
    if check:
        values[(stored.CHECK_TABLE, "check_enc", "1")] = check[1]
    return values


def ring(tmp_path: Path, *keys: str) -> key_files.Keyring:
    return key_files.Keyring(tuple(key_files.Key(k, f"key{i}") for i, k in enumerate(keys)), tmp_path, True)


def test_every_enc_column_of_letta_is_found(db) -> None:
    _, engine = db
    with engine.connect() as conn:
        columns = stored.encrypted_columns(conn)
    assert columns == [
        ("agent_environment_variables", "value_enc"),
        ("mcp_oauth", "access_token_enc"), ("mcp_oauth", "authorization_code_enc"),
        ("mcp_oauth", "client_secret_enc"), ("mcp_oauth", "refresh_token_enc"),
        ("mcp_server", "custom_headers_enc"), ("mcp_server", "token_enc"),
        ("providers", "access_key_enc"), ("providers", "api_key_enc"),
        ("sandbox_environment_variables", "value_enc"),
    ]


def test_fresh_database_gets_the_check_value_and_a_wrong_key_is_refused(db, tmp_path: Path) -> None:
    uri, engine = db
    assert check.verify(uri, ring(tmp_path, KEY_A)).value == KEY_A
    with engine.connect() as conn:
        key_id, token = stored.read_check(conn)
    assert key_id == cipher.fingerprint(KEY_A) and cipher.decrypt(token, KEY_A) == stored.CHECK_TOKEN

    with pytest.raises(key_files.KeyringError) as refused:
        check.verify(uri, ring(tmp_path, KEY_B))
    message = str(refused.value)
    assert "\n" not in message and "LETTA_ENCRYPTION_KEY" in message and key_id in message
    assert "KETTA_PREVIOUS_ENCRYPTION_KEYS" in message
    # A keyring holding A as a previous key reads it.
    assert check.verify(uri, ring(tmp_path, KEY_B, KEY_A)).value == KEY_A


def test_database_without_check_value_is_judged_on_its_stored_secrets(db, tmp_path: Path) -> None:
    uri, engine = db
    seed(engine, KEY_A)
    with pytest.raises(key_files.KeyringError, match="none of .* sampled stored secrets"):
        check.verify(uri, ring(tmp_path, KEY_B))
    assert stored_cells(engine).get((stored.CHECK_TABLE, "check_enc", "1")) is None  # refused: nothing written
    assert check.verify(uri, ring(tmp_path, KEY_B, KEY_A)).value == KEY_A  # check value under the key that reads them
    with engine.connect() as conn:
        assert stored.read_check(conn)[0] == cipher.fingerprint(KEY_A)


def test_check_counts_what_each_key_decrypts(db, tmp_path: Path) -> None:
    uri, engine = db
    seed(engine, KEY_A)
    with engine.begin() as conn:  # one value under B, one stored unencrypted (Letta without a key), one unreadable
        conn.execute(sa.text("UPDATE providers SET api_key_enc = :v WHERE id = 'provider-2'"), {"v": cipher.encrypt("sk-b", KEY_B)})
        conn.execute(sa.text("UPDATE providers SET access_key_enc = 'plain-access-key' WHERE id = 'provider-2'"))
        conn.execute(sa.text("UPDATE mcp_server SET token_enc = :v"), {"v": cipher.encrypt("t", KEY_X)})
    check.verify(uri, ring(tmp_path, KEY_A))
    report = check.check(uri, ring(tmp_path, KEY_A, KEY_B))
    assert report.per_key == [4, 1]
    assert [v.where for v in report.plaintext] == ["providers.access_key_enc of row provider-2"]
    assert [v.where for v in report.undecryptable] == ["mcp_server.token_enc of row mcp-1"]
    assert report.check_key == 0 and report.check_key_id == cipher.fingerprint(KEY_A)


def test_rotation_reencrypts_every_value_and_the_check_value(db, tmp_path: Path) -> None:
    uri, engine = db
    seed(engine, KEY_A)
    with engine.begin() as conn:  # a value Letta stored unencrypted gets encrypted too
        conn.execute(sa.text("UPDATE providers SET access_key_enc = 'plain-access-key' WHERE id = 'provider-2'"))
    check.verify(uri, ring(tmp_path, KEY_A))
    with engine.connect() as conn:
        updated_before = conn.execute(sa.text("SELECT id, updated_at FROM providers ORDER BY id")).all()

    result = rotation.rotate(uri, ring(tmp_path, KEY_A), KEY_B)

    assert result.rotated == len(SECRETS) + 1 and result.plaintext == 1 and result.skipped == []
    after = stored_cells(engine)
    expected = {(t, c, i): p for t, c, i, p in SECRETS} | {("providers", "access_key_enc", "provider-2"): "plain-access-key",
                                                           (stored.CHECK_TABLE, "check_enc", "1"): stored.CHECK_TOKEN}
    assert {k: cipher.decrypt(v, KEY_B) for k, v in after.items()} == expected
    for value in after.values():
        with pytest.raises(ValueError):
            cipher.decrypt(value, KEY_A)
    with engine.connect() as conn:
        assert stored.read_check(conn)[0] == cipher.fingerprint(KEY_B)
        assert conn.execute(sa.text("SELECT id, updated_at FROM providers ORDER BY id")).all() == updated_before
    with pytest.raises(key_files.KeyringError):
        check.verify(uri, ring(tmp_path, KEY_A))
    assert check.verify(uri, ring(tmp_path, KEY_B)).value == KEY_B


def test_rotation_over_an_undecryptable_row_aborts_naming_it_and_changes_nothing(db, tmp_path: Path) -> None:
    uri, engine = db
    seed(engine, KEY_A)
    check.verify(uri, ring(tmp_path, KEY_A))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE providers SET api_key_enc = :v WHERE id = 'provider-2'"), {"v": cipher.encrypt("sk-x", KEY_X)})
    before = stored_cells(engine)

    with pytest.raises(rotation.RotationAborted) as aborted:
        rotation.rotate(uri, ring(tmp_path, KEY_A), KEY_B)
    assert "providers.api_key_enc of row provider-2" in str(aborted.value)
    assert "Nothing was changed" in str(aborted.value)
    assert stored_cells(engine) == before

    # With the flag it is listed, left as it was, and everything else is rotated.
    result = rotation.rotate(uri, ring(tmp_path, KEY_A), KEY_B, skip_undecryptable=True)
    assert [v.where for v in result.skipped] == ["providers.api_key_enc of row provider-2"]
    after = stored_cells(engine)
    assert after[("providers", "api_key_enc", "provider-2")] == before[("providers", "api_key_enc", "provider-2")]
    assert cipher.decrypt(after[("providers", "api_key_enc", "provider-1")], KEY_B) == "sk-provider-one"


def test_rotation_leaves_old_key_file_and_keyring_reads_it(db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, engine = db
    monkeypatch.delenv("LETTA_ENCRYPTION_KEY", raising=False)
    home = tmp_path / "home"
    settings = KettaSettings(home=home)
    keys = key_files.load_keyring(settings)  # makes KETTA_HOME/encryption_key
    old = keys.current.value
    assert stat.S_IMODE((home / "encryption_key").stat().st_mode) == 0o600
    seed(engine, old)
    check.verify(uri, keys)

    _, archived = rotation.rotate_with_files(uri, keys, KEY_B)

    assert archived is not None and archived.name.startswith("encryption_key.") and archived.name.endswith(".old")
    assert archived.read_text().strip() == old and stat.S_IMODE(archived.stat().st_mode) == 0o600
    assert (home / "encryption_key").read_text().strip() == KEY_B
    assert not (home / key_files.NEXT_FILE).exists()
    reloaded = key_files.load_keyring(settings)
    assert reloaded.values() == [KEY_B, old] and reloaded.keys[1].source == str(archived)
    assert check.verify(uri, reloaded).value == KEY_B


def test_a_failed_rotation_leaves_the_key_files_alone(db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, engine = db
    monkeypatch.delenv("LETTA_ENCRYPTION_KEY", raising=False)
    home = tmp_path / "home"
    keys = key_files.load_keyring(KettaSettings(home=home))
    seed(engine, KEY_X)
    with pytest.raises(rotation.RotationAborted):
        rotation.rotate_with_files(uri, keys, KEY_B)
    assert sorted(p.name for p in home.iterdir()) == ["encryption_key"]
    assert (home / "encryption_key").read_text().strip() == keys.current.value


def test_export_then_import_on_another_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LETTA_ENCRYPTION_KEY", raising=False)
    here = tmp_path / "here"
    key_files.import_keys(here, KEY_B, [KEY_A])
    exported = key_files.export_text(key_files.load_keyring(KettaSettings(home=here)))
    assert exported.splitlines()[1:] == [f"LETTA_ENCRYPTION_KEY={KEY_B}", f"KETTA_PREVIOUS_ENCRYPTION_KEYS={KEY_A}"]

    there = tmp_path / "there"
    key_files.load_keyring(KettaSettings(home=there))  # a fresh install made its own key
    with pytest.raises(key_files.KeyringError, match="--force"):
        key_files.import_keys(there, *key_files.parse_export(exported))
    made = (there / "encryption_key").read_text().strip()
    key_files.import_keys(there, *key_files.parse_export(exported), force=True)
    assert key_files.load_keyring(KettaSettings(home=there)).values()[:1] == [KEY_B]
    assert set(key_files.load_keyring(KettaSettings(home=there)).values()) == {KEY_B, KEY_A, made}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in there.iterdir())


def test_previous_keys_setting_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETTA_ENCRYPTION_KEY", KEY_B)
    settings = KettaSettings(home=tmp_path, previous_encryption_keys=f" {KEY_A} ,{KEY_B},")
    keys = key_files.load_keyring(settings)
    assert keys.values() == [KEY_B, KEY_A] and keys.current_from_env
    assert [k.source for k in keys.keys] == ["LETTA_ENCRYPTION_KEY", "KETTA_PREVIOUS_ENCRYPTION_KEYS[0]"]
    assert KEY_A not in repr(keys) and KEY_A not in repr(settings)
    # A key file left in KETTA_HOME (from before LETTA_ENCRYPTION_KEY was set) still decrypts.
    key_files.write_key_file(tmp_path / "encryption_key", KEY_X)
    assert key_files.load_keyring(settings).values() == [KEY_B, KEY_A, KEY_X]
    for bad in ("short", "has,comma-0123456789", "has space 0123456789"):
        with pytest.raises(key_files.KeyringError):
            key_files.validate_new_key(bad)


def test_cli_rotate_and_check(db, tmp_path: Path) -> None:
    uri, engine = db
    seed(engine, KEY_A)
    env = clean_env(LETTA_PG_URI=uri, KETTA_HOME=str(tmp_path / "home"), LETTA_ENCRYPTION_KEY=KEY_A)

    def ketta(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ketta", "keys", *args], env={**env, **extra},
                              capture_output=True, text=True, timeout=300)

    checked = ketta("check")
    assert checked.returncode == 0, checked.stderr
    assert f"current  key id {cipher.fingerprint(KEY_A)}  LETTA_ENCRYPTION_KEY: decrypts {len(SECRETS)} of {len(SECRETS)}" in checked.stdout

    refused = ketta("rotate")  # LETTA_ENCRYPTION_KEY set: the new key must be given
    assert refused.returncode == 1 and "--new-key" in refused.stderr

    rotated = ketta("rotate", "--new-key", KEY_B)
    assert rotated.returncode == 0, rotated.stderr
    assert f"re-encrypted {len(SECRETS)} stored values" in rotated.stdout
    assert KEY_A not in rotated.stdout + rotated.stderr and KEY_B not in rotated.stdout + rotated.stderr

    wrong = ketta("check")  # only A: the check value (written by the rotation under B) is unreadable
    assert wrong.returncode == 1 and "cannot decrypt" in wrong.stderr
    both = ketta("check", LETTA_ENCRYPTION_KEY=KEY_B, KETTA_PREVIOUS_ENCRYPTION_KEYS=KEY_A)
    assert both.returncode == 0, both.stderr
    assert f"previous key id {cipher.fingerprint(KEY_A)}  KETTA_PREVIOUS_ENCRYPTION_KEYS[0]: decrypts 0 of" in both.stdout


def test_env_key_that_cannot_read_the_database_while_the_key_file_can_is_refused(
        db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Serving would write new secrets under a key saved nowhere (issue 18): refused in one line;
    a rotation stays possible by naming the old key as a previous key."""
    uri, engine = db
    seed(engine, KEY_A)
    key_files.write_key_file(tmp_path / "encryption_key", KEY_A)
    for with_check in (False, True):  # a database without its check value yet, then with it
        monkeypatch.setenv("LETTA_ENCRYPTION_KEY", KEY_B)
        keys = key_files.load_keyring(KettaSettings(home=tmp_path))
        with pytest.raises(key_files.KeyringError) as refused:
            check.verify(uri, keys)
        message = str(refused.value)
        assert "\n" not in message and "ketta keys rotate" in message and str(tmp_path / "encryption_key") in message
        assert KEY_A not in message and KEY_B not in message
        if not with_check:
            monkeypatch.delenv("LETTA_ENCRYPTION_KEY")  # the file's key alone records the check value
            assert check.verify(uri, key_files.load_keyring(KettaSettings(home=tmp_path))).value == KEY_A
    # Named explicitly as a previous key: a rotation under way, served (with a warning).
    monkeypatch.setenv("LETTA_ENCRYPTION_KEY", KEY_B)
    keys = key_files.load_keyring(KettaSettings(home=tmp_path, previous_encryption_keys=KEY_A))
    assert check.verify(uri, keys).value == KEY_A


def test_workers_starting_at_once_on_a_new_home_end_up_with_one_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers of ``uvicorn --factory`` start on a new KETTA_HOME at once: each makes a key when it
    finds none. The one that comes second must take the first one's key file (the database's check
    value may already be written with it), never replace it with its own."""
    monkeypatch.delenv("LETTA_ENCRYPTION_KEY", raising=False)
    settings = KettaSettings(home=tmp_path)
    key_file = tmp_path / "encryption_key"
    ours = cipher.generate_key()

    def another_worker_wrote_first() -> str:  # between this worker's "no key file" and its write
        key_files.write_key_file(key_file, KEY_A)
        return ours

    monkeypatch.setattr(key_files, "generate_key", another_worker_wrote_first)
    keys = key_files.load_keyring(settings)
    assert keys.values() == [KEY_A]
    assert key_file.read_text().strip() == KEY_A
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encryption_key"]  # no temporary file left
