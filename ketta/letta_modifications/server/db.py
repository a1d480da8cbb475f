"""Patches of ``letta/server/db.py``: pooled database connections that work.

Letta 0.16.8 opens a new PostgreSQL connection for every session by default
(``disable_sqlalchemy_pooling=True``, NullPool): TCP, SCRAM authentication and an SSL context
each time. Its pooled path fails at start-up (``RuntimeError: generator didn't stop after
athrow()``) for two reasons that compound:

- with pooling on, Letta forces ``ssl="require"`` unless the URI names ``ssl``/``sslmode``, so
  a server without SSL (the embedded one, most local and compose set-ups) refuses the first
  connection (``ConnectionError: ... rejected SSL upgrade``);
- ``DatabaseRegistry.async_session`` retries on ``ConnectionError`` by looping back to its
  ``yield``: an error raised in the caller's block (where the lazy connection is made) is thrown
  into the generator, caught, and the generator yields a second session, which
  ``contextlib.asynccontextmanager`` reports as "generator didn't stop after athrow()". The
  same happens, pooled or not, when the database is down.

Ketta replaces the session: sessions of one pooled engine per process and event loop
(:mod:`ketta.db.engine`), so connections to a restarted PostgreSQL are replaced instead of
failing, with SSL exactly as the URI says. A session yields once; a lost database answers 503 (Letta's handler for
``LettaServiceUnavailableError``) and the next request after the outage gets a fresh connection.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession

from ketta.core.patching import Patch
from ketta.core.settings import get_settings
from ketta.db import round_trips
from ketta.db.engine import close_this_loops_pool, connection_lost, session_factory
from ketta.db.round_trips import START_TRANSACTION_TARGET

log = logging.getLogger("ketta.db")


async def _rollback_quietly(session: AsyncSession) -> None:
    try:
        await session.rollback()
    except Exception as exc:  # noqa: BLE001 - the connection may be gone; the first error matters
        log.debug("rollback after an error failed: %s", exc)


@asynccontextmanager
async def async_session(self: Any) -> AsyncIterator[AsyncSession]:
    """A session on the pool; commit on success, rollback on error or cancellation; yields once."""
    from letta.errors import LettaServiceUnavailableError

    factory = session_factory()
    # A method whose sessions write one statement each (ketta.db.round_trips.writes_alone): the
    # session's connection (same pool) runs outside a transaction block; the session itself is as
    # any other (an explicit session.begin() of Letta's still works).
    # Not behind a transaction-mode PgBouncer: there a statement outside a transaction may have its
    # prepare and execute sent to different server connections (as for the deferred BEGIN).
    alone = round_trips.sessions_write_alone() and not get_settings().db_pgbouncer
    bind = factory.kw["bind"].execution_options(**round_trips.AUTOCOMMIT) if alone else None
    async with (factory(bind=bind) if bind is not None else factory()) as session:
        try:
            yield session
            await session.commit()
        except BaseException as error:  # CancelledError too: no connection goes back mid-transaction
            await _rollback_quietly(session)
            if isinstance(error, Exception) and connection_lost(error):
                raise LettaServiceUnavailableError(
                    "The database is unreachable (restarting or down); retry shortly.", service_name="database"
                ) from error
            raise
        finally:
            session.expunge_all()


async def close_db() -> None:
    """Close this event loop's pool (at shutdown)."""
    await close_this_loops_pool()


PATCHES = [
    Patch(
        target="letta.server.db:DatabaseRegistry.async_session",
        replacement=async_session,
        fingerprint="60418165ddc6ef44",
        setting="db_pool",
        why="Pooled connections (pre-ping, recycle) instead of a new connection per session; Letta's pooled path "
        "forces SSL and re-yields on connection errors ('generator didn't stop after athrow()').",
    ),
    Patch(
        target=START_TRANSACTION_TARGET,
        replacement=round_trips.start_transaction_unless_reading,
        fingerprint="dfb341d6a7996e98",
        setting="db_fewer_round_trips",
        requires="sqlalchemy>=2.1,<2.2",
        why="BEGIN only before a session's first write: a session that only reads (most of Letta's) costs no "
        "BEGIN/COMMIT. Inert on engines other than Ketta's session engine (ketta.db.round_trips.install).",
    ),
    Patch(
        target="letta.server.db:close_db",
        replacement=close_db,
        fingerprint="1fe3834824215260",
        setting="db_pool",
        why="Shutdown closes Ketta's pool.",
    ),
]
