"""Provider pools: several providers (e.g. several keys of one platform) behind one handle.

A pool is a ``providers`` row of type ``pool`` (:class:`PoolProvider`) plus its ordered members
in ``ketta_pool_members``. Being a provider row, its name shares the providers' namespace (no
handle can mean two things), its handles ``{pool}/{model}`` are ordinary ``provider_models`` rows
(listed by ``GET /v1/models/``, resolved for agents, fallbacks and Klui's model picker), and
``DELETE /v1/providers/{id}`` removes it; the members stay ordinary providers with their own key
and endpoint. Its models are the chat models every member has. Members must be of one provider
type (one wire format and one set of request rules, e.g. Kimi's) and cannot be pools themselves.

This module is the data model and its management (REST: :mod:`ketta.api.pools`); which member
takes a call is :mod:`ketta.providers.pool_routing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from fastapi import HTTPException

POOL_PROVIDER_TYPE = "pool"  # ProviderType.pool (Ketta's enum patch)
MAX_MEMBERS = 20


@dataclass(frozen=True)
class Member:
    id: str
    name: str
    provider_type: str
    base_url: str | None



# --- members ----------------------------------------------------------------------------------

_MEMBERS = sa.text(
    "SELECT p.id, p.name, p.provider_type, p.base_url FROM ketta_pool_members m "
    "JOIN providers pool ON pool.id = m.pool_id JOIN providers p ON p.id = m.member_id "
    "WHERE pool.name = :name AND pool.organization_id = :org AND NOT pool.is_deleted AND NOT p.is_deleted "
    "ORDER BY m.position"
)


async def members_of(organization_id: str, pool_name: str) -> list[Member]:
    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        rows = (await session.execute(_MEMBERS, {"name": pool_name, "org": organization_id})).all()
    return [Member(*row) for row in rows]


_COMMON_MODELS = sa.text(
    "SELECT pm.name, min(pm.model_endpoint_type), min(pm.max_context_window) FROM ketta_pool_members m "
    "JOIN provider_models pm ON pm.provider_id = m.member_id AND pm.model_type = 'llm' AND NOT pm.is_deleted "
    "WHERE m.pool_id = :pool GROUP BY pm.name "
    "HAVING count(DISTINCT m.member_id) = (SELECT count(*) FROM ketta_pool_members WHERE pool_id = :pool) "
    "ORDER BY pm.name"
)


async def common_models(pool_id: str, pool_name: str, session: Any = None) -> list[Any]:
    """LLM configs of the models every member of the pool has, under the pool's handles."""
    from letta.schemas.enums import ProviderCategory
    from letta.schemas.llm_config import LLMConfig
    from letta.server.db import db_registry

    if session is None:
        async with db_registry.async_session() as own:
            rows = (await own.execute(_COMMON_MODELS, {"pool": pool_id})).all()
    else:
        rows = (await session.execute(_COMMON_MODELS, {"pool": pool_id})).all()
    return [
        LLMConfig(model=model, model_endpoint_type=endpoint_type, model_endpoint=None, context_window=window or 16384,
                  handle=f"{pool_name}/{model}", provider_name=pool_name, provider_category=ProviderCategory.byok)
        for model, endpoint_type, window in rows
    ]



# --- managing pools (REST: ketta.api.pools) -------------------------------------------


class PoolInputError(HTTPException):
    def __init__(self, message: str, status_code: int = 400):
        super().__init__(status_code=status_code, detail=message)


_PROVIDERS = sa.text(
    "SELECT id, name, provider_type, base_url FROM providers WHERE organization_id = :org AND NOT is_deleted "
    "AND (id = ANY(:refs) OR name = ANY(:refs))"
)


async def resolve_members(session: Any, organization_id: str, refs: Any, pool_id: str | None = None) -> list[Member]:
    """The providers a member list names (ids or names), checked: 400 saying what to fix."""
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
        raise PoolInputError("'members' must be a non-empty list of provider names or ids, e.g. [\"kimi-a\", \"kimi-b\"].")
    refs = [r.strip() for r in refs]
    if len(refs) > MAX_MEMBERS:
        raise PoolInputError(f"'members' names {len(refs)} providers; a pool has at most {MAX_MEMBERS}.")
    found = [Member(*row) for row in (await session.execute(_PROVIDERS, {"org": organization_id, "refs": refs})).all()]
    by_ref = {m.id: m for m in found} | {m.name: m for m in found}
    members: list[Member] = []
    for ref in refs:
        member = by_ref.get(ref)
        if member is None:
            raise PoolInputError(f"'members': no provider named or with id '{ref}' (see GET /v1/providers/); create it first.")
        if member.provider_type == POOL_PROVIDER_TYPE:
            raise PoolInputError(f"'members': '{member.name}' is a pool; a pool's members are providers with their own key.")
        if member.id == pool_id:
            raise PoolInputError("'members': a pool cannot be its own member.")
        if any(m.id == member.id for m in members):
            raise PoolInputError(f"'members': '{member.name}' is named twice.")
        members.append(member)
    types = sorted({m.provider_type for m in members})
    if len(types) > 1:
        raise PoolInputError(f"'members' must all be of one provider_type (one API format and its rules); got {', '.join(types)}.")
    return members


