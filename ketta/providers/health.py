"""Provider health: the outcome of every LLM and embedding call, per provider.

Recording is on the hot path of every call, so it only appends to an in-memory ring per
provider (no I/O, no prompt content: outcome, status class, latency, a scrubbed error text).
A background task per process upserts a summary of each changed provider into
``ketta_provider_health`` at most every ``KETTA_PROVIDER_HEALTH_FLUSH`` seconds, one row per
(provider, worker), so every worker and replica reads everyone's outcomes from the database.
A provider's rows go with it (foreign key, ON DELETE CASCADE).

``GET /v1/providers/{id}/health`` (:mod:`ketta.api.provider_health`) merges the rows of the
recent window with this process's own unflushed outcomes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import sqlalchemy as sa

from ketta.core.settings import get_settings

log = logging.getLogger("ketta.provider_health")

TABLE = "ketta_provider_health"
MAX_EVENTS = 500  # per provider and worker: enough for p95 over a busy window, small as JSON
MAX_ERROR_CHARS = 500
MAX_COOLDOWN = 3600.0  # a Retry-After longer than this is not taken at its word
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

# (epoch seconds, succeeded, latency ms, status class)
Event = tuple[float, bool, float, str]


@dataclass
class ProviderStats:
    """What this process saw of one provider since it started (events bounded)."""

    events: deque = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    last_error: str | None = None
    last_error_class: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    cooldown_until: float | None = None
    dirty: bool = False


# (organization id, provider name) -> stats
_stats: dict[tuple[str, str], ProviderStats] = {}
_lock = threading.Lock()
_flushers: dict[int, asyncio.Task] = {}  # event loop id -> its flush task
# (organization id, provider name) -> cool-down end any worker wrote, refreshed at every flush
_shared_cooldowns: dict[tuple[str, str], float] = {}
_pending: set[asyncio.Task] = set()  # immediate flushes, referenced until done


# --- classification and scrubbing ------------------------------------------------------------

def scrub(text: str) -> str:
    """An error text without key material, cut to what the health answer shows (the one scrubber,
    :func:`ketta.security.redaction.scrub`, in its strict mode)."""
    from ketta.security.redaction import scrub as shared_scrub

    return shared_scrub(text, strict=True)[:MAX_ERROR_CHARS]


def status_code_of(exc: BaseException) -> int | None:
    """The HTTP status an upstream answered with, if the exception carries one."""
    for candidate in (exc, getattr(exc, "__cause__", None)):
        if candidate is None:
            continue
        code = getattr(candidate, "status_code", None)
        if isinstance(code, int):
            return code
        response = getattr(candidate, "response", None)
        code = getattr(response, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def status_class(exc: BaseException | None) -> str:
    """"2xx", "429", "4xx", "5xx", "timeout", "connection" or "error"."""
    if exc is None:
        return "2xx"
    import httpx
    import openai

    from letta import errors

    # The Anthropic SDK raises its own classes over its own HTTP library (httpx2, not httpx).
    anthropic_timeout, anthropic_connection = _anthropic_error_classes()
    chain = [exc, exc.__cause__] if exc.__cause__ is not None else [exc]
    for candidate in chain:
        if isinstance(candidate, (*anthropic_timeout, openai.APITimeoutError, httpx.TimeoutException, asyncio.TimeoutError, TimeoutError, errors.LLMTimeoutError)):
            return "timeout"
    code = status_code_of(exc)
    if code is not None and code >= 400:
        return "429" if code == 429 else f"{code // 100}xx"
    streamed = _streamed_error_class(exc)
    if streamed is not None:
        return streamed
    for candidate in chain:
        if isinstance(candidate, (*anthropic_connection, openai.APIConnectionError, httpx.TransportError, ConnectionError, errors.LLMConnectionError)):
            return "connection"
        if isinstance(candidate, errors.LLMRateLimitError):
            return "429"
        if isinstance(candidate, (errors.LLMServerError, errors.LLMProviderOverloaded)):
            return "5xx"
        if isinstance(candidate, (errors.LLMBadRequestError, errors.LLMAuthenticationError, errors.LLMPermissionDeniedError, errors.LLMNotFoundError)):
            return "4xx"
    return "error"


def _anthropic_error_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(timeout classes, connection classes) of the Anthropic SDK, empty when it is not installed."""
    try:
        import anthropic
    except ImportError:
        return (), ()
    return (anthropic.APITimeoutError,), (anthropic.APIConnectionError,)


