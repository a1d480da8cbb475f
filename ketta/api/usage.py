"""REST routes of the usage ledger.

- ``GET /v1/usage/`` sums tokens and cost by provider, model, agent, user or day over a period;
  ``GET /v1/usage/export.csv`` gives the same as CSV (or every call, without ``group_by``).
  A user token sees only its own user's calls (whatever filters it sends); the server token sees
  every organization's, narrowed by ``organization_id`` / ``user_id`` / ``agent_id`` / ``provider``.
  With login off (KETTA_INSECURE_NO_LOGIN) every caller is the server.
- ``/v1/ketta/budgets`` and ``/v1/ketta/prices`` (server token only: the login middleware answers
  403 to a user token under ``/v1/ketta/``) manage budgets and the operator's prices; they act in
  the organization of the ``user_id`` header's user (the default user's without one), or the
  ``organization_id`` given.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Any, Literal, Optional

import sqlalchemy as sa
from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from ketta.usage import budgets

router = APIRouter(tags=["usage"])


async def budget_refusal(request: Any, exc: Any) -> Any:
    """429 naming the budget and when it resets (``Retry-After``); Klui reads ``detail``."""
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=429, headers={"Retry-After": str(exc.retry_after)}, content={
        "detail": exc.message,
        "error": {"type": "budget_exceeded", "message": exc.message, "budget": exc.budget, "resets_at": exc.budget["resets_at"]},
    })


def install(app: Any) -> None:
    """The routes, and the answer to a call a hard budget refused (:class:`ketta.usage.budgets.BudgetExceeded`)."""
    from ketta.usage import prices

    app.include_router(router)
    app.add_exception_handler(budgets.BudgetExceeded, budget_refusal)
    prices.warm()

GroupBy = Literal["provider", "model", "agent", "user", "day"]
_KEYS: dict[str, tuple[str, str]] = {  # group -> (key expression, label expression)
    "provider": ("provider_name", "max(provider_type)"),
    "model": ("model", "max(provider_name)"),
    "agent": ("agent_id", "max(agent_name)"),
    "user": ("user_id", "NULL"),
    "day": ("to_char(date_trunc('day', at AT TIME ZONE 'UTC'), 'YYYY-MM-DD')", "NULL"),
}
_LABELS = {"provider": "provider_type", "model": "provider_name", "agent": "agent_name", "user": None, "day": None}
_SUMS = (
    "count(*) AS calls, count(*) FILTER (WHERE status = 'error') AS calls_failed, "
    "count(*) FILTER (WHERE status = 'refused') AS calls_refused, "
    "count(*) FILTER (WHERE status IN ('ok', 'incomplete') AND prompt_tokens IS NULL AND completion_tokens IS NULL) AS calls_usage_unknown, "
    "count(*) FILTER (WHERE status IN ('ok', 'incomplete') AND cost_usd IS NULL) AS calls_cost_unknown, "
    "sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens, "
    "sum(cached_input_tokens) AS cached_input_tokens, sum(cache_write_tokens) AS cache_write_tokens, "
    "sum(reasoning_tokens) AS reasoning_tokens, sum(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)) "
    "FILTER (WHERE prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL) AS total_tokens, sum(cost_usd) AS cost_usd"
)
_FILTERS = (
    "at >= :start AND at < :end AND (CAST(:org AS varchar) IS NULL OR organization_id = :org) "
    "AND (CAST(:user AS varchar) IS NULL OR user_id = :user) AND (CAST(:agent AS varchar) IS NULL OR agent_id = :agent) "
    "AND (CAST(:provider AS text) IS NULL OR provider_name = :provider OR pool = :provider)"
)
_CALL_COLUMNS = ("at", "organization_id", "user_id", "agent_id", "agent_name", "run_id", "provider_id", "provider_name", "provider_type",
                 "model", "handle", "pool", "fallback", "streamed", "prompt_tokens", "completion_tokens", "cached_input_tokens",
                 "cache_write_tokens", "reasoning_tokens", "cost_usd", "price_source", "status", "error_class", "duration_ms", "kind")


class UsageSums(BaseModel):
    calls: int = Field(..., description="Call attempts (fallbacks and pool members tried each count once), failed and refused ones included.")
    calls_failed: int = 0
    calls_refused: int = Field(0, description="Refused by a hard budget before reaching the provider.")
    calls_usage_unknown: int = Field(0, description="Answered calls whose provider reported no usage (their tokens are not in the sums).")
    calls_cost_unknown: int = Field(0, description="Answered calls with no known price (not in cost_usd, which is then a lower bound).")
    prompt_tokens: Optional[int] = Field(None, description="Input tokens, cached ones included; null: none reported.")
    completion_tokens: Optional[int] = Field(None, description="Output tokens, reasoning included.")
    cached_input_tokens: Optional[int] = None
    cache_write_tokens: Optional[int] = None
    reasoning_tokens: Optional[int] = None
    total_tokens: Optional[int] = None
    cost_usd: Optional[float] = Field(None, description="US dollars of the calls with a known price; null: no call had one.")


class UsageRow(UsageSums):
    key: Optional[str] = Field(None, description="The provider name, model, agent id, user id or day (YYYY-MM-DD, UTC).")
    label: Optional[str] = Field(None, description="provider: its type; model: a provider serving it; agent: its name (kept after deletion).")


class UsageReport(BaseModel):
    group_by: str
    start: str
    end: str
    currency: str = "USD"
    rows: list[UsageRow]
    total: UsageSums


def _dependencies():
    from letta.server.rest_api.dependencies import HeaderParams, get_headers, get_letta_server

    return HeaderParams, get_headers, get_letta_server


HeaderParams, get_headers, get_letta_server = _dependencies()


def _moment(value: Optional[str], name: str, default: datetime) -> datetime:
    if value is None or value == "":
        return default
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), tzinfo=timezone.utc)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(status_code=400, detail=f"'{name}' must be an ISO 8601 date or time (e.g. 2026-12-01 or 2026-12-01T00:00:00Z), not '{value}'.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _period(start: Optional[str], end: Optional[str]) -> tuple[datetime, datetime]:
    now = datetime.now(timezone.utc)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    begin, finish = _moment(start, "start", month_start), _moment(end, "end", now)
    if begin >= finish:
        raise HTTPException(status_code=400, detail=f"'start' ({begin.isoformat()}) must be before 'end' ({finish.isoformat()}).")
    return begin, finish


def _scope(request: Request, organization_id: Optional[str], user_id: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(organization, user) the caller may see: a user token only its own user's calls."""
    from ketta.security.auth import PRINCIPAL

    principal = request.scope.get(PRINCIPAL)
    if principal is not None and not principal.is_admin:
        return principal.organization_id, principal.user_id
    return organization_id, user_id


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return value