async def _store(session: Any, pool: Any, organization_id: str, members: list[Member]) -> list[Any]:
    """Members and models of a pool, in the caller's transaction (the pool row exists)."""
    from ketta.providers.store import store_models

    await session.execute(sa.text("DELETE FROM ketta_pool_members WHERE pool_id = :pool"), {"pool": pool.id})
    for position, member in enumerate(members):
        await session.execute(
            sa.text("INSERT INTO ketta_pool_members (pool_id, member_id, position) VALUES (:pool, :member, :position)"),
            {"pool": pool.id, "member": member.id, "position": position},
        )
    models = await common_models(pool.id, pool.name, session)
    if not models:
        raise PoolInputError(
            "The members have no chat model in common (GET /v1/models/?provider_name=<member> lists each one's); "
            "choose providers of the same models, or refresh a member whose models are missing (PATCH /v1/providers/{id}/refresh)."
        )
    await store_models(session, pool, organization_id, models, [])
    return models


async def create_pool(actor: Any, name: Any, member_refs: Any) -> dict[str, Any]:
    from letta.schemas.enums import ProviderCategory, ProviderType
    from letta.schemas.providers import Provider
    from letta.server.db import db_registry

    from ketta.providers.store import insert_provider_row
    from ketta.providers.rules import clean_provider_name

    name = clean_provider_name(name)
    async with db_registry.async_session() as session:
        members = await resolve_members(session, actor.organization_id, member_refs)
        pool = Provider(name=name, provider_type=ProviderType(POOL_PROVIDER_TYPE), provider_category=ProviderCategory.byok,
                        organization_id=actor.organization_id, base_url=members[0].base_url)
        pool.resolve_identifier()
        await insert_provider_row(session, pool, actor.id)
        models = await _store(session, pool, actor.organization_id, members)
        await session.commit()
    return describe(pool.id, name, members, models)


async def _pool_row(session: Any, organization_id: str, pool_id: str) -> Any:
    row = (await session.execute(
        sa.text("SELECT id, name FROM providers WHERE id = :id AND organization_id = :org AND provider_type = :type AND NOT is_deleted FOR UPDATE"),
        {"id": pool_id, "org": organization_id, "type": POOL_PROVIDER_TYPE},
    )).first()
    if row is None:
        raise PoolInputError(f"Pool '{pool_id}' not found.", status_code=404)
    return row


async def update_pool(actor: Any, pool_id: str, member_refs: Any) -> dict[str, Any]:
    """Replace the members (in the given order) and re-read the common models."""
    from letta.schemas.enums import ProviderCategory, ProviderType
    from letta.schemas.providers import Provider
    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        row = await _pool_row(session, actor.organization_id, pool_id)
        members = await resolve_members(session, actor.organization_id, member_refs, pool_id=pool_id)
        pool = Provider(id=row.id, name=row.name, provider_type=ProviderType(POOL_PROVIDER_TYPE), provider_category=ProviderCategory.byok,
                        organization_id=actor.organization_id, base_url=members[0].base_url)
        await session.execute(sa.text("UPDATE providers SET base_url = :url, updated_at = now() WHERE id = :id"),
                              {"url": members[0].base_url, "id": pool_id})
        models = await _store(session, pool, actor.organization_id, members)
        await session.commit()
    return describe(row.id, row.name, members, models)


async def get_pool(actor: Any, pool_id: str) -> dict[str, Any]:
    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        row = (await session.execute(
            sa.text("SELECT id, name FROM providers WHERE id = :id AND organization_id = :org AND provider_type = :type AND NOT is_deleted"),
            {"id": pool_id, "org": actor.organization_id, "type": POOL_PROVIDER_TYPE},
        )).first()
        if row is None:
            raise PoolInputError(f"Pool '{pool_id}' not found.", status_code=404)
        handles = (await session.execute(
            sa.text("SELECT handle FROM provider_models WHERE provider_id = :id AND model_type = 'llm' AND NOT is_deleted ORDER BY handle"),
            {"id": pool_id})).scalars().all()
    return describe(row.id, row.name, await members_of(actor.organization_id, row.name), handles)


async def list_pools(actor: Any) -> list[dict[str, Any]]:
    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        ids = (await session.execute(
            sa.text("SELECT id FROM providers WHERE organization_id = :org AND provider_type = :type AND NOT is_deleted ORDER BY name"),
            {"org": actor.organization_id, "type": POOL_PROVIDER_TYPE},
        )).scalars().all()
    return [await get_pool(actor, pool_id) for pool_id in ids]


def describe(pool_id: str, name: str, members: list[Member], models: list[Any]) -> dict[str, Any]:
    return {
        "id": pool_id,
        "name": name,
        "provider_type": POOL_PROVIDER_TYPE,
        "members": [{"id": m.id, "name": m.name, "provider_type": m.provider_type, "base_url": m.base_url} for m in members],
        "models": [m if isinstance(m, str) else m.handle for m in models],
    }
