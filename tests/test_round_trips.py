"""Fewer database round trips (ketta/db/round_trips.py, issue 24): no BEGIN/COMMIT around a session
that only reads, no ping of a connection used moments ago, and still every write inside one
transaction, a closed connection replaced, a message's rows stored as before.

What PostgreSQL sees is read from PostgreSQL: ``pg_stat_activity`` tells whether a session's
backend sits in a transaction ('idle in transaction') or not ('idle')."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from conftest import KettaProcess, unique
from ketta.core import patching
from ketta.db import round_trips
from ketta.db.database import sync_url
from ketta.letta_modifications.server import db as db_patches
from mock_openai import MockOpenAI

class Base(DeclarativeBase):
    pass


class Shelf(Base):
    __tablename__ = "shelves"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str]
    books: Mapped[list["Book"]] = relationship(lazy="selectin")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int] = mapped_column(sa.ForeignKey("shelves.id"))


@pytest.fixture
def deferred_begin() -> Iterator[None]:
    """The patched asyncpg adapter (as the server applies it), reverted afterwards."""
    [patch] = [p for p in db_patches.PATCHES if p.target == round_trips.START_TRANSACTION_TARGET]
    applied = patching.apply(patch)
    yield
    if applied:
        patching.revert(patch)


@pytest.fixture
def database(database_uri: str) -> Iterator[tuple[str, sa.Engine]]:
    """A fresh database with one table; (async URI, a sync engine for looking from outside)."""
    outside = sa.create_engine(sync_url(database_uri), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with outside.connect() as conn:
        conn.execute(sa.text("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)"))
        conn.execute(sa.text("INSERT INTO notes (body) VALUES ('first')"))
    async_uri = database_uri.replace("postgresql://", "postgresql+asyncpg://", 1).replace("sslmode=", "ssl=")
    yield async_uri, outside
    outside.dispose()


async def make_factory(uri: str, ping_after_idle_s: float = 60.0) -> tuple[Any, async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(uri, pool_size=2, max_overflow=0, pool_pre_ping=False)
    round_trips.install(engine, ping_after_idle_s=ping_after_idle_s, defer_begin=True)
    return engine, async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def backend_state(outside: sa.Engine, pid: int) -> str:
    with outside.connect() as conn:
        return conn.execute(sa.text("SELECT state FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}).scalar_one()


def bodies(outside: sa.Engine) -> list[str]:
    with outside.connect() as conn:
        return list(conn.execute(sa.text("SELECT body FROM notes ORDER BY id")).scalars())


async def test_a_session_that_only_reads_opens_no_transaction(database: tuple[str, sa.Engine], deferred_begin: None) -> None:
    uri, outside = database
    engine, factory = await make_factory(uri)
    try:
        async with factory() as session:
            pid = (await session.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            assert (await session.execute(sa.text("SELECT body FROM notes"))).scalars().all() == ["first"]
            assert await asyncio.to_thread(backend_state, outside, pid) == "idle"
            await session.commit()
    finally:
        await engine.dispose()


async def test_writes_after_reads_are_one_transaction_rolled_back_whole(database: tuple[str, sa.Engine], deferred_begin: None) -> None:
    uri, outside = database
    engine, factory = await make_factory(uri)
    try:
        with pytest.raises(RuntimeError, match="half way"):
            async with factory() as session:
                pid = (await session.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
                await session.execute(sa.text("INSERT INTO notes (body) VALUES ('second')"))
                await session.execute(sa.text("UPDATE notes SET body = 'changed' WHERE body = 'first'"))
                assert await asyncio.to_thread(backend_state, outside, pid) == "idle in transaction"
                raise RuntimeError("half way")  # async with: the session rolls back
        assert await asyncio.to_thread(bodies, outside) == ["first"], "nothing half-stored"

        async with factory() as session:  # the same writes committed: both land
            assert (await session.execute(sa.text("SELECT count(*) FROM notes"))).scalar_one() == 1
            await session.execute(sa.text("INSERT INTO notes (body) VALUES ('second')"))
            await session.execute(sa.text("UPDATE notes SET body = 'changed' WHERE body = 'first'"))
            await session.commit()
        assert await asyncio.to_thread(bodies, outside) == ["changed", "second"]
    finally:
        await engine.dispose()


async def test_a_locking_read_runs_inside_the_transaction(database: tuple[str, sa.Engine], deferred_begin: None) -> None:
    uri, outside = database
    engine, factory = await make_factory(uri)
    try:
        async with factory() as session:
            pid = (await session.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            await session.execute(sa.text("SELECT id FROM notes WHERE body = 'first' FOR UPDATE"))
            assert await asyncio.to_thread(backend_state, outside, pid) == "idle in transaction"

            def locked_elsewhere() -> bool:
                with outside.connect() as conn:
                    try:
                        conn.execute(sa.text("SELECT id FROM notes FOR UPDATE NOWAIT"))
                    except sa.exc.OperationalError:
                        return True
                    return False

            assert await asyncio.to_thread(locked_elsewhere), "the row lock is held until the session ends"
            await session.commit()
    finally:
        await engine.dispose()


async def test_a_connection_postgres_closed_is_replaced_without_an_error(database: tuple[str, sa.Engine], deferred_begin: None) -> None:
    """No pre-ping of a connection used moments ago; one PostgreSQL ended (a restart, an admin) is
    replaced on checkout all the same."""
    uri, outside = database
    engine, factory = await make_factory(uri, ping_after_idle_s=3600)
    try:
        async with factory() as session:
            first = (await session.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        with outside.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar_one()
        for _ in range(200):  # asyncpg notices the closed socket once the loop reads it
            await asyncio.sleep(0.01)
            async with engine.connect() as probe:
                raw = (await probe.get_raw_connection()).driver_connection
                if raw.is_closed():
                    break
                await probe.rollback()
        async with factory() as session:
            second = (await session.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            assert (await session.execute(sa.text("SELECT body FROM notes"))).scalars().all() == ["first"]
        assert second != first
    finally:
        await engine.dispose()


async def test_columns_only_loads_a_row_without_its_selectin_relationships(database: tuple[str, sa.Engine]) -> None:
    """What RunManager.create_run's patch relies on: under columns_only, a row's eager relationships
    are not loaded (one statement, not two), and touching one raises instead of loading it quietly."""
    uri, outside = database
    Base.metadata.create_all(outside)
    with outside.connect() as conn:
        conn.execute(sa.text("INSERT INTO shelves (id, label) VALUES (1, 'tall'); INSERT INTO books (id, shelf_id) VALUES (1, 1), (2, 1)"))
    engine, factory = await make_factory(uri)
    sent: list[str] = []
    sa.event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    try:
        async with factory() as session:
            shelf = await session.get(Shelf, 1)
            assert shelf is not None and len(shelf.books) == 2 and len(sent) == 2  # Letta's way: row + relationship
        sent.clear()
        async with factory() as session:
            with round_trips.columns_only(Shelf):
                shelf = await session.get(Shelf, 1)
            assert shelf is not None and shelf.label == "tall" and len(sent) == 1, sent
            with pytest.raises(sa.exc.InvalidRequestError):
                shelf.books  # noqa: B018 - touching it must raise, not load
        sent.clear()
        async with factory() as session:  # outside the block, nothing changed
            shelf = await session.get(Shelf, 1)
            assert len(shelf.books) == 2 and len(sent) == 2
    finally:
        await engine.dispose()


def test_only_plain_reads_skip_begin() -> None:
    assert round_trips.is_plain_read("SELECT agents.id FROM agents JOIN blocks_agents ON true WHERE agents.id = $1")
    assert round_trips.is_plain_read(" (SELECT 1) UNION (SELECT 2)")
    for statement in ("INSERT INTO notes (body) VALUES ($1)", "UPDATE agents SET name = $1", "DELETE FROM steps",
                      "SAVEPOINT sa_savepoint_1", "SELECT id FROM runs WHERE id = $1 FOR UPDATE",
                      "SELECT id FROM runs FOR NO KEY UPDATE SKIP LOCKED", "SELECT pg_advisory_xact_lock(42)",
                      "SELECT set_config('x', 'y', true)", "SELECT nextval('s')", "WITH x AS (DELETE FROM a RETURNING *) SELECT * FROM x",
                      "SELECT * INTO copy FROM notes", "LOCK TABLE notes"):
        assert not round_trips.is_plain_read(statement), statement


# ------------------------------------------------------------------------------------------------
# The message round trip on the shared server (fewer round trips on by default) stores what it did.

def test_a_message_still_stores_its_messages_step_run_and_agent_state(shared_server: KettaProcess, shared_db: sa.Engine) -> None:
    with MockOpenAI(api_key="sk-good") as llm, shared_server.client() as client:
        name = unique("trips")
        made = client.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "sk-good", "base_url": llm.base_url})
        assert made.status_code == 200, made.text
        created = client.post("/v1/agents/", json={"name": f"trips-{uuid.uuid4().hex[:8]}", "agent_type": "letta_v1_agent",
                                                   "include_base_tools": False, "model": f"{name}/mock-chat-1",
                                                   "embedding": f"{name}/text-embedding-3-small"})
        assert created.status_code == 200, created.text
        agent_id = created.json()["id"]
        sent = client.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": "Remember the heron."}]})
        assert sent.status_code == 200, sent.text
        answered = [m for m in sent.json()["messages"] if m["message_type"] == "assistant_message"]
        assert answered, sent.json()
        listed = client.get(f"/v1/agents/{agent_id}/messages").json()

    with shared_db.connect() as conn:
        messages = conn.execute(sa.text("SELECT id, role, run_id, step_id FROM messages WHERE agent_id = :a ORDER BY sequence_id"),
                                {"a": agent_id}).mappings().all()
        runs = conn.execute(sa.text("SELECT id, status, stop_reason FROM runs WHERE agent_id = :a"), {"a": agent_id}).mappings().all()
        steps = conn.execute(sa.text("SELECT id, run_id, status FROM steps WHERE agent_id = :a"), {"a": agent_id}).mappings().all()
        in_context = conn.execute(sa.text("SELECT message_ids FROM agents WHERE id = :a"), {"a": agent_id}).scalar_one()
        metrics = conn.execute(sa.text("SELECT id, agent_id, num_steps FROM run_metrics WHERE agent_id = :a"), {"a": agent_id}).mappings().all()

    [run] = runs
    assert [(m["id"], m["num_steps"]) for m in metrics] == [(run["id"], 1)], metrics  # RunManager.create_run's rows
    assert run["status"] == "completed" and run["stop_reason"], run
    assert [s["run_id"] for s in steps] == [run["id"]] and steps[0]["status"].lower() == "success", steps
    this_run = [m for m in messages if m["run_id"] == run["id"]]
    assert [m["role"] for m in this_run][:1] == ["user"] and "assistant" in [m["role"] for m in this_run], this_run
    assert all(m["id"] in in_context for m in this_run), "the agent's context holds the new messages"
    assert {m["id"] for m in this_run} <= {m["id"] for m in listed}, "what was stored is what the API lists"
