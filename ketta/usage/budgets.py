"""Budgets: a limit in tokens or US dollars per provider, user or agent, per day or month (UTC).

A *hard* budget refuses a call before it reaches the provider once the period's spend has
reached the limit (:class:`BudgetExceeded`: 429 naming the budget and when it resets, with
``Retry-After``; a streamed message gets Letta's error event). A *soft* budget only warns: logged
once per budget and period by each worker, and shown as ``exceeded`` by ``GET /v1/ketta/budgets``.

The count is shared by every worker and replica: it lives in PostgreSQL
(``ketta_usage_budget_spend``, one row per budget and period), raised by the same statement that
writes the ledger row (one atomic ``INSERT ... ON CONFLICT DO UPDATE SET spent = spent + x``), and
read fresh before every call. A call is let through while ``spent < limit``; so when concurrent
calls cross the limit together, the overshoot is at most what the calls already in flight at that
moment spend; every later call is refused. A money budget counts calls whose price is known
(:mod:`ketta.usage.prices`); calls with cost unknown add nothing to it (GET /v1/usage counts them
apart as ``calls_cost_unknown``). A provider budget on a pool counts and limits calls to its members.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from letta.errors import LLMError

log = logging.getLogger("ketta.usage")

SCOPES = ("provider", "user", "agent")
METRICS = ("tokens", "cost_usd")
PERIODS = ("day", "month")

_PERIOD_START = "date_trunc(b.period, now() AT TIME ZONE 'UTC')"
_RESETS_AT = f"({_PERIOD_START} + CASE b.period WHEN 'day' THEN interval '1 day' ELSE interval '1 month' END)"
_MATCHES = (
    "b.organization_id = CAST(:org AS varchar) AND ((b.scope = 'provider' AND b.subject IN (CAST(:provider AS varchar), CAST(:pool_match AS varchar))) "
    "OR (b.scope = 'user' AND b.subject = CAST(:user AS varchar)) OR (b.scope = 'agent' AND b.subject = CAST(:agent AS varchar)))"
)
_EXCEEDED = sa.text(
    f"SELECT b.id, b.name, b.scope, b.subject, b.metric, b.limit_value, b.period, b.hard, COALESCE(s.spent, 0), {_RESETS_AT} "
    "FROM ketta_usage_budgets b LEFT JOIN ketta_usage_budget_spend s "
    f"ON s.budget_id = b.id AND s.period_start = {_PERIOD_START} "
    f"WHERE {_MATCHES} AND COALESCE(s.spent, 0) >= b.limit_value ORDER BY b.hard DESC, b.name"
)
# Raise the period's spend of every budget a recorded call counts for (a CTE after the ledger INSERT).
SPEND_UPSERT = (
    f"INSERT INTO ketta_usage_budget_spend (budget_id, period_start, spent) "
    f"SELECT b.id, {_PERIOD_START}, CASE b.metric WHEN 'tokens' THEN r.tokens ELSE r.cost_usd END "
    f"FROM ketta_usage_budgets b, recorded r WHERE {_MATCHES} "
    "AND (CASE b.metric WHEN 'tokens' THEN r.tokens ELSE r.cost_usd END) > 0 "
    "ON CONFLICT (budget_id, period_start) DO UPDATE SET spent = ketta_usage_budget_spend.spent + EXCLUDED.spent"
)

_warned: set[tuple[str, str]] = set()  # (budget id, period start) soft limits already logged here
_warned_lock = threading.Lock()


class BudgetExceeded(LLMError):
    """A hard budget refused the call before it was sent (an LLMError, so Letta's agent loop and
    stream report it like a provider's refusal; Ketta's handler answers 429)."""

    def __init__(self, budget: dict[str, Any]):
        self.budget = budget
        unit = "tokens" if budget["metric"] == "tokens" else "USD"
        message = (
            f"Budget '{budget['name']}' ({budget['scope']} {budget['subject']}: {budget['limit']} {unit} per {budget['period']}) "
            f"is spent ({budget['spent']} {unit}); the call was not sent to the provider. It resets at {budget['resets_at']}."
        )
        super().__init__(message=message, details={"budget": budget})

    @property
    def retry_after(self) -> int:
        resets = datetime.fromisoformat(self.budget["resets_at"])
        return max(1, int((resets - datetime.now(timezone.utc)).total_seconds()) + 1)


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _iso(moment: datetime) -> str:
    return moment.replace(tzinfo=timezone.utc).isoformat(timespec="seconds")


def match_parameters(organization_id: str | None, user_id: str | None, agent_id: str | None,
                     provider: str | None, pool: str | None) -> dict[str, Any]:
    return {"org": organization_id, "user": user_id, "agent": agent_id, "provider": provider, "pool_match": pool or provider}


# Organizations that have budgets, re-read at most every BUDGETS_SEEN_S per process (and at once
# after a budget is made here): a call of an organization without budgets costs no query. A budget
# made through another worker or replica is enforced here within BUDGETS_SEEN_S.
BUDGETS_SEEN_S = 2.0
_with_budgets: tuple[float, frozenset[str]] = (0.0, frozenset())
_ORGANIZATIONS = sa.text("SELECT DISTINCT organization_id FROM ketta_usage_budgets")


def forget_organizations() -> None:
    global _with_budgets
    _with_budgets = (0.0, frozenset())


async def has_budgets(session: Any, organization_id: str) -> bool:
    global _with_budgets
    read_at, organizations = _with_budgets
    if time.monotonic() - read_at > BUDGETS_SEEN_S:
        organizations = frozenset((await session.execute(_ORGANIZATIONS)).scalars().all())
        _with_budgets = (time.monotonic(), organizations)
    return organization_id in organizations


async def check(session: Any, parameters: dict[str, Any]) -> None:
    """Raise :class:`BudgetExceeded` for the first spent hard budget this call counts for; log a
    spent soft budget once per period."""
    if not parameters["org"] or not await has_budgets(session, parameters["org"]):
        return
    rows = (await session.execute(_EXCEEDED, parameters)).all()
    for row in rows:
        budget = {"id": row[0], "name": row[1], "scope": row[2], "subject": row[3], "metric": row[4], "limit": _number(row[5]),
                  "period": row[6], "hard": row[7], "spent": _number(row[8]), "resets_at": _iso(row[9])}
        if budget["hard"]:
            raise BudgetExceeded(budget)
        key = (budget["id"], budget["resets_at"])
        with _warned_lock:
            if key in _warned:
                continue
            _warned.add(key)
        log.warning("Soft budget '%s' (%s %s) is spent: %s of %s %s this %s; calls continue.", budget["name"], budget["scope"],
                    budget["subject"], budget["spent"], budget["limit"], budget["metric"], budget["period"])


# --- managing budgets (REST: ketta.usage.api) -----------------------------------------------

_LIST = sa.text(
    f"SELECT b.id, b.organization_id, b.name, b.scope, b.subject, b.metric, b.limit_value, b.period, b.hard, b.created_at, "
    f"COALESCE(s.spent, 0), {_RESETS_AT} FROM ketta_usage_budgets b LEFT JOIN ketta_usage_budget_spend s "
    f"ON s.budget_id = b.id AND s.period_start = {_PERIOD_START} "
    "WHERE (CAST(:org AS varchar) IS NULL OR b.organization_id = CAST(:org AS varchar)) AND (CAST(:id AS varchar) IS NULL OR b.id = CAST(:id AS varchar)) "
    "ORDER BY b.organization_id, b.name"
)


def describe(row: Any) -> dict[str, Any]:
    limit, spent = _number(row[6]), _number(row[10])
    return {
        "id": row[0], "organization_id": row[1], "name": row[2], "scope": row[3], "subject": row[4], "metric": row[5],
        "limit": limit, "period": row[7], "hard": row[8], "created_at": row[9].isoformat(timespec="seconds"),
        "spent": spent, "resets_at": _iso(row[11]), "exceeded": spent >= limit,
    }


async def list_budgets(session: Any, organization_id: str | None, budget_id: str | None = None) -> list[dict[str, Any]]:
    return [describe(r) for r in (await session.execute(_LIST, {"org": organization_id, "id": budget_id})).all()]


async def of_provider(organization_id: str, provider_name: str) -> list[dict[str, Any]]:
    """The provider's budgets with their spend (shown in its health: a soft limit reached shows there)."""
    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        return [b for b in await list_budgets(session, organization_id) if b["scope"] == "provider" and b["subject"] == provider_name]


