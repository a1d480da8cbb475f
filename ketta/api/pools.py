"""``/v1/pools/``: create, list, read, change and delete provider pools (:mod:`ketta.providers.pools`).

Letta-style routes (the actor from the ``user_id`` header or the default user, scoped to its
organization: another organization's pool is 404). A pool is also a provider row of type
``pool``: ``GET /v1/providers/`` lists it, ``DELETE /v1/providers/{id}`` deletes it, and
``GET /v1/providers/{id}/health`` shows its members' health.
"""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, Field

from ketta.providers import pools as provider_pools

router = APIRouter(prefix="/v1/pools", tags=["pools"])


class PoolCreate(BaseModel):
    name: str = Field(..., description="The pool's name; its handles are '{name}/{model}', e.g. 'kimi-pool/kimi-k2-0905-preview'.")
    members: list[str] = Field(..., description="Provider names or ids, in order (ties in the spreading are broken in turn); one provider_type.")


class PoolUpdate(BaseModel):
    members: list[str] = Field(..., description="The new member list (replaces the old one).")


class PoolMember(BaseModel):
    id: str
    name: str
    provider_type: str
    base_url: Optional[str] = None


class Pool(BaseModel):
    id: str = Field(..., description="The pool's provider id (also used by /v1/providers/{id} routes).")
    name: str
    provider_type: str = Field("pool", description="Always 'pool'.")
    members: list[PoolMember]
    models: list[str] = Field(..., description="Handles of the models every member serves.")


def _dependencies():
    from letta.server.rest_api.dependencies import HeaderParams, get_headers, get_letta_server

    return HeaderParams, get_headers, get_letta_server


HeaderParams, get_headers, get_letta_server = _dependencies()


async def _actor(headers: HeaderParams, server) -> object:
    return await server.user_manager.get_actor_or_default_async(actor_id=headers.actor_id)


@router.post("/", response_model=Pool, operation_id="create_pool")
async def create_pool(request: PoolCreate = Body(...), headers: HeaderParams = Depends(get_headers), server=Depends(get_letta_server)) -> Pool:
    """A pool over existing providers of the same type: one handle per model they all serve."""
    return Pool(**await provider_pools.create_pool(await _actor(headers, server), request.name, request.members))


@router.get("/", response_model=list[Pool], operation_id="list_pools")
async def list_pools(headers: HeaderParams = Depends(get_headers), server=Depends(get_letta_server)) -> list[Pool]:
    """The organization's pools, with members and handles."""
    return [Pool(**pool) for pool in await provider_pools.list_pools(await _actor(headers, server))]


@router.get("/{pool_id}", response_model=Pool, operation_id="retrieve_pool")
async def retrieve_pool(pool_id: str, headers: HeaderParams = Depends(get_headers), server=Depends(get_letta_server)) -> Pool:
    return Pool(**await provider_pools.get_pool(await _actor(headers, server), pool_id))


@router.patch("/{pool_id}", response_model=Pool, operation_id="modify_pool")
async def modify_pool(pool_id: str, request: PoolUpdate = Body(...), headers: HeaderParams = Depends(get_headers),
                      server=Depends(get_letta_server)) -> Pool:
    """Replace the members (same checks as create); the pool's models are read again."""
    return Pool(**await provider_pools.update_pool(await _actor(headers, server), pool_id, request.members))


@router.delete("/{pool_id}", status_code=204, operation_id="delete_pool")
async def delete_pool(pool_id: str, headers: HeaderParams = Depends(get_headers), server=Depends(get_letta_server)) -> None:
    """Delete the pool (its members stay); like DELETE /v1/providers/{id}."""
    actor = await _actor(headers, server)
    await provider_pools.get_pool(actor, pool_id)  # 404 unless it is this organization's pool
    await server.provider_manager.delete_provider_by_id_async(provider_id=pool_id, actor=actor)
