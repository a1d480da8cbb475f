"""Writes Letta does as read-modify-write in a transaction, done as one statement (issue 24).

Letta writes most rows of a message the same way: open a session, ``session.get`` the row (or
read it with its relationships), set attributes, flush, commit. With the deferred BEGIN of
:mod:`ketta.db.round_trips`, that is ``SELECT; BEGIN; UPDATE; COMMIT``: four round trips for one
changed row, ten or twenty when the row is an agent with its relationships. Here the same
change is one statement run alone (PostgreSQL makes a single statement its own transaction, so
no BEGIN/COMMIT is sent): the same columns get the same values, the same access check is in its
WHERE clause, and when no row matches (unknown id, another organization, an id of the wrong
kind) Letta's own method is called instead, so its error is the one raised.

- :func:`set_agent_columns`: scalar columns of an agent whose caller discards the answer
  (``RunManager.update_run_by_id_async`` setting ``last_stop_reason``): twenty-one statements
  (the agent read with its relationships, the UPDATE, the agent read again) to one.
- :func:`set_message_ids`: ``AgentManager.update_message_ids_async``.
- :func:`record_step_metrics`: ``StepManager.record_step_metrics_async`` (create, or update the
  given fields of, a step's metrics row): an ``INSERT ... SELECT FROM steps ... ON CONFLICT DO
  UPDATE``; Letta read the step, the metrics row, the run, inserted and read the row back.
- :func:`update_step_success`: ``StepManager.update_step_success_async``: ``UPDATE ... RETURNING``.
"""

from __future__ import annotations

from contextvars import ContextVar
from datetime import datetime, timezone
from contextlib import contextmanager
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ketta.core.settings import get_settings
from ketta.db.round_trips import AUTOCOMMIT

# Set while a Letta method runs that discards what AgentManager.update_agent_async returns.
_agent_update_result_unused: ContextVar[bool] = ContextVar("ketta_agent_update_result_unused", default=False)

# UpdateAgent fields set_agent_columns writes; an update setting anything else goes to Letta.
AGENT_SCALARS = frozenset({"last_stop_reason", "last_run_completion", "last_run_duration_ms"})


@contextmanager
def agent_update_result_unused() -> Iterator[None]:
    """Within this block (this task only), an agent update's answer is not read by its caller."""
    token = _agent_update_result_unused.set(True)
    try:
        yield
    finally:
        _agent_update_result_unused.reset(token)


def agent_columns_only(agent_update: Any) -> dict[str, Any] | None:
    """The columns an ``UpdateAgent`` sets, when its caller discards the answer and it sets only
    :data:`AGENT_SCALARS`; else None (Letta's update runs)."""
    if not _agent_update_result_unused.get():
        return None
    values = {name: getattr(agent_update, name) for name in type(agent_update).model_fields if getattr(agent_update, name) is not None}
    if not values or not set(values) <= AGENT_SCALARS:
        return None
    return values


async def run_alone(statement: Any, entity: type | None = None) -> Any:
    """Run one statement outside a transaction block (no BEGIN/COMMIT; inside one behind a
    transaction-mode PgBouncer): PostgreSQL runs a single statement atomically as its own transaction. With ``entity`` (an ORM class), the statement's
    RETURNING rows come back as that class's pydantic models; else the result's rowcount."""
    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        # Behind a transaction-mode PgBouncer the statement stays in a transaction (BEGIN; it; COMMIT):
        # outside one, its prepare and execute may reach different server connections.
        if not session.in_transaction() and not get_settings().db_pgbouncer:
            await session.connection(execution_options=AUTOCOMMIT)
        if entity is None:
            result = await session.execute(statement, execution_options={"synchronize_session": False})
            return result.rowcount
        rows = (await session.execute(sa.select(entity).from_statement(statement))).scalars().all()
        return [row.to_pydantic() for row in rows]


async def set_agent_columns(agent_id: str, values: dict[str, Any], actor: Any) -> int:
    """What ``update_agent_async`` stores for an update of scalar columns only: the columns,
    ``updated_at`` now and the actor as last updater, on the actor's organization's agent.
    Returns how many rows changed (0: no such agent in the actor's organization)."""
    from letta.orm.agent import Agent

    table = Agent.__table__
    statement = (
        sa.update(table)
        .where(table.c.id == agent_id, table.c.organization_id == actor.organization_id)
        .values(**values, updated_at=datetime.now(timezone.utc), _last_updated_by_id=actor.id)
    )
    return await run_alone(statement)


async def set_message_ids(agent_id: str, message_ids: list[str], actor: Any) -> int:
    """What ``update_message_ids_async`` stores (through ``update_async`` with the actor): the
    in-context message ids, ``updated_at`` now, the actor as last updater and as creator if none
    is recorded. Returns how many rows changed."""
    from letta.orm.agent import Agent

    table = Agent.__table__
    created_by = table.c._created_by_id
    statement = (
        sa.update(table)
        .where(table.c.organization_id == actor.organization_id, table.c.id == agent_id)
        .values(
            message_ids=message_ids,
            updated_at=datetime.now(timezone.utc),
            _last_updated_by_id=actor.id,
            _created_by_id=sa.case((sa.func.coalesce(created_by, "") == "", actor.id), else_=created_by),
        )
    )
    return await run_alone(statement)


