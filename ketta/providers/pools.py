"""Provider pools: several providers (e.g. several keys of one platform) behind one handle.

Data model. A pool is a ``providers`` row of type ``pool`` (:class:`PoolProvider`) plus its
ordered members in ``ketta_pool_members``. Being a provider row, its name shares the providers'
namespace (no handle can mean two things), its handles ``{pool}/{model}`` are ordinary
``provider_models`` rows (listed by ``GET /v1/models/``, resolved for agents, fallbacks and
Klui's model picker), and ``DELETE /v1/providers/{id}`` removes it; the members stay ordinary
providers with their own key and endpoint. Its models are the chat models every member has.
Members must be of one provider type (one wire format and one set of request rules, e.g.
Kimi's) and cannot be pools themselves.

Calls. :func:`send` (called by :mod:`ketta.providers.routing` for a call whose provider is a pool)
tries the members in order: those cooling down (a 429, shared by every worker through
``ketta_provider_health``) are skipped, the rest sorted by fewest errors in the last minute,
ties in round robin. Each attempt is the same request with the member's name, so the member's
own key goes to the member's own endpoint (:mod:`ketta.providers.key_binding` rules, Kimi's rules for a
Kimi member) and its outcome counts in the member's health. A connection error, timeout, 429 or
5xx moves on to the next member; any other error is the caller's. When no member answers, the
call fails with :class:`PoolExhausted` (503 naming each member and why).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import sqlalchemy as sa
from fastapi import HTTPException

from ketta.llm import http as llm_http
from ketta.providers import fallback as provider_fallback, health as provider_health

log = logging.getLogger("ketta.pools")

POOL_PROVIDER_TYPE = "pool"  # ProviderType.pool (Ketta's enum patch)
MAX_MEMBERS = 20
ERROR_MEMORY_S = 60.0  # "least recent errors": errors in the last minute


@dataclass(frozen=True)
class Member:
    id: str
    name: str
    provider_type: str
    base_url: str | None


class PoolExhausted(Exception):
    """Marker base; the raised class also derives from Letta's LLMProviderOverloaded (503)."""


def _exhausted(pool_name: str, reasons: list[str]) -> Exception:
    from letta.errors import ErrorCode, LLMProviderOverloaded

    class PoolUnavailable(LLMProviderOverloaded, PoolExhausted):
        pass

    why = "; ".join(reasons) if reasons else "it has no members"
    return PoolUnavailable(
        message=f"Pool '{pool_name}': no member could take the call ({why}).",
        code=ErrorCode.RATE_LIMIT_EXCEEDED,
        details={"pool": pool_name, "members": reasons},
    )


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


# --- choosing a member ------------------------------------------------------------------------

_picks: dict[tuple[str, str, str], int] = {}  # (organization, pool, member) -> when it was last tried
_sequence = itertools.count()
_picks_lock = threading.Lock()


def order(organization_id: str, pool_name: str, members: list[Member]) -> list[Member]:
    """Members by fewest errors in the last minute, then least recently tried (round robin among
    equals, whichever members were skipped), then their position."""
    with _picks_lock:
        last = {m.name: _picks.get((organization_id, pool_name, m.name), -1) for m in members}
    return sorted(members, key=lambda m: (provider_health.recent_errors(organization_id, m.name, ERROR_MEMORY_S), last[m.name]))


def picked(organization_id: str, pool_name: str, member: Member) -> None:
    with _picks_lock:
        _picks[(organization_id, pool_name, member.name)] = next(_sequence)


def member_config(llm_config: Any, member: Member) -> Any:
    """The pool's config as the member's: its name (hence its key), handle and endpoint."""
    from ketta.providers.key_binding import provider_endpoint

    return llm_config.model_copy(update={
        "provider_name": member.name,
        "handle": f"{member.name}/{llm_config.model}",
        "model_endpoint": provider_endpoint(member.provider_type, member.base_url) or llm_config.model_endpoint,
    })


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


Attempt = Callable[[Any], Awaitable[Any]]


async def send(organization_id: str, pool_name: str, llm_config: Any, attempt: Attempt,
               skip: set[str] | None = None, error: BaseException | None = None) -> tuple[Any, Member, set[str]]:
    """The call on the pool's members in turn (see the module docstring): the first answer, the
    member that gave it and the members tried (for a stream that breaks before its first token).
    ``skip``: members already tried for this call."""
    members = await members_of(organization_id, pool_name)
    tried = set(skip or ())
    reasons = [f"{name} ({provider_health.status_class(error)})" for name in sorted(tried)] if error is not None else []
    candidates = []
    for member in order(organization_id, pool_name, members):
        if member.name in tried:
            continue
        until = provider_health.cooling_until(organization_id, member.name)
        if until:
            reasons.append(f"{member.name} (cooling down until {_iso(until)})")
            continue
        candidates.append(member)
    for index, member in enumerate(candidates):
        tried.add(member.name)
        picked(organization_id, pool_name, member)
        config = member_config(llm_config, member)
        started = time.perf_counter()
        others_left = llm_http.no_retries.set(index < len(candidates) - 1)  # the next member rather than SDK retries
        try:
            result = await attempt(config)
        except Exception as exc:
            provider_health.record(organization_id, member.name, exc, time.perf_counter() - started)
            if provider_fallback.retriable(exc):
                log.warning("Pool '%s': member %s failed (%s), trying the next", pool_name, member.name, provider_health.status_class(exc))
                reasons.append(f"{member.name} ({provider_health.status_class(exc)})")
                continue
            raise
        finally:
            llm_http.no_retries.reset(others_left)
        provider_health.record(organization_id, member.name, None, time.perf_counter() - started)
        provider_fallback.answered_by.set(config)
        return result, member, tried
    raise _exhausted(pool_name, reasons)


async def is_pool(organization_id: str | None, provider_name: str | None) -> bool:
    """Whether a call's provider is a pool (the provider row is read once per request anyway)."""
    if not organization_id or not provider_name:
        return False
    from ketta.providers.keys import provider_row_async

    row = await provider_row_async(provider_name, organization_id)
    return row.found and row.provider_type == POOL_PROVIDER_TYPE


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
