"""``GET /v1/providers/{provider_id}/health``: a provider's recent outcomes, for every worker.

A Letta-style route (same dependencies as Letta's provider routes: the actor from the
``user_id`` header or the default user), scoped to the actor's organization: an unknown id and
another organization's provider are both 404.
"""

from __future__ import annotations

from typing import Literal, Optional

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from ketta import provider_health

router = APIRouter(prefix="/v1/providers", tags=["providers"])

_PROVIDER = sa.text("SELECT name, provider_type FROM providers WHERE id = :id AND organization_id = :org AND NOT is_deleted")


class LatencyPercentiles(BaseModel):
    p50: Optional[float] = Field(None, description="Median latency of successful calls in the window, ms.")
    p95: Optional[float] = Field(None, description="95th percentile latency of successful calls in the window, ms.")


class LastError(BaseModel):
    at: Optional[str] = Field(None, description="When (ISO 8601, UTC).")
    status_class: Optional[str] = Field(None, description="429, 4xx, 5xx, timeout, connection or error.")
    message: Optional[str] = Field(None, description="The error, with key material removed.")


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
    headers: HeaderParams = Depends(get_headers),
    server=Depends(get_letta_server),
) -> ProviderHealth:
    """Health of a provider from the recent calls of every worker: state, error rate, latency, last error."""
    from letta.server.db import db_registry

    actor = await server.user_manager.get_actor_or_default_async(actor_id=headers.actor_id)
    async with db_registry.async_session() as session:
        row = (await session.execute(_PROVIDER, {"id": provider_id, "org": actor.organization_id})).first()
    if row is None:
        raise HTTPException(status_code=404, detail=f"Provider '{provider_id}' not found.")
    name, provider_type = row
    if provider_type == "pool":
        from ketta import provider_pools

        members = await provider_pools.members_of(actor.organization_id, name)
        healths = [await provider_health.provider_health(m.id, actor.organization_id, m.name) for m in members]
        return ProviderHealth(**provider_health.pool_summary(provider_id, name, healths))
    return ProviderHealth(**await provider_health.provider_health(provider_id, actor.organization_id, name))
