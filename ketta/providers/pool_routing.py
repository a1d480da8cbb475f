"""Which member of a provider pool takes a call (the pool itself: :mod:`ketta.providers.pools`).

:func:`send` (called by :mod:`ketta.providers.routing` for a call whose provider is a pool)
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
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from ketta.llm import http as llm_http
from ketta.providers import fallback as provider_fallback, health as provider_health
from ketta.providers.pools import POOL_PROVIDER_TYPE, Member, members_of

log = logging.getLogger("ketta.pools")

ERROR_MEMORY_S = 60.0  # "least recent errors": errors in the last minute


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

