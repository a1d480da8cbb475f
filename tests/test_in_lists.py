"""IN lists as one array parameter (ketta/db/in_lists.py, issue 24): the same rows for every list,
and one prepared statement whatever the list's length, read back from PostgreSQL's
``pg_prepared_statements`` on the connection that ran them."""

from __future__ import annotations

import enum
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ketta.db import in_lists

metadata = sa.MetaData()
items = sa.Table(
    "items", metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("tag", sa.String, nullable=True),
)
ROWS = [{"id": f"item-{i}", "n": i, "tag": None if i % 3 == 0 else f"t{i % 2}"} for i in range(8)]


class Colour(enum.Enum):
    red = "red"
    blue = "blue"


@pytest.fixture
def async_uri(database_uri: str) -> Iterator[str]:
    from ketta.db.database import sync_url

    setup = sa.create_engine(sync_url(database_uri), poolclass=sa.NullPool)
    metadata.create_all(setup)
    with setup.begin() as conn:
        conn.execute(items.insert(), ROWS)
    setup.dispose()
    yield database_uri.replace("postgresql://", "postgresql+asyncpg://", 1).replace("sslmode=", "ssl=")


async def run(engine: AsyncEngine, queries: list[Any]) -> tuple[list[set[Any]], list[str]]:
    """Each query's rows, and the statements prepared on the one connection that ran them."""
    async with engine.connect() as conn:
        found = [set((await conn.execute(query)).scalars()) for query in queries]
        prepared = (await conn.execute(sa.text(
            "SELECT statement FROM pg_prepared_statements WHERE statement LIKE 'SELECT items.%' ORDER BY statement"))).scalars().all()
    return found, list(prepared)


def expected(keep: Any) -> set[str]:
    return {row["id"] for row in ROWS if keep(row)}


async def test_every_list_length_is_one_statement_with_the_same_rows(async_uri: str) -> None:
    ids = [row["id"] for row in ROWS]
    queries, wanted = [], []
    for length in range(0, 7):  # the empty list too: no rows for IN, every row for NOT IN
        chosen = ids[:length]
        queries += [sa.select(items.c.id).where(items.c.id.in_(chosen)),
                    sa.select(items.c.id).where(items.c.id.not_in(chosen)),
                    sa.select(items.c.id).where(items.c.n.in_(range(length)))]
        wanted += [set(chosen), set(ids) - set(chosen), set(ids[:length])]
    # A tuple and a set as Letta passes them; NULL in the list matches nothing, as with IN.
    queries += [sa.select(items.c.id).where(items.c.id.in_(("item-1", "item-2"))),
                sa.select(items.c.id).where(items.c.tag.in_({"t1", None})),
                sa.select(items.c.id).where(items.c.tag.not_in(["t1"]))]
    wanted += [{"item-1", "item-2"}, expected(lambda r: r["tag"] == "t1"), expected(lambda r: r["tag"] == "t0")]

    engine = create_async_engine(async_uri, pool_size=1, max_overflow=0)
    in_lists.install(engine)
    try:
        found, prepared = await run(engine, queries)
    finally:
        await engine.dispose()
    assert found == wanted
    assert len(prepared) == 5, "one statement per query shape (id IN, id NOT IN, n IN, tag IN, tag NOT IN):\n" + "\n".join(prepared)
    assert all(" = ANY (" in s or " != ALL (" in s for s in prepared), prepared
    assert not any(" IN (" in s for s in prepared), prepared

    stock = create_async_engine(async_uri, pool_size=1, max_overflow=0)
    try:
        stock_found, stock_prepared = await run(stock, queries)
    finally:
        await stock.dispose()
    assert stock_found == wanted, "the same rows as SQLAlchemy's own IN lists"
    assert len(stock_prepared) > 15, "SQLAlchemy's IN lists are a statement per length"


def test_other_in_shapes_are_rendered_as_sqlalchemy_renders_them() -> None:
    engine = create_async_engine("postgresql+asyncpg://u@127.0.0.1:1/db")  # never connects: compile only
    stock_dialect = create_async_engine("postgresql+asyncpg://u@127.0.0.1:1/db").sync_engine.dialect
    in_lists.install(engine)
    in_lists.install(engine)  # twice is once
    colours = sa.Table("colours", sa.MetaData(), sa.Column("c", sa.Enum(Colour)), sa.Column("a", sa.Integer), sa.Column("b", sa.Integer))
    untouched = [
        sa.select(items.c.id).where(items.c.id.in_(sa.select(items.c.id).where(items.c.n > 2))),  # a subquery
        sa.select(colours.c.a).where(colours.c.c.in_([Colour.red, Colour.blue])),  # an enum
        sa.select(colours.c.a).where(sa.tuple_(colours.c.a, colours.c.b).in_([(1, 2), (3, 4)])),  # tuples
        sa.select(items.c.id).where(items.c.n.in_(sa.bindparam("ns", expanding=True, literal_execute=True))),
    ]
    for query in untouched:
        assert str(query.compile(engine.sync_engine)) == str(query.compile(dialect=stock_dialect))
    assert str(sa.select(items.c.id).where(items.c.id.in_(["a", "b"])).compile(engine.sync_engine)).endswith(
        "WHERE items.id = ANY ($1::VARCHAR[])")
    assert type(engine.sync_engine.dialect).__name__ == type(stock_dialect).__name__, "other engines' dialects are left alone"
    assert stock_dialect.statement_compiler.__name__ == "PGCompiler_asyncpg"