async def _grouped(group_by: str, parameters: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from letta.server.db import db_registry

    key, label = _KEYS[group_by]
    grouped = sa.text(f"SELECT {key} AS key, {label} AS label, {_SUMS} FROM ketta_usage WHERE {_FILTERS} GROUP BY 1 ORDER BY 1 NULLS LAST")
    total = sa.text(f"SELECT {_SUMS} FROM ketta_usage WHERE {_FILTERS}")
    async with db_registry.async_session() as session:
        rows = [{k: _number(v) for k, v in r._mapping.items()} for r in (await session.execute(grouped, parameters)).all()]
        totals = {k: _number(v) for k, v in (await session.execute(total, parameters)).one()._mapping.items()}
    return rows, totals


def _parameters(request: Request, start: Optional[str], end: Optional[str], organization_id: Optional[str], user_id: Optional[str],
                agent_id: Optional[str], provider: Optional[str]) -> dict[str, Any]:
    begin, finish = _period(start, end)
    org, user = _scope(request, organization_id, user_id)
    return {"start": begin, "end": finish, "org": org, "user": user, "agent": agent_id, "provider": provider}


_START = Query(None, description="Period start (ISO 8601 date or time, UTC when no offset); default: the first day of this month.")
_END = Query(None, description="Period end, exclusive; default: now.")


@router.get("/v1/usage/", response_model=UsageReport, operation_id="ketta_usage_report")
@router.get("/v1/usage", response_model=UsageReport, include_in_schema=False)
async def usage_report(
    request: Request,
    group_by: GroupBy = Query("provider", description="Sum by provider (name, kept after deletion), model, agent, user or day (UTC)."),
    start: Optional[str] = _START,
    end: Optional[str] = _END,
    organization_id: Optional[str] = Query(None, description="Server token: one organization's calls (a user token always sees its own)."),
    user_id: Optional[str] = Query(None, description="Server token: one user's calls."),
    agent_id: Optional[str] = Query(None),
    provider: Optional[str] = Query(None, description="One provider's calls by name (a pool's name: its members' calls)."),
) -> UsageReport:
    """Tokens and cost summed over a period; a user token sees only its own user's calls."""
    parameters = _parameters(request, start, end, organization_id, user_id, agent_id, provider)
    rows, totals = await _grouped(group_by, parameters)
    return UsageReport(group_by=group_by, start=parameters["start"].isoformat(), end=parameters["end"].isoformat(),
                       rows=[UsageRow(**r) for r in rows], total=UsageSums(**totals))


@router.get("/v1/usage/export.csv", operation_id="ketta_usage_export_csv", response_class=Response)
async def usage_export_csv(
    request: Request,
    group_by: Optional[GroupBy] = Query(None, description="Sums by this; without it, one line per call."),
    start: Optional[str] = _START,
    end: Optional[str] = _END,
    organization_id: Optional[str] = Query(None),
    user_id: Optional[str] = Query(None),
    agent_id: Optional[str] = Query(None),
    provider: Optional[str] = Query(None),
) -> Response:
    """The report (or every call) as CSV; same scoping as GET /v1/usage/."""
    from letta.server.db import db_registry

    parameters = _parameters(request, start, end, organization_id, user_id, agent_id, provider)
    out = io.StringIO()
    writer = csv.writer(out)
    if group_by is not None:
        rows, _ = await _grouped(group_by, parameters)
        columns = ["key", "label", *UsageSums.model_fields]
        writer.writerow([group_by if c == "key" else (_LABELS[group_by] or "label") if c == "label" else c for c in columns])
        writer.writerows([[_cell(r.get(c)) for c in columns] for r in rows])
    else:
        query = sa.text(f"SELECT {', '.join(_CALL_COLUMNS)} FROM ketta_usage WHERE {_FILTERS} ORDER BY at, id")
        writer.writerow(_CALL_COLUMNS)
        async with db_registry.async_session() as session:
            for row in (await session.execute(query, parameters)).all():
                writer.writerow([_cell(v) for v in row])
    name = f"ketta-usage-{parameters['start'].date()}-{parameters['end'].date()}.csv"
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _cell(value: Any) -> Any:
    """A CSV cell; text a spreadsheet would run as a formula (an agent named '=HYPERLINK(...)') is quoted with '."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


# --- budgets and prices (server token) ------------------------------------------------------


class BudgetCreate(BaseModel):
    name: str = Field(..., min_length=1, max_length=100, description="Unique in the organization; named in refusals.")
    scope: Literal["provider", "user", "agent"]
    subject: str = Field(..., min_length=1, description="The provider's name (a pool's name covers its members), the user's id or the agent's id.")
    metric: Literal["tokens", "cost_usd"] = Field(..., description="tokens: prompt + completion tokens; cost_usd: US dollars of calls with a known price.")
    limit: Decimal = Field(..., gt=0)
    period: Literal["day", "month"] = Field(..., description="A UTC day or calendar month; the count starts again at its end.")
    hard: bool = Field(True, description="true: calls are refused (429) once it is spent; false: a warning is logged once and shown here.")
    organization_id: Optional[str] = Field(None, description="Default: the organization of the user_id header's user.")


class Budget(BaseModel):
    id: str
    organization_id: str
    name: str
    scope: str
    subject: str
    metric: str
    limit: float
    period: str
    hard: bool
    created_at: str
    spent: float = Field(..., description="Spent in the current period (shared by every worker).")
    resets_at: str
    exceeded: bool = Field(..., description="spent >= limit: a hard budget refuses calls, a soft one has warned.")


_SUBJECT_QUERIES = {
    "provider": "SELECT name FROM providers WHERE (name = :subject OR id = :subject) AND organization_id = :org AND NOT is_deleted LIMIT 1",
    "user": "SELECT id FROM users WHERE id = :subject AND organization_id = :org AND NOT is_deleted",
    "agent": "SELECT id FROM agents WHERE id = :subject AND organization_id = :org",
}


async def _organization(server: Any, headers: Any, organization_id: Optional[str]) -> str:
    if organization_id:
        return organization_id
    actor = await server.user_manager.get_actor_or_default_async(actor_id=headers.actor_id)
    return actor.organization_id


@router.get("/v1/ketta/budgets", response_model=list[Budget], operation_id="ketta_list_budgets")
async def list_budgets(organization_id: Optional[str] = Query(None, description="Default: every organization's.")) -> list[Budget]:
    """Every budget with its current period's spend and when it resets."""
    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        return [Budget(**b) for b in await budgets.list_budgets(session, organization_id)]


@router.post("/v1/ketta/budgets", response_model=Budget, operation_id="ketta_create_budget")
async def create_budget(body: BudgetCreate = Body(...), headers: HeaderParams = Depends(get_headers),
                        server=Depends(get_letta_server)) -> Budget:
    """A budget; its current period starts with what the ledger already holds for its subject."""
    from letta.server.db import db_registry

    org = await _organization(server, headers, body.organization_id)
    async with db_registry.async_session() as session:
        if (await session.execute(sa.text("SELECT 1 FROM organizations WHERE id = :org"), {"org": org})).first() is None:
            raise HTTPException(status_code=400, detail=f"No organization '{org}'.")
        found = (await session.execute(sa.text(_SUBJECT_QUERIES[body.scope]), {"subject": body.subject, "org": org})).scalar()
        if found is None:
            what = {"provider": "provider named (or with id)", "user": "user with id", "agent": "agent with id"}[body.scope]
            raise HTTPException(status_code=400, detail=f"'subject': no {what} '{body.subject}' in organization {org}.")
        taken = (await session.execute(sa.text("SELECT 1 FROM ketta_usage_budgets WHERE organization_id = :org AND name = :name"),
                                       {"org": org, "name": body.name})).first()
        if taken is not None:
            raise HTTPException(status_code=409, detail=f"A budget named '{body.name}' exists already in organization {org}; delete it or pick another name.")
        budget_id = await budgets.create_budget(session, org, body.name, body.scope, found, body.metric, body.limit, body.period, body.hard)
        await session.commit()
        return Budget(**(await budgets.list_budgets(session, org, budget_id))[0])


@router.delete("/v1/ketta/budgets/{budget_id}", operation_id="ketta_delete_budget")
async def delete_budget(budget_id: str) -> dict[str, str]:
    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        gone = (await session.execute(sa.text("DELETE FROM ketta_usage_budgets WHERE id = :id RETURNING id"), {"id": budget_id})).first()
        await session.commit()
    if gone is None:
        raise HTTPException(status_code=404, detail=f"Budget '{budget_id}' not found.")
    return {"deleted": budget_id}


class PriceSet(BaseModel):
    provider_name: str = Field(..., min_length=1)
    model: str = Field(..., min_length=1, description="The model as the provider names it, or '*' for every model of the provider without a price of its own.")
    input_per_mtok: Decimal = Field(..., ge=0, description="US dollars per million input tokens (uncached).")
    output_per_mtok: Decimal = Field(..., ge=0, description="US dollars per million output tokens (reasoning included).")
    cached_input_per_mtok: Optional[Decimal] = Field(None, ge=0, description="Default: the input price.")
    cache_write_per_mtok: Optional[Decimal] = Field(None, ge=0, description="Default: the input price.")
    organization_id: Optional[str] = None


class Price(BaseModel):
    organization_id: str
    provider_name: str
    model: str
    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: Optional[float] = None
    cache_write_per_mtok: Optional[float] = None
    updated_at: str


_PRICE_COLUMNS = "organization_id, provider_name, model, input_per_mtok, output_per_mtok, cached_input_per_mtok, cache_write_per_mtok, updated_at"


def _price(row: Any) -> Price:
    values = dict(zip(_PRICE_COLUMNS.split(", "), row))
    values["updated_at"] = values["updated_at"].isoformat(timespec="seconds")
    return Price(**{k: _number(v) for k, v in values.items()})


@router.get("/v1/ketta/prices", response_model=list[Price], operation_id="ketta_list_prices")
async def list_prices(organization_id: Optional[str] = Query(None)) -> list[Price]:
    """The operator's prices (they win over the catalog's for that provider and model)."""
    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        rows = (await session.execute(sa.text(
            f"SELECT {_PRICE_COLUMNS} FROM ketta_usage_prices WHERE CAST(:org AS varchar) IS NULL OR organization_id = :org "
            "ORDER BY organization_id, provider_name, model"), {"org": organization_id})).all()
    return [_price(r) for r in rows]


@router.put("/v1/ketta/prices", response_model=Price, operation_id="ketta_set_price")
async def set_price(body: PriceSet = Body(...), headers: HeaderParams = Depends(get_headers), server=Depends(get_letta_server)) -> Price:
    """Set the price of a provider's model (or of all its models: '*') for calls from now on."""
    from letta.server.db import db_registry

    org = await _organization(server, headers, body.organization_id)
    async with db_registry.async_session() as session:
        exists = (await session.execute(sa.text("SELECT 1 FROM providers WHERE name = :name AND organization_id = :org AND NOT is_deleted"),
                                        {"name": body.provider_name, "org": org})).first()
        if exists is None:
            raise HTTPException(status_code=400, detail=f"'provider_name': no provider named '{body.provider_name}' in organization {org}.")
        row = (await session.execute(sa.text(
            "INSERT INTO ketta_usage_prices (organization_id, provider_name, model, input_per_mtok, output_per_mtok, cached_input_per_mtok, "
            "cache_write_per_mtok) VALUES (:org, :provider, :model, :input, :output, :cached, :write) "
            "ON CONFLICT (organization_id, provider_name, model) DO UPDATE SET input_per_mtok = EXCLUDED.input_per_mtok, "
            "output_per_mtok = EXCLUDED.output_per_mtok, cached_input_per_mtok = EXCLUDED.cached_input_per_mtok, "
            f"cache_write_per_mtok = EXCLUDED.cache_write_per_mtok, updated_at = now() RETURNING {_PRICE_COLUMNS}"),
            {"org": org, "provider": body.provider_name, "model": body.model, "input": body.input_per_mtok, "output": body.output_per_mtok,
             "cached": body.cached_input_per_mtok, "write": body.cache_write_per_mtok})).one()
        await session.commit()
    return _price(row)


@router.delete("/v1/ketta/prices", operation_id="ketta_delete_price")
async def delete_price(provider_name: str = Query(...), model: str = Query(...), organization_id: Optional[str] = Query(None),
                       headers: HeaderParams = Depends(get_headers), server=Depends(get_letta_server)) -> dict[str, str]:
    from letta.server.db import db_registry

    org = await _organization(server, headers, organization_id)
    async with db_registry.async_session() as session:
        gone = (await session.execute(sa.text(
            "DELETE FROM ketta_usage_prices WHERE organization_id = :org AND provider_name = :provider AND model = :model RETURNING model"),
            {"org": org, "provider": provider_name, "model": model})).first()
        await session.commit()
    if gone is None:
        raise HTTPException(status_code=404, detail=f"No price set for '{provider_name}' model '{model}'.")
    return {"deleted": f"{provider_name}/{model}"}