_SEED = sa.text(
    f"INSERT INTO ketta_usage_budget_spend (budget_id, period_start, spent) "
    f"SELECT b.id, {_PERIOD_START}, COALESCE(sum(CASE b.metric WHEN 'tokens' THEN COALESCE(u.prompt_tokens, 0) + COALESCE(u.completion_tokens, 0) "
    "ELSE u.cost_usd END), 0) FROM ketta_usage_budgets b LEFT JOIN ketta_usage u ON u.organization_id = b.organization_id "
    f"AND u.at >= ({_PERIOD_START} AT TIME ZONE 'UTC') AND ((b.scope = 'provider' AND (u.provider_name = b.subject OR u.pool = b.subject)) "
    "OR (b.scope = 'user' AND u.user_id = b.subject) OR (b.scope = 'agent' AND u.agent_id = b.subject)) "
    "WHERE b.id = :id GROUP BY b.id, b.period"
)


async def create_budget(session: Any, organization_id: str, name: str, scope: str, subject: str, metric: str, limit: Decimal,
                        period: str, hard: bool) -> str:
    """Store a budget; its current period starts with what the ledger already holds for it."""
    budget_id = f"budget-{uuid.uuid4()}"
    await session.execute(sa.text(
        "INSERT INTO ketta_usage_budgets (id, organization_id, name, scope, subject, metric, limit_value, period, hard) "
        "VALUES (:id, CAST(:org AS varchar), :name, :scope, :subject, :metric, :limit, :period, :hard)"),
        {"id": budget_id, "org": organization_id, "name": name, "scope": scope, "subject": subject, "metric": metric,
         "limit": limit, "period": period, "hard": hard})
    await session.execute(_SEED, {"id": budget_id})
    forget_organizations()
    return budget_id
