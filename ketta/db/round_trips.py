"""Fewer database round trips per request, with the same rows stored (issue 24).

Counted with ``bench/db_statements.py``, a message cost Ketta about 170 statements in 47
transactions; two kinds of round trip carried no work at all:

- **The pool's pre-ping.** SQLAlchemy's ``pool_pre_ping`` checks every connection it hands out
  with ``BEGIN; ; ROLLBACK`` (asyncpg), and Letta opens a session for nearly every manager call:
  about 23 empty transactions per message. Here a connection is checked out without a round trip
  when asyncpg already knows it closed (a restarted PostgreSQL ends every connection; asyncpg sees
  the socket close) or when it was used moments ago; only one idle longer than
  ``KETTA_DB_PING_AFTER_IDLE`` seconds is pinged. A dead one raises ``DisconnectionError``, which
  makes the pool open a fresh connection, as pre-ping did.
- **BEGIN/COMMIT around reads.** The asyncpg dialect sends BEGIN before a session's first
  statement, so a session that only reads costs two statements more than its reads. Here BEGIN
  is deferred while a session only runs plain SELECTs: it is sent before the first statement that
  writes or locks (INSERT/UPDATE/DELETE, SAVEPOINT, ``FOR UPDATE``/``FOR SHARE``, advisory locks,
  anything not a SELECT), so every write is still inside one transaction, committed or rolled back
  as a whole. Under READ COMMITTED (PostgreSQL's and Letta's default) each statement sees its own
  snapshot either way, so a read before the first write sees what it saw inside the transaction.
  Not done behind a transaction-mode PgBouncer (KETTA_DB_PGBOUNCER): there an asyncpg prepare and
  its execute outside a transaction may reach different server connections.

Two more, for the rows a message reads and writes:

- **Relationships nobody reads** (:data:`UNUSED_RELATIONSHIPS`): a message's ``step`` and ``run``
  are ``selectin`` in Letta's model, two statements per load of messages, and nothing reads them.
- **Sessions that write one statement** (:class:`writes_alone`): a Letta method whose every
  session writes one INSERT or UPDATE (a step's row, a provider trace, a finished run's updates)
  runs without BEGIN/COMMIT: PostgreSQL runs a statement sent outside a block as its own
  transaction. :mod:`ketta.db.direct_writes` turns Letta's read-modify-write of a message's other
  rows into such single statements.

``KETTA_DB_FEWER_ROUND_TRIPS=false`` restores SQLAlchemy's pre-ping and BEGIN before every session,
and Letta's own reads and writes.
"""

from __future__ import annotations

import re
import time
import weakref
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event, exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

# The adapted asyncpg connection whose next statement may run without BEGIN: set just before a plain
# read is sent on Ketta's engine, consumed by start_transaction_unless_reading. A context variable
# (SQLAlchemy runs the sync event and the awaited execute in one context), holding the connection
# itself: no other connection, engine or task ever sees it.
_defer_begin_on: ContextVar[Any] = ContextVar("ketta_defer_begin_on", default=None)
CHECKED_IN_AT = "ketta_checked_in_at"

# A SELECT that takes locks or changes state must run inside the transaction.
_NEEDS_TRANSACTION = re.compile(
    r"\bFOR\s+(?:UPDATE|SHARE|NO\s+KEY\s+UPDATE|KEY\s+SHARE)\b|\bpg_\w*lock\w*\s*\(|\bset_config\s*\(|\bnextval\s*\(|\bsetval\s*\(|\bINTO\b",
    re.IGNORECASE,
)


def is_plain_read(statement: str) -> bool:
    """Whether a statement only reads: a SELECT (or VALUES/SHOW) that takes no lock and sets nothing."""
    head = statement.lstrip(" \t\n(").split(None, 1)
    return bool(head) and head[0].upper() in ("SELECT", "VALUES", "SHOW") and not _NEEDS_TRANSACTION.search(statement)


