"""Ketta's database migrations: alembic, its own version table, adoption of Letta-made databases.

Why it looks like this:

- Ketta's revisions live inside this package (``env.py``, ``versions/``), so a wheel carries
  them, and are recorded in ``ketta_alembic_version``, so Letta's own ``alembic_version``
  is never touched and Ketta can adopt a database Letta's migrations made.
- The baseline revision creates Letta 0.16.8's schema from a committed SQL snapshot
  (``versions/letta_0_16_8_schema.sql``), not from ``letta.orm`` at run time: a migration
  must not change when Letta's ORM or a Ketta patch changes, ``create_all()`` differs from Letta's
  migrations in 40 places, and the ORM's column types even depend on ``LETTA_PG_URI`` being set
  before ``letta`` is imported. ``tools/baseline/make_baseline_sql.py`` regenerates the snapshot
  (create_all + ``tools/baseline/create_all_corrections.sql``, checked against the reference).
- Every command runs in one transaction under ``pg_advisory_xact_lock(MIGRATION_LOCK_KEY)`` taken
  on the migration's own connection: two servers starting together on one database serialise,
  the second one finds the schema at head and does nothing. The lock is released by the commit
  or rollback, so a crashed migration cannot leave it held.
- Adoption: a database whose ``alembic_version`` says Letta 0.16.8's head (``1c28e167b74f``) and
  that has no Ketta version table gets Ketta's baseline stamped (no schema change), then the later
  revisions run. Any other state that is neither empty nor Ketta's is refused with a message.

``schema_snapshot`` / ``schema_diff`` introspect a live database in the format of the reference
data (tests/data/letta-0.16.8-schema.json) and say how two such snapshots differ.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ketta.db.database import one_shot_engine, table_exists

if TYPE_CHECKING:
    from alembic.config import Config

VERSION_TABLE = "ketta_alembic_version"
LETTA_VERSION_TABLE = "alembic_version"
LETTA_HEAD = "1c28e167b74f"  # Letta 0.16.8's last alembic revision
LETTA_VERSION = "0.16.8"
BASELINE_REVISION = "0001_letta_0_16_8"
# Ketta's own tables besides its version table (not part of Letta's schema).
ENCRYPTION_CHECK_TABLE = "ketta_encryption_check"
# The newest revision in versions/ (a test checks it): lets a start-up on an up-to-date
# database skip loading alembic at all.
HEAD_REVISION = "0010_usage_kind"
# A fixed advisory-lock key for "Ketta migrations" (the bytes of 'ketta-db' as a bigint).
MIGRATION_LOCK_KEY = int.from_bytes(b"ketta-db", "big")
SCRIPT_DIRECTORY = Path(__file__).resolve().parent
# A few of Letta's tables: if any exists without a version table, someone made this schema by hand.
LETTA_MARKER_TABLES = ("organizations", "agents", "messages", "providers", "users")
# alembic's ``context`` and ``op`` are module globals: one migration at a time per process too.
_in_process_lock = threading.Lock()


def _quiet_alembic_logs() -> None:
    """Keep alembic's "Running upgrade ..." lines, drop its per-run set-up chatter."""
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    migration_log = logging.getLogger("alembic.runtime.migration")
    if not any(isinstance(f, _SetupChatterFilter) for f in migration_log.filters):
        migration_log.addFilter(_SetupChatterFilter())


class _SetupChatterFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Context impl", "Will assume"))


_quiet_alembic_logs()  # before alembic is first imported: its plugin set-up logs at import


class MigrationError(RuntimeError):
    """A database Ketta will not migrate; the message says why and what to do."""


def _alembic_config(connection: Connection) -> "Config":
    from alembic.config import Config

    if not (SCRIPT_DIRECTORY / "env.py").is_file():
        raise MigrationError(f"Ketta's migration scripts are missing: expected {SCRIPT_DIRECTORY}/env.py")
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_DIRECTORY))
    config.attributes["connection"] = connection
    return config




def _ketta_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _adopt_or_refuse(connection: Connection, config: "Config") -> None:
    """Stamp the baseline on a Letta 0.16.8 database; refuse databases of unknown provenance."""
    from alembic import command

    if table_exists(connection, VERSION_TABLE):
        return
    if table_exists(connection, LETTA_VERSION_TABLE):
        letta_revisions = sorted(
            row[0] for row in connection.execute(sa.text(f"SELECT version_num FROM {LETTA_VERSION_TABLE}"))
        )
        if letta_revisions != [LETTA_HEAD]:
            found = ", ".join(letta_revisions) or "no revision (the table is empty)"
            raise MigrationError(
                f"This database was made by Letta's migrations but is at Letta revision {found}, and Ketta "
                f"adopts only Letta {LETTA_VERSION}'s head revision {LETTA_HEAD}. Upgrade it with letta "
                f"{LETTA_VERSION} first (Letta's `alembic upgrade head`), back it up, then start Ketta again. "
                "A database from a newer Letta cannot be used by Ketta."
            )
        command.stamp(config, BASELINE_REVISION)
        return
    present = [table for table in LETTA_MARKER_TABLES if table_exists(connection, table)]
    if present:
        raise MigrationError(
            f"This database has Letta tables ({', '.join(present)}) but neither Letta's {LETTA_VERSION_TABLE} "
            f"nor Ketta's {VERSION_TABLE} table, so its schema version is unknown and Ketta will not touch it. "
            f"If Letta {LETTA_VERSION}'s own migrations made it, restore its {LETTA_VERSION_TABLE} row "
            f"({LETTA_HEAD}); otherwise point LETTA_PG_URI at an empty database."
        )


