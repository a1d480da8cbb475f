"""Workers starting together on a new database (ketta/letta_modifications/services/
organization_manager.py and user_manager.py): each gets the default organization and user, none
fails its start-up on a duplicate key. Letta's start-up code runs in a subprocess, several times
at once, on an empty database migrated by Ketta."""

from __future__ import annotations

import json
import subprocess
import sys

import sqlalchemy as sa

from conftest import clean_env
from ketta.db import migrations
from ketta.db.database import sync_url

_STARTS = """
import asyncio, json, sys
from ketta import letta_modifications
from ketta.core.settings import KettaSettings
letta_modifications.apply_all(KettaSettings(unified_providers=sys.argv[1] == "on"))
from letta.services.organization_manager import OrganizationManager
from letta.services.user_manager import UserManager

async def start():  # what every worker's SyncServer does first
    org = await OrganizationManager().create_default_organization_async()
    user = await UserManager().create_default_actor_async()
    return org.id, user.id

async def main(n):
    results = await asyncio.gather(*(start() for _ in range(n)), return_exceptions=True)
    print(json.dumps([r if isinstance(r, tuple) else f"{type(r).__name__}: {r}"[:200] for r in results]))

asyncio.run(main(int(sys.argv[2])))
"""


def starts(database_uri: str, patched: bool, n: int = 6) -> list:
    done = subprocess.run([sys.executable, "-c", _STARTS, "on" if patched else "off", str(n)],
                          env=clean_env(LETTA_PG_URI=database_uri), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def count(database_uri: str, table: str) -> int:
    engine = sa.create_engine(sync_url(database_uri), poolclass=sa.NullPool)
    with engine.connect() as conn:
        found = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    engine.dispose()
    return found


def test_starts_at_once_on_a_new_database_all_get_the_default_org_and_user(make_database) -> None:
    uri = make_database()
    migrations.upgrade(uri)
    results = starts(uri, patched=True)
    assert all(isinstance(r, list) and r[0].startswith("org-") and r[1].startswith("user-") for r in results), results
    assert len({tuple(r) for r in results}) == 1
    assert count(uri, "organizations") == 1 and count(uri, "users") == 1


def test_stock_letta_loses_the_race(make_database) -> None:
    """The race is real: without the patches, some of the simultaneous starts fail on the insert."""
    uri = make_database()
    migrations.upgrade(uri)
    results = starts(uri, patched=False)
    assert any(isinstance(r, str) and ("duplicate key" in r or "Unique" in r or "Integrity" in r) for r in results), results