def install(engine: AsyncEngine, ping_after_idle_s: float, defer_begin: bool) -> None:
    """Check connections out without a round trip unless idle, and (``defer_begin``) send BEGIN
    only before a session's first write. Applies to this engine only."""
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine.pool, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(sync_engine.pool, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        raw = getattr(dbapi_connection, "_connection", None)  # the asyncpg connection
        if raw is not None and raw.is_closed():
            raise sa_exc.DisconnectionError("the database closed this connection")
        last_used = record.info.get(CHECKED_IN_AT)
        if last_used is not None and time.monotonic() - last_used <= ping_after_idle_s:
            return
        try:
            dbapi_connection.ping()
        except Exception as error:  # noqa: BLE001 - any failure: replace the connection
            raise sa_exc.DisconnectionError(f"ping failed: {error}") from error

    if defer_begin:
        @event.listens_for(sync_engine, "before_cursor_execute")
        def _before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            plain = not executemany and is_plain_read(statement) and not getattr(cursor, "server_side", False)
            _defer_begin_on.set(conn.connection.dbapi_connection if plain else None)

        @event.listens_for(sync_engine, "after_cursor_execute")
        def _after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            _defer_begin_on.set(None)

        @event.listens_for(sync_engine, "handle_error")
        def _failed(context: Any) -> None:
            _defer_begin_on.set(None)


async def start_transaction_unless_reading(self: Any) -> None:
    """Replacement of the asyncpg adapter's ``_start_transaction``: no BEGIN while the statement
    about to run is a plain read on an engine that asked for it (:func:`install`)."""
    from ketta.core.patching import original

    if _defer_begin_on.get() is self:
        _defer_begin_on.set(None)
        return
    await original(START_TRANSACTION_TARGET)(self)


START_TRANSACTION_TARGET = "sqlalchemy.dialects.postgresql.asyncpg:AsyncAdapt_asyncpg_connection._start_transaction"


# ------------------------------------------------------------------------------------------------
# Loading a row without its relationships where a caller reads only its columns.

# ORM classes whose SELECTs load columns only in this context (see columns_only).
_columns_only: ContextVar[tuple[type, ...]] = ContextVar("ketta_columns_only", default=())
_orm_listener_installed = False


def _install_orm_listener() -> None:
    """Once per process: SELECTs of the classes named by :func:`columns_only` get ``raiseload('*')``."""
    global _orm_listener_installed
    if _orm_listener_installed:
        return
    from sqlalchemy.orm import Session, raiseload

    @event.listens_for(Session, "do_orm_execute")
    def _without_relationships(state: Any) -> None:
        classes = _columns_only.get()
        if not classes or not state.is_select:
            return
        if any(getattr(mapper, "class_", None) in classes for mapper in state.all_mappers):
            state.statement = state.statement.options(raiseload("*"))

    _orm_listener_installed = True


class columns_only:
    """Within this block (this task only), loading one of ``classes`` loads its columns and none of
    its eager (``selectin``) relationships; touching one raises instead of loading it quietly.

    Letta's agent row has ten ``selectin`` relationships: a ``session.get(Agent, id)`` that wants
    the agent's ``project_id`` costs eleven statements."""

    def __init__(self, *classes: type) -> None:
        self.classes = classes
        self._token: Any = None

    def __enter__(self) -> "columns_only":
        _install_orm_listener()
        self._token = _columns_only.set(_columns_only.get() + self.classes)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _columns_only.reset(self._token)


# ------------------------------------------------------------------------------------------------
# Relationships Letta loads eagerly and never reads.

# (module, class, relationship names): Message.step and Message.run are ``selectin``: every load of
# messages cost two more statements (their steps, their runs), and no code of Letta 0.16.8 reads
# either (Message.to_pydantic uses the step_id and run_id columns). On Ketta's engine they are not
# loaded; touching one raises (raiseload) rather than loading it quietly, so a Letta that starts
# reading them fails loudly in its own test suite instead of paying the statements unnoticed.
UNUSED_RELATIONSHIPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (("letta.orm.message", "Message", ("step", "run")),)

_skipping_engines: "weakref.WeakSet[Any]" = weakref.WeakSet()
_skip_listener_installed = False


def skip_unused_relationships(engine: AsyncEngine) -> None:
    """ORM loads on this engine's sessions leave :data:`UNUSED_RELATIONSHIPS` unloaded."""
    global _skip_listener_installed
    _skipping_engines.add(engine.sync_engine)
    if _skip_listener_installed:
        return
    import importlib

    from sqlalchemy.orm import Session, raiseload

    skipped = []
    for module_name, class_name, names in UNUSED_RELATIONSHIPS:
        cls = getattr(importlib.import_module(module_name), class_name)
        skipped.append((cls, [raiseload(getattr(cls, name)) for name in names]))

    @event.listens_for(Session, "do_orm_execute")
    def _skip(state: Any) -> None:
        bind = state.session.bind
        if not state.is_select or state.is_relationship_load or getattr(bind, "_proxied", bind) not in _skipping_engines:
            return
        entities = {d.get("expr") for d in getattr(state.statement, "column_descriptions", ())}
        for cls, options in skipped:
            if cls in entities:
                state.statement = state.statement.options(*options)

    _skip_listener_installed = True


# ------------------------------------------------------------------------------------------------
# Sessions that write one statement: no BEGIN/COMMIT around it.

# The task whose database sessions run outside a transaction block (see writes_alone).
_writes_alone: ContextVar[Any] = ContextVar("ketta_writes_alone", default=None)


class writes_alone:
    """Within this block, the database sessions this task opens send no BEGIN/COMMIT: each
    statement is its own transaction, as PostgreSQL runs a statement sent outside a block.

    Only for Letta methods each of whose sessions writes at most one statement (a single INSERT
    or UPDATE after any reads): that write is atomic by itself, and the reads before it saw their
    own snapshot already (READ COMMITTED, BEGIN deferred to the first write). Tasks started inside
    the block do not inherit it (their sessions are not the method's). Not behind a transaction-mode
    PgBouncer (KETTA_DB_PGBOUNCER; the session patch checks), for the reason given above."""

    def __enter__(self) -> "writes_alone":
        import asyncio

        self._token = _writes_alone.set(asyncio.current_task())
        return self

    def __exit__(self, *exc_info: object) -> None:
        _writes_alone.reset(self._token)


def sessions_write_alone() -> bool:
    """Whether a session opened now (by this task) should run outside a transaction block."""
    import asyncio

    owner = _writes_alone.get()
    return owner is not None and owner is asyncio.current_task()


AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}
