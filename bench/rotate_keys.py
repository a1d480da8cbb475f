"""Time ``ketta keys rotate`` over N stored secrets (default 10 000) on a real PostgreSQL.

    .venv/bin/python bench/rotate_keys.py                # embedded PostgreSQL in a temp dir
    .venv/bin/python bench/rotate_keys.py --secrets 2000 --json figures.json

It migrates an empty database to Ketta's head, stores N provider keys the way Letta writes
them (AES-GCM, one PBKDF2 salt per value, so each value costs a key derivation to decrypt),
then times two rotations with ``ketta.security.keyring.rotate``:

1. A -> B over the Letta-written values (the first rotation of a database);
2. B -> C over the values the first rotation wrote (one salt per rotation: one derivation).

For each it prints the total time and how long the locked transaction took (the time writers
to the encrypted tables wait; servers keep reading throughout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ketta.security import keyring  # noqa: E402
from ketta.db import migrations
from ketta.db.database import EmbeddedPostgres, sync_url, with_database  # noqa: E402

ORG = "org-bench-rotation"


def store_secrets(uri: str, count: int, key: str) -> float:
    """N providers whose api_key_enc is encrypted as Letta does (fresh salt each); seconds taken."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        values = list(pool.map(lambda i: keyring.encrypt(f"sk-bench-{i:06d}-{uuid.uuid4().hex}", key), range(count)))
    engine = sa.create_engine(sync_url(uri), poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO organizations (id, name, privileged_tools) VALUES (:o, 'bench', false)"), {"o": ORG})
            conn.execute(sa.text(
                "INSERT INTO providers (id, name, organization_id, provider_type, api_key_enc) "
                "SELECT 'provider-' || n, 'p' || n, :o, 'openai', v FROM unnest(CAST(:v AS text[])) WITH ORDINALITY AS t(v, n)"
            ), {"o": ORG, "v": values})
    finally:
        engine.dispose()
    return time.monotonic() - started


def ring(*keys: str) -> keyring.Keyring:
    return keyring.Keyring(tuple(keyring.Key(k, f"bench{i}") for i, k in enumerate(keys)), Path("."), True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    key_a, key_b, key_c = (keyring.generate_key() for _ in range(3))

    with tempfile.TemporaryDirectory(prefix="ketta-bench-keys-") as work:
        external = os.environ.get("LETTA_PG_URI")
        postgres = None if external else EmbeddedPostgres(home=Path(work) / "pg")
        admin_uri = with_database(external or postgres.start(), "postgres")
        database = f"bench_keys_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(sync_url(admin_uri), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
        uri = with_database(admin_uri, database)
        try:
            migrations.upgrade(uri)
            stored_s = store_secrets(uri, args.secrets, key_a)
            keyring.verify(uri, ring(key_a))
            print(f"stored {args.secrets} secrets as Letta does in {stored_s:.1f}s ({os.cpu_count()} CPUs)")
            keyring._derive.cache_clear()  # as in a fresh `ketta keys rotate` process
            first = keyring.rotate(uri, ring(key_a), key_b)
            print(f"rotation A->B (Letta-written values): {first.seconds:.1f}s total, {first.locked_seconds:.2f}s locked, "
                  f"{first.rotated} values")
            keyring._derive.cache_clear()
            second = keyring.rotate(uri, ring(key_b, key_a), key_c)
            print(f"rotation B->C (values of a previous rotation): {second.seconds:.1f}s total, "
                  f"{second.locked_seconds:.2f}s locked, {second.rotated} values")
            check = keyring.check(uri, ring(key_c))
            assert check.per_key == [args.secrets] and not check.undecryptable, check
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            admin.dispose()
            if postgres is not None:
                postgres.stop()
    figures = {"secrets": args.secrets, "cpus": os.cpu_count(), "store_s": stored_s,
               "first_rotation_s": first.seconds, "first_rotation_locked_s": first.locked_seconds,
               "second_rotation_s": second.seconds, "second_rotation_locked_s": second.locked_seconds}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