def _streamed_error_class(exc: BaseException) -> str | None:
    """An error event inside an opened stream (``data: {"error": {...}}``) has no HTTP status:
    its ``type``/``code`` says whether it was a rate limit or the server's trouble."""
    for candidate in (exc, exc.__cause__):
        body = getattr(candidate, "body", None)
        if candidate is None or status_code_of(candidate) is not None or not isinstance(body, dict):
            continue
        error = body.get("error", body)
        kind = f"{error.get('type') or ''} {error.get('code') or ''}".lower() if isinstance(error, dict) else ""
        if "rate_limit" in kind or "overloaded" in kind or "429" in kind:
            return "429"
        if "server_error" in kind or "internal" in kind or "unavailable" in kind or "timeout" in kind:
            return "5xx"
    return None


def retry_after_seconds(exc: BaseException) -> float | None:
    """The upstream's Retry-After (seconds form), if the exception carries the response."""
    for candidate in (exc, getattr(exc, "__cause__", None)):
        headers = getattr(getattr(candidate, "response", None), "headers", None)
        value = headers.get("retry-after") if headers is not None else None
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


# --- recording (hot path) ---------------------------------------------------------------------


def record(organization_id: str | None, provider_name: str | None, error: BaseException | None, latency_s: float) -> None:
    """One call's outcome: a few dict/deque operations under a lock, then back to the caller. A call
    a usage budget refused never reached the provider: not an outcome of the provider's."""
    if not organization_id or not provider_name:
        return
    if error is not None and getattr(error, "budget", None) is not None:
        from ketta.usage.budgets import BudgetExceeded

        if isinstance(error, BudgetExceeded):
            return
    now = time.time()
    cls = status_class(error)
    message = scrub(f"{type(error).__name__}: {error}") if error is not None else None
    key = (organization_id, provider_name)
    with _lock:
        stats = _stats.get(key)
        if stats is None:
            stats = _stats[key] = ProviderStats()
        stats.events.append((now, error is None, round(latency_s * 1000, 1), cls))
        if error is None:
            stats.last_success_at = now
        else:
            stats.last_error, stats.last_error_class, stats.last_error_at = message, cls, now
        cooling = cls == "429" and get_settings().provider_cooldown > 0
        if cooling:
            pause = retry_after_seconds(error) if error is not None else None
            pause = min(MAX_COOLDOWN, pause if pause is not None else get_settings().provider_cooldown)
            stats.cooldown_until = max(stats.cooldown_until or 0.0, now + pause)
        stats.dirty = True
    _ensure_flusher(flush_now=cooling)


def cooling_until(organization_id: str | None, provider_name: str | None) -> float | None:
    """Until when (epoch s) a provider asked to be left alone, seen here or by any worker; None if not."""
    if not organization_id or not provider_name or get_settings().provider_cooldown <= 0:
        return None
    key = (organization_id, provider_name)
    now = time.time()
    with _lock:
        stats = _stats.get(key)
        own = stats.cooldown_until if stats is not None else None
    until = max(own or 0.0, _shared_cooldowns.get(key, 0.0))
    _ensure_flusher()
    return until if until > now else None


def recent_errors(organization_id: str | None, provider_name: str, seconds: float) -> int:
    """How many of this process's calls to a provider failed in the last ``seconds``."""
    horizon = time.time() - seconds
    with _lock:
        stats = _stats.get((organization_id or "", provider_name))
        if stats is None:
            return 0
        return sum(1 for event in reversed(stats.events) if event[0] >= horizon and not event[1])


def snapshot(organization_id: str, provider_name: str) -> ProviderStats | None:
    """A copy of this process's stats for one provider (None if it saw no call)."""
    with _lock:
        stats = _stats.get((organization_id, provider_name))
        if stats is None:
            return None
        return ProviderStats(deque(stats.events, maxlen=MAX_EVENTS), stats.last_error, stats.last_error_class,
                             stats.last_error_at, stats.last_success_at, stats.cooldown_until, stats.dirty)


def reset() -> None:
    """Forget everything (tests)."""
    with _lock:
        _stats.clear()


# --- flushing to the database (off the request path) ----------------------------------------

_UPSERT = sa.text(
    f"INSERT INTO {TABLE} (provider_id, worker, organization_id, events, last_error, last_error_class, "
    "last_error_at, last_success_at, cooldown_until, updated_at) "
    "SELECT p.id, :worker, p.organization_id, CAST(:events AS jsonb), :last_error, :last_error_class, "
    ":last_error_at, :last_success_at, :cooldown_until, now() FROM providers p "
    "WHERE p.name = :name AND p.organization_id = :org AND NOT p.is_deleted "
    "ON CONFLICT (provider_id, worker) DO UPDATE SET events = excluded.events, last_error = excluded.last_error, "
    "last_error_class = excluded.last_error_class, last_error_at = excluded.last_error_at, "
    "last_success_at = excluded.last_success_at, cooldown_until = excluded.cooldown_until, updated_at = now()"
)
_PRUNE = sa.text(f"DELETE FROM {TABLE} WHERE updated_at < now() - interval '1 day'")


