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

Ketta replaces the session: one engine per process (per event loop) with a queue pool
(KETTA_DB_POOL_SIZE, KETTA_DB_MAX_OVERFLOW), ``pool_pre_ping`` and ``pool_recycle``
(KETTA_DB_POOL_RECYCLE) so connections to a restarted PostgreSQL are replaced instead of
failing, SSL exactly as the URI says (asyncpg's libpq-like default otherwise), prepared
statements cached unless KETTA_DB_PGBOUNCER says a transaction-mode PgBouncer is in between.
A session yields once; a lost database answers 503 (Letta's handler for
``LettaServiceUnavailableError``) and the next request after the outage gets a fresh connection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from ketta.core.patching import Patch
from ketta.core.settings import get_settings
from ketta.db import round_trips
from ketta.db.round_trips import START_TRANSACTION_TARGET

log = logging.getLogger("ketta.db")

# event loop id -> (that loop, engine, session factory); an asyncpg connection belongs to one loop.
_engines: dict[int, tuple[asyncio.AbstractEventLoop, AsyncEngine, async_sessionmaker[AsyncSession]]] = {}


def engine_options() -> dict[str, Any]:
    """create_async_engine keyword arguments from Ketta's settings."""
    settings = get_settings()
    options: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_recycle": settings.db_pool_recycle,
        "pool_pre_ping": not settings.db_fewer_round_trips,  # else ketta.db.round_trips checks on checkout
        "pool_timeout": 30,
        "pool_use_lifo": True,  # the fewest connections stay warm; idle ones age out by recycle
    }
    if settings.db_pgbouncer:
        # PgBouncer in transaction mode hands each transaction any server connection: no named
        # prepared statements may outlive a transaction.
        options["connect_args"] = {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__",
        }
    return options


def _async_uri() -> str:
    from letta.database_utils import get_database_uri_for_context
    from letta.settings import settings as letta_settings

    return get_database_uri_for_context(letta_settings.letta_pg_uri, "async")


def session_factory() -> async_sessionmaker[AsyncSession]:
    """This event loop's session factory (engine made on first use)."""
    loop = asyncio.get_running_loop()
    made = _engines.get(id(loop))
    if made is None or made[0] is not loop:
        _release_closed_loops()
        engine = create_async_engine(_async_uri(), **engine_options())
        settings = get_settings()
        if settings.db_fewer_round_trips:
            round_trips.install(engine, ping_after_idle_s=settings.db_ping_after_idle, defer_begin=not settings.db_pgbouncer)
            round_trips.skip_unused_relationships(engine)
        factory = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False, autoflush=False)
        made = _engines[id(loop)] = (loop, engine, factory)
        log.debug("database pool: size %s, overflow %s", engine.pool.size(), get_settings().db_max_overflow)
    return made[2]


def _release_closed_loops() -> None:
    """Drop the pools of event loops that have ended (``asyncio.run`` in a thread, a test's loop).

    Their connections cannot be closed politely (that needs their loop): the pool forgets them
    and the garbage collector closes their sockets, so PostgreSQL ends those sessions instead of
    keeping them until it runs out of connection slots."""
    closed = [key for key, (loop, _, _) in _engines.items() if loop.is_closed()]
    for key in closed:
        _, engine, _ = _engines.pop(key)
        engine.sync_engine.dispose(close=False)
    if closed:
        gc.collect()
        global _heap_frozen
        if not _heap_frozen:
            # Once: what is alive now (Letta's modules, classes and schemas: millions of objects)
            # is kept out of every later collection, which then scans only what came after. A
            # full collection took 0.5 s, once per test of Letta's suite (150 s of its CPU).
            gc.freeze()
            _heap_frozen = True


_heap_frozen = False


def _connection_lost(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached (down, restarting, refused)."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    try:
        import asyncpg

        lost = (asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)
    except ImportError:  # pragma: no cover - asyncpg is Letta's driver
        lost = ()
    cause = getattr(error, "orig", None) or error.__cause__
    return isinstance(error, lost) or (cause is not None and cause is not error and _connection_lost(cause))


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
            if isinstance(error, Exception) and _connection_lost(error):
                raise LettaServiceUnavailableError(
                    "The database is unreachable (restarting or down); retry shortly.", service_name="database"
                ) from error
            raise
        finally:
            session.expunge_all()


async def close_db() -> None:
    """Close this event loop's pool (at shutdown)."""
    made = _engines.pop(id(asyncio.get_running_loop()), None)
    if made is not None:
        await made[1].dispose()


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
