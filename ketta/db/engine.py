"""One pooled database engine per process and event loop, for Letta's sessions.

Letta 0.16.8 opens a new PostgreSQL connection for every session (NullPool), and its pooled path
fails at start-up (see ketta/letta_modifications/server/db.py, the patch that uses this module).
Here each event loop gets one engine with a queue pool (KETTA_DB_POOL_SIZE, KETTA_DB_MAX_OVERFLOW),
``pool_recycle`` (KETTA_DB_POOL_RECYCLE), a pre-ping or Ketta's cheaper checkout check
(:mod:`ketta.db.round_trips`), SSL exactly as the URI says, and prepared statements cached unless
KETTA_DB_PGBOUNCER says a transaction-mode PgBouncer is in between. An asyncpg connection belongs
to one loop: pools of loops that ended are released (:func:`_release_closed_loops`).
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

from ketta.core.settings import get_settings
from ketta.db import in_lists, round_trips

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
        if settings.db_in_lists_as_arrays:
            in_lists.install(engine)
        if settings.db_fewer_round_trips:
            round_trips.install(engine, ping_after_idle_s=settings.db_ping_after_idle, defer_begin=not settings.db_pgbouncer)
            round_trips.skip_unused_relationships(engine)
        factory = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False, autoflush=False)
        made = _engines[id(loop)] = (loop, engine, factory)
        log.debug("database pool: size %s, overflow %s", engine.pool.size(), get_settings().db_max_overflow)
    return made[2]


@asynccontextmanager
async def driver_connection(engine: AsyncEngine | None = None) -> AsyncIterator[Any]:
    """A connection of ``engine``'s pool (default: this loop's) as the asyncpg connection itself, for a hot path's single
    statement that needs no session, ORM or SQLAlchemy compilation (the usage ledger's row).

    Checked out and back in as any other (the pool's checkout check and recycle apply); a
    statement sent on it outside ``connection.transaction()`` is its own transaction. Lost (or
    left mid-statement by a cancellation), the connection is dropped from the pool."""
    from sqlalchemy.util import greenlet_spawn

    pooled = await greenlet_spawn((engine or session_factory().kw["bind"]).sync_engine.raw_connection)
    try:
        yield pooled.driver_connection
    except BaseException as error:
        if not isinstance(error, Exception) or connection_lost(error):
            pooled.invalidate()  # outside a greenlet: closed at once, without waiting on the server
        raise
    finally:
        await greenlet_spawn(pooled.close)  # no round trip: nothing to roll back


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


def connection_lost(error: BaseException) -> bool:
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
    return isinstance(error, lost) or (cause is not None and cause is not error and connection_lost(cause))


async def close_this_loops_pool() -> None:
    """Close the running event loop's pool (at shutdown)."""
    made = _engines.pop(id(asyncio.get_running_loop()), None)
    if made is not None:
        await made[1].dispose()