def _ts(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, timezone.utc) if epoch is not None else None


def _dirty_rows() -> list[dict[str, Any]]:
    window = get_settings().provider_health_window
    horizon = time.time() - window
    rows = []
    with _lock:
        for (org, name), stats in _stats.items():
            if not stats.dirty:
                continue
            stats.dirty = False
            rows.append({
                "worker": WORKER_ID, "org": org, "name": name,
                "events": json.dumps([list(e) for e in stats.events if e[0] >= horizon]),
                "last_error": stats.last_error, "last_error_class": stats.last_error_class,
                "last_error_at": _ts(stats.last_error_at), "last_success_at": _ts(stats.last_success_at),
                "cooldown_until": _ts(stats.cooldown_until),
            })
    return rows


async def flush() -> int:
    """Upsert every provider with new outcomes; returns how many rows were written."""
    from letta.server.db import db_registry

    rows = _dirty_rows()
    if not rows:
        return 0
    try:
        async with db_registry.async_session() as session:
            for row in rows:
                await session.execute(_UPSERT, row)
            await session.execute(_PRUNE)
            await session.commit()
    except Exception as exc:  # health must never break calls; retry at the next flush
        log.warning("Provider health not saved (%s); retrying later", type(exc).__name__)
        with _lock:
            for row in rows:
                stats = _stats.get((row["org"], row["name"]))
                if stats is not None:
                    stats.dirty = True
        return 0
    return len(rows)


_COOLDOWNS = sa.text(
    f"SELECT p.organization_id, p.name, max(h.cooldown_until) FROM {TABLE} h JOIN providers p ON p.id = h.provider_id "
    "WHERE h.cooldown_until > now() GROUP BY p.organization_id, p.name"
)


async def refresh_shared_cooldowns() -> None:
    """Read every worker's current cool-downs (one small query per flush interval)."""
    from letta.server.db import db_registry

    try:
        async with db_registry.async_session() as session:
            rows = (await session.execute(_COOLDOWNS)).all()
    except Exception as exc:
        log.warning("Provider cool-downs not read (%s)", type(exc).__name__)
        return
    fresh = {(org, name): until.timestamp() for org, name, until in rows}
    _shared_cooldowns.clear()
    _shared_cooldowns.update(fresh)


async def _flush_forever() -> None:
    while True:
        await flush()
        await refresh_shared_cooldowns()
        await asyncio.sleep(get_settings().provider_health_flush)


