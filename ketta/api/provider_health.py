"""``GET /v1/providers/{provider_id}/health``: a provider's recent outcomes, for every worker.

A Letta-style route (same dependencies as Letta's provider routes: the actor from the
``user_id`` header or the default user), scoped to the actor's organization: an unknown id and
another organization's provider are both 404.
"""

from __future__ import annotations

from typing import Literal, Optional

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from ketta.providers import health as provider_health

router = APIRouter(prefix="/v1/providers", tags=["providers"])

_PROVIDER = sa.text("SELECT name, provider_type FROM providers WHERE id = :id AND organization_id = :org AND NOT is_deleted")


class LatencyPercentiles(BaseModel):
    p50: Optional[float] = Field(None, description="Median latency of successful calls in the window, ms.")
    p95: Optional[float] = Field(None, description="95th percentile latency of successful calls in the window, ms.")


class LastError(BaseModel):
    at: Optional[str] = Field(None, description="When (ISO 8601, UTC).")
    status_class: Optional[str] = Field(None, description="429, 4xx, 5xx, timeout, connection or error.")
    message: Optional[str] = Field(None, description="The error, with key material removed.")


class KimiBalance(BaseModel):
    available_balance: Optional[float] = Field(None, description="What calls can spend: cash plus vouchers (the account's currency).")
    voucher_balance: Optional[float] = None
    cash_balance: Optional[float] = None
    checked_at: str = Field(..., description="When Moonshot was asked (ISO 8601, UTC).")


class ProviderHealth(BaseModel):
    provider_id: str
    provider_name: str
    state: Literal["healthy", "degraded", "down", "cooling_down", "unknown"] = Field(
        ..., description="down: the last 3 calls failed; degraded: the last call failed or >=10% of the window's calls; "
        "cooling_down: skipped until cooling_down_until; unknown: no call in the window."
    )
    cooling_down_until: Optional[str] = None
    window_seconds: float
    calls: int
    errors: int
    error_rate: float
    status_classes: dict[str, int] = Field(default_factory=dict, description="Calls in the window by outcome: 2xx, 429, 4xx, 5xx, timeout, connection, error.")
    latency_ms: LatencyPercentiles
    last_success_at: Optional[str] = None
    last_error: Optional[LastError] = None
    balance: Optional[KimiBalance] = Field(None, description="A kimi provider's account balance, with ?balance=true.")
    balance_error: Optional[str] = Field(None, description="Why the balance asked for could not be read (key refused, Moonshot unreachable).")
    budgets: Optional[list[dict]] = Field(
        None, description="Usage budgets on this provider (GET /v1/ketta/budgets): limit, spent this period, resets_at, hard, "
        "exceeded (a soft budget past its limit shows here; calls go on)."
    )
    members: Optional[list["ProviderHealth"]] = Field(
        None, description="A pool's members, each with its own health; the pool's state is 'healthy' when all are, 'degraded' when "
        "some are not, 'down'/'cooling_down' when none can take a call. Its latency is the slowest member's; counts are sums."
    )


ProviderHealth.model_rebuild()


def _dependencies():
    from letta.server.rest_api.dependencies import HeaderParams, get_headers, get_letta_server

    return HeaderParams, get_headers, get_letta_server


HeaderParams, get_headers, get_letta_server = _dependencies()


@router.get("/{provider_id}/health", response_model=ProviderHealth, operation_id="retrieve_provider_health")
async def retrieve_provider_health(
    provider_id: str,
    balance: bool = Query(False, description="Also ask Moonshot for the account balance of a kimi provider (or of a pool's kimi members)."),
    headers: HeaderParams = Depends(get_headers),
    server=Depends(get_letta_server),
) -> ProviderHealth:
    """Health of a provider from the recent calls of every worker: state, error rate, latency, last error;
    with ``?balance=true`` a kimi provider's account balance (one request to Moonshot with its stored key)."""
    from letta.server.db import db_registry

    actor = await server.user_manager.get_actor_or_default_async(actor_id=headers.actor_id)
    async with db_registry.async_session() as session:
        row = (await session.execute(_PROVIDER, {"id": provider_id, "org": actor.organization_id})).first()
    if row is None:
        raise HTTPException(status_code=404, detail=f"Provider '{provider_id}' not found.")
    name, provider_type = row
    if provider_type == "pool":
        from ketta.providers import pools as provider_pools

        members = await provider_pools.members_of(actor.organization_id, name)
        if balance and not any(m.provider_type == KIMI for m in members):
            raise HTTPException(status_code=400, detail=f"Pool '{name}' has no kimi member: only kimi providers have a balance to show; drop ?balance=true.")
        healths = []
        for member in members:
            health = await provider_health.provider_health(member.id, actor.organization_id, member.name)
            if balance and member.provider_type == KIMI:
                health.update(await _balance(server, member.id, actor))
            healths.append(health)
        return ProviderHealth(**provider_health.pool_summary(provider_id, name, healths), budgets=await _budgets(actor.organization_id, name))
    health = await provider_health.provider_health(provider_id, actor.organization_id, name)
    if balance:
        if provider_type != KIMI:
            raise HTTPException(status_code=400, detail=f"Provider '{name}' is of type '{provider_type}': only kimi providers have a balance to show; drop ?balance=true.")
        health.update(await _balance(server, provider_id, actor))
    return ProviderHealth(**health, budgets=await _budgets(actor.organization_id, name))


async def _budgets(organization_id: str, name: str) -> list[dict] | None:
    from ketta.core.settings import get_settings

    if not get_settings().usage_ledger:
        return None
    from ketta.usage import budgets

    return await budgets.of_provider(organization_id, name)


KIMI = "kimi"


async def _balance(server, provider_id: str, actor) -> dict:
    """{"balance": ...} or {"balance_error": why}: never the key, never a failed health answer."""
    from datetime import datetime, timezone

    try:
        provider = (await server.provider_manager.get_provider_async(provider_id=provider_id, actor=actor)).cast_to_subtype()
        data = await provider.account_balance()
        return {"balance": KimiBalance(**{k: data.get(k) for k in ("available_balance", "voucher_balance", "cash_balance")},
                                       checked_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))}
    except Exception as exc:  # noqa: BLE001 - reported in the answer, scrubbed
        detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
        return {"balance_error": provider_health.scrub(f"{type(exc).__name__}: {detail}")}
