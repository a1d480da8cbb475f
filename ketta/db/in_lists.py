"""``column IN (list)`` sent as ``column = ANY($1::type[])``: one statement whatever the list's length.

SQLAlchemy renders an IN list with one placeholder per element, so every length is a new SQL text.
Letta reads an agent's in-context messages by their ids (``messages.id IN (...)``), a list one
longer after every message: each read is a statement PostgreSQL has not seen, which asyncpg first
prepares (a round trip of its own) and then keeps in the connection's statement cache, whose
entries grow with the list. Over a 12-minute soak with contexts growing, that cache made the
workers' RSS grow +5.5 % and +4.0 % over the last eight minutes, against +1.9 % and +2.4 % without
a statement cache (issue 24). With one array parameter the statement's text is the same for
every length, prepared once per connection and reused.

Only lists of plain strings and integers are sent as arrays (what Letta's ids, tags and counters
are); any other IN (a subquery, tuples, enums, decorated types, ``literal_execute``) is rendered as
SQLAlchemy renders it. The rows are the same: ``x = ANY(array)`` is ``x IN (...)`` for every list,
an empty one (false) and one holding NULL included, and ``x != ALL(array)`` is ``x NOT IN (...)``.
KETTA_DB_IN_LISTS_AS_ARRAYS=false keeps SQLAlchemy's rendering.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import elements, operators, sqltypes
from sqlalchemy.sql.compiler import OPERATORS


def _as_array(right: Any) -> elements.BindParameter[Any] | None:
    """The expanding list parameter ``right`` as one array parameter, or None to render it as SQLAlchemy does."""
    if not isinstance(right, elements.BindParameter) or not right.expanding or right.literal_execute:
        return None
    item = right.type
    if isinstance(item, sqltypes.Enum) or not isinstance(item, (sqltypes.String, sqltypes.Integer)):
        return None
    array = right._clone()  # a clone: SQLAlchemy's cached statement still finds this statement's values
    array.expanding = False
    array.type = ARRAY(item)
    return array


class _ArrayInLists:
    """Mixed into the dialect's statement compiler (see :func:`install`)."""

    def visit_in_op_binary(self, binary: Any, operator: Any, **kw: Any) -> str:
        array = _as_array(binary.right)
        if array is None:
            return self._generate_generic_binary(binary, OPERATORS[operator], **kw)  # type: ignore[attr-defined]
        return f"{self.process(binary.left, **kw)} = ANY ({self.process(array, **kw)})"  # type: ignore[attr-defined]

    def visit_not_in_op_binary(self, binary: Any, operator: Any, **kw: Any) -> str:
        array = _as_array(binary.right)
        if array is None:
            return super().visit_not_in_op_binary(binary, operator, **kw)  # type: ignore[misc]
        return f"{self.process(binary.left, **kw)} != ALL ({self.process(array, **kw)})"  # type: ignore[attr-defined]


def install(engine: AsyncEngine) -> None:
    """Compile this engine's statements with IN lists as array parameters (this engine's dialect only)."""
    dialect = engine.sync_engine.dialect
    base = dialect.statement_compiler
    if issubclass(base, _ArrayInLists):
        return
    dialect.statement_compiler = type(f"ArrayInLists{base.__name__}", (_ArrayInLists, base), {})


assert operators.in_op.__name__ == "in_op" and operators.not_in_op.__name__ == "not_in_op"  # the compiler's dispatch names