def _ensure_flusher(flush_now: bool = False) -> None:
    """Start this event loop's flush task on first use (each worker process has its own loop);
    ``flush_now``: write at once (a cool-down other workers should honour soon)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # a synchronous caller: the next async call starts it
    task = _flushers.get(id(loop))
    if task is None or task.done():
        _flushers[id(loop)] = loop.create_task(_flush_forever(), name="ketta-provider-health-flush")
    elif flush_now:
        now_task = loop.create_task(flush(), name="ketta-provider-health-flush-now")
        _pending.add(now_task)
        now_task.add_done_callback(_pending.discard)


# --- reading ----------------------------------------------------------------------------------

_READ = sa.text(
    f"SELECT worker, events, last_error, last_error_class, last_error_at, last_success_at, cooldown_until "
    f"FROM {TABLE} WHERE provider_id = :provider_id"
)


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat() if epoch is not None else None


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def summarise(events: Iterable[Event], *, last_error: str | None, last_error_class: str | None,
              last_error_at: float | None, last_success_at: float | None, cooldown_until: float | None,
              now: float, window: float) -> dict[str, Any]:
    """The health answer from merged outcomes (pure: tests feed it directly)."""
    recent = sorted((e for e in events if e[0] >= now - window), key=lambda e: e[0])
    calls = len(recent)
    errors = sum(1 for e in recent if not e[1])
    latencies = sorted(e[2] for e in recent if e[1])
    classes: dict[str, int] = {}
    for e in recent:
        classes[e[3]] = classes.get(e[3], 0) + 1
    if cooldown_until is not None and cooldown_until > now:
        state = "cooling_down"
    elif calls == 0:
        state = "unknown"
    elif all(not e[1] for e in recent[-3:]) and (calls >= 3 or last_success_at is None or last_success_at < recent[0][0]):
        state = "down"
    elif not recent[-1][1] or errors / calls >= 0.1:
        state = "degraded"
    else:
        state = "healthy"
    return {
        "state": state,
        "cooling_down_until": _iso(cooldown_until) if state == "cooling_down" else None,
        "window_seconds": window,
        "calls": calls,
        "errors": errors,
        "error_rate": round(errors / calls, 4) if calls else 0.0,
        "status_classes": classes,
        "latency_ms": {"p50": _percentile(latencies, 0.5), "p95": _percentile(latencies, 0.95)},
        "last_success_at": _iso(last_success_at),
        "last_error": {"at": _iso(last_error_at), "status_class": last_error_class, "message": last_error} if last_error_at else None,
    }


async def provider_health(provider_id: str, organization_id: str, provider_name: str) -> dict[str, Any]:
    """Every worker's recent outcomes for one provider (DB rows + this process's own, fresher)."""
    from letta.server.db import db_registry

    settings = get_settings()
    events: list[Event] = []
    last_error = last_error_class = None
    last_error_at = last_success_at = cooldown_until = None

    def merge(evts: Iterable[Any], err: str | None, err_cls: str | None, err_at: float | None, ok_at: float | None, cool: float | None) -> None:
        nonlocal last_error, last_error_class, last_error_at, last_success_at, cooldown_until
        events.extend((float(e[0]), bool(e[1]), float(e[2]), str(e[3])) for e in evts)
        if err_at is not None and (last_error_at is None or err_at > last_error_at):
            last_error, last_error_class, last_error_at = err, err_cls, err_at
        if ok_at is not None and (last_success_at is None or ok_at > last_success_at):
            last_success_at = ok_at
        if cool is not None and (cooldown_until is None or cool > cooldown_until):
            cooldown_until = cool

    async with db_registry.async_session() as session:
        rows = (await session.execute(_READ, {"provider_id": provider_id})).all()
    for worker, evts, err, err_cls, err_at, ok_at, cool in rows:
        if worker == WORKER_ID:
            continue  # this process's own outcomes come from memory, newer than its row
        merge(evts or [], err, err_cls, _epoch(err_at), _epoch(ok_at), _epoch(cool))
    own = snapshot(organization_id, provider_name)
    if own is not None:
        merge(own.events, own.last_error, own.last_error_class, own.last_error_at, own.last_success_at, own.cooldown_until)
    summary = summarise(events, last_error=last_error, last_error_class=last_error_class, last_error_at=last_error_at,
                        last_success_at=last_success_at, cooldown_until=cooldown_until, now=time.time(),
                        window=settings.provider_health_window)
    return {"provider_id": provider_id, "provider_name": provider_name, **summary}


def pool_summary(pool_id: str, pool_name: str, members: list[dict[str, Any]]) -> dict[str, Any]:
    """A pool's health from its members' (see ProviderHealth.members for the rules)."""
    states = [m["state"] for m in members]
    cooling = [m["cooling_down_until"] for m in members if m["state"] == "cooling_down"]
    if not members or all(state in ("down", "cooling_down") for state in states):
        state = "cooling_down" if members and len(cooling) == len(members) else "down"
    elif all(state == "unknown" for state in states):
        state = "unknown"
    elif any(state in ("down", "cooling_down", "degraded") for state in states):
        state = "degraded"
    else:
        state = "healthy"
    calls = sum(m["calls"] for m in members)
    errors = sum(m["errors"] for m in members)
    classes: dict[str, int] = {}
    for m in members:
        for cls, count in m["status_classes"].items():
            classes[cls] = classes.get(cls, 0) + count

    def slowest(which: str) -> float | None:
        values = [m["latency_ms"][which] for m in members if m["latency_ms"][which] is not None]
        return max(values) if values else None

    successes = [m["last_success_at"] for m in members if m["last_success_at"]]
    last_errors = [m["last_error"] for m in members if m["last_error"]]
    return {
        "provider_id": pool_id, "provider_name": pool_name, "state": state,
        "cooling_down_until": min(cooling) if state == "cooling_down" else None,
        "window_seconds": members[0]["window_seconds"] if members else get_settings().provider_health_window,
        "calls": calls, "errors": errors, "error_rate": round(errors / calls, 4) if calls else 0.0,
        "status_classes": classes, "latency_ms": {"p50": slowest("p50"), "p95": slowest("p95")},
        "last_success_at": max(successes) if successes else None,
        "last_error": max(last_errors, key=lambda e: e["at"] or "") if last_errors else None,
        "members": members,
    }