def _valid_id(value: str | None, kind: Any) -> bool:
    from letta.validators import PRIMITIVE_ID_PATTERNS, PRIMITIVE_ID_PREFIXES

    return value is None or PRIMITIVE_ID_PATTERNS[PRIMITIVE_ID_PREFIXES[kind]].match(value) is not None


async def record_step_metrics(actor: Any, step_id: str, fields: dict[str, Any]) -> Any | None:
    """``record_step_metrics_async`` as one statement: the metrics row of the actor's step is
    created (agent and project from the step unless given, the run only if it exists) or, when
    it exists in the actor's organization, its given (not None) fields are set. Returns the
    pydantic metrics, or None when nothing matched (no such step, another organization's, a
    malformed id): the caller then runs Letta's method for its error."""
    from letta.orm.run import Run
    from letta.orm.step import Step
    from letta.orm.step_metrics import StepMetrics
    from letta.schemas.enums import PrimitiveType

    if not _valid_id(step_id, PrimitiveType.STEP) or not _valid_id(fields.get("run_id"), PrimitiveType.RUN):
        return None
    metrics, steps, runs = StepMetrics.__table__, Step.__table__, Run.__table__

    def value(name: str) -> Any:
        return sa.literal(fields.get(name), type_=metrics.c[name].type)

    run_id = fields.get("run_id")
    columns = {
        "id": sa.literal(step_id, type_=metrics.c.id.type),
        "organization_id": sa.literal(actor.organization_id, type_=metrics.c.organization_id.type),
        "agent_id": sa.func.coalesce(value("agent_id"), steps.c.agent_id),
        "run_id": sa.select(runs.c.id).where(runs.c.id == run_id).scalar_subquery() if run_id else value("run_id"),
        "project_id": sa.func.coalesce(value("project_id"), steps.c.project_id),
        **{name: value(name) for name in ("llm_request_ns", "tool_execution_ns", "step_ns", "template_id", "base_template_id")},
    }
    source = sa.select(*(expr.label(name) for name, expr in columns.items())).where(
        steps.c.id == step_id, steps.c.organization_id == actor.organization_id
    )
    insert = pg_insert(metrics).from_select(list(columns), source)
    given = {name: fields[name] for name in ("llm_request_ns", "tool_execution_ns", "step_ns", "agent_id", "run_id", "project_id",
                                              "template_id", "base_template_id") if fields.get(name) is not None}
    if given:
        insert = insert.on_conflict_do_update(index_elements=[metrics.c.id], set_=given,
                                              where=metrics.c.organization_id == actor.organization_id)
    else:
        insert = insert.on_conflict_do_nothing(index_elements=[metrics.c.id])
    rows = await run_alone(insert.returning(*metrics.c), StepMetrics)
    return rows[0] if rows else None


async def update_step_success(actor: Any, step_id: str, usage: Any, stop_reason: Any = None) -> Any | None:
    """``update_step_success_async``'s change to the actor's step as one ``UPDATE ... RETURNING``:
    status SUCCESS, the token counts, the stop reason when given, the token details and their
    normalised cache and reasoning counts when reported. Returns the pydantic step, or None when
    no step of the actor's organization has that id (the caller runs Letta's method)."""
    from letta.orm.step import Step
    from letta.schemas.enums import PrimitiveType, StepStatus
    from letta.schemas.usage import normalize_cache_tokens, normalize_reasoning_tokens

    if not _valid_id(step_id, PrimitiveType.STEP):
        return None
    values: dict[str, Any] = {
        "status": StepStatus.SUCCESS,
        "completion_tokens": usage.completion_tokens,
        "prompt_tokens": usage.prompt_tokens,
        "total_tokens": usage.total_tokens,
    }
    if stop_reason:
        values["stop_reason"] = stop_reason.stop_reason
    if usage.prompt_tokens_details:
        values["prompt_tokens_details"] = usage.prompt_tokens_details.model_dump()
        cached_input, cache_write = normalize_cache_tokens(usage.prompt_tokens_details)
        if cached_input > 0:
            values["cached_input_tokens"] = cached_input
        if cache_write > 0:
            values["cache_write_tokens"] = cache_write
    if usage.completion_tokens_details:
        values["completion_tokens_details"] = usage.completion_tokens_details.model_dump()
        reasoning = normalize_reasoning_tokens(usage.completion_tokens_details)
        if reasoning > 0:
            values["reasoning_tokens"] = reasoning
    table = Step.__table__
    statement = (
        sa.update(table)
        .where(table.c.id == step_id, table.c.organization_id == actor.organization_id)
        .values(**values)
        .returning(*table.c)
    )
    rows = await run_alone(statement, Step)
    return rows[0] if rows else None