def _locked_transaction(connection: Connection) -> None:
    """Take the migration lock inside the current transaction (released at commit/rollback)."""
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def _run(uri: str, action: Callable[[Connection, "Config"], None]) -> None:
    """Run ``action(connection, config)`` in one transaction under the migration lock."""
    from alembic.util.exc import CommandError

    engine = one_shot_engine(uri)
    try:
        with _in_process_lock, engine.connect() as connection, connection.begin():
            _locked_transaction(connection)
            action(connection, _alembic_config(connection))
    except CommandError as exc:
        raise MigrationError(str(exc)) from exc
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip() if exc.orig else str(exc)
        raise MigrationError(f"Migration failed, nothing was changed: {reason}") from exc
    finally:
        engine.dispose()


def _at_head(uri: str) -> bool:
    """Whether Ketta's version table already names the head revision (one read, no alembic)."""
    engine = one_shot_engine(uri)
    try:
        with engine.connect() as connection:
            if not table_exists(connection, VERSION_TABLE):
                return False
            versions = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
            return versions == [HEAD_REVISION]
    finally:
        engine.dispose()


def upgrade(uri: str, revision: str = "head") -> None:
    """Bring the database to ``revision``: baseline on an empty one, adoption of a Letta 0.16.8 one."""
    if revision in ("head", HEAD_REVISION) and _at_head(uri):
        return  # the usual start-up: nothing to do, and no need to load alembic
    from alembic import command

    def action(connection: Connection, config: "Config") -> None:
        _adopt_or_refuse(connection, config)
        command.upgrade(config, revision)

    _run(uri, action)


def downgrade(uri: str, revision: str) -> None:
    """Revert to ``revision``. Reverting the baseline ("base") drops every Letta table and its data."""
    from alembic import command

    def action(connection: Connection, config: "Config") -> None:
        if not table_exists(connection, VERSION_TABLE):
            raise MigrationError(f"This database has no {VERSION_TABLE} table: Ketta has not migrated it, nothing to revert.")
        command.downgrade(config, revision)

    _run(uri, action)


def current(uri: str) -> str | None:
    """Ketta's revision of the database, or None if Ketta has not migrated it."""
    engine = one_shot_engine(uri)
    try:
        with engine.connect() as connection:
            return _ketta_revision(connection)
    finally:
        engine.dispose()


def baseline_sql() -> str:
    """The committed Letta 0.16.8 schema snapshot the baseline revision executes."""
    return (SCRIPT_DIRECTORY / "versions" / "letta_0_16_8_schema.sql").read_text()


# --- schema introspection in the reference-data format -------------------------------------

_INDEX_NAME = re.compile(r"^(CREATE (?:UNIQUE )?INDEX) \S+ ON ")


def schema_snapshot(connection: Connection, *, exclude_tables: tuple[str, ...] = (LETTA_VERSION_TABLE,)) -> dict[str, list[Any]]:
    """Columns, indexes, constraints, sequences and extensions of schema ``public``, sorted.

    Same shape as tests/data/letta-0.16.8-schema.json: names of indexes and constraints are left
    out (Letta's migrations and create_all name some of them differently), and so is Letta's
    ``alembic_version`` table unless ``exclude_tables`` says otherwise.
    """
    excluded = list(exclude_tables) or [""]
    params = {"excluded": excluded}
    columns = [
        [table, column, data_type, nullable, default]
        for table, column, data_type, nullable, default in connection.execute(sa.text(
            "SELECT table_name, column_name, data_type, is_nullable = 'YES', column_default "
            "FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> ALL(:excluded)"
        ), params)
    ]
    indexes = [
        [table, _INDEX_NAME.sub(r"\1 ON ", definition)]
        for table, definition in connection.execute(sa.text(
            "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename <> ALL(:excluded)"
        ), params)
    ]
    constraints = [
        [table, definition]
        for table, definition in connection.execute(sa.text(
            "SELECT rel.relname, pg_get_constraintdef(con.oid) FROM pg_constraint con "
            "JOIN pg_class rel ON rel.oid = con.conrelid JOIN pg_namespace ns ON ns.oid = con.connamespace "
            "WHERE ns.nspname = 'public' AND rel.relname <> ALL(:excluded)"
        ), params)
    ]
    sequences = [row[0] for row in connection.execute(sa.text(
        "SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = 'public'"
    ))]
    extensions = [row[0] for row in connection.execute(sa.text("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql'"))]
    snapshot = {"columns": columns, "indexes": indexes, "constraints": constraints, "sequences": sequences, "extensions": extensions}
    return {key: sorted(rows, key=str) for key, rows in snapshot.items()}


def _rows(snapshot: dict[str, list[Any]], key: str) -> Iterator[str]:
    return (str(list(row) if isinstance(row, (list, tuple)) else row) for row in snapshot.get(key, []))


def schema_diff(actual: dict[str, list[Any]], expected: dict[str, list[Any]]) -> list[str]:
    """Readable differences, one line each ("columns missing: [...]" / "columns extra: [...]").

    Counts duplicates (two identical indexes are two rows), so an extra copy is reported.
    """
    lines: list[str] = []
    for key in sorted(set(actual) | set(expected)):
        have, want = Counter(_rows(actual, key)), Counter(_rows(expected, key))
        lines += [f"{key} missing: {row}" for row in sorted((want - have).elements())]
        lines += [f"{key} extra:   {row}" for row in sorted((have - want).elements())]
    return lines


def snapshot_database(uri: str, **kwargs: Any) -> dict[str, list[Any]]:
    """``schema_snapshot`` of the database at ``uri``."""
    engine = one_shot_engine(uri)
    try:
        with engine.connect() as connection:
            return schema_snapshot(connection, **kwargs)
    finally:
        engine.dispose()
