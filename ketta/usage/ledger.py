"""The usage ledger: one ``ketta_usage`` row per LLM call attempt, written where the call is sent.

:func:`wrap` is applied by :mod:`ketta.providers.routing` to a client's raw ``request_async`` /
``stream_async``, *inside* its fallback and pool routing, so every attempt is a row of its own:
the agent's provider, each pool member tried (``pool`` names the pool) and each fallback handle
(``fallback`` true), failed ones included (``status`` 'error' with its status class, tokens
unknown). Tokens are the provider's own usage report (:mod:`ketta.usage.tokens`): a blocking
answer's ``usage``, a stream's usage read as its chunks pass; a stream is recorded when it ends,
breaks, or is closed unfinished ('incomplete', with what it reported so far).

Before a call is sent, the budgets it counts for are read (:mod:`ketta.usage.budgets`); a spent
hard budget refuses it (a 'refused' row, no tokens were sent). The row, its cost (the operator's
price for that provider and model, else the catalog's, else NULL) and the budgets' spend are
written by one SQL statement (in autocommit: one round trip, sent on a pooled connection's asyncpg
connection without a session), in a task of its own started as the call ends (the answer does not
wait for it); a budget check first waits for this worker's writes in progress, so the next call
sees the spend (other workers: once written, as for calls in flight). KETTA_USAGE_LEDGER=false turns all of it off.

Embedding calls (``kind`` 'embedding'): Letta's ``request_embeddings`` returns vectors only, so
:func:`wrap_embeddings` (applied by :mod:`ketta.providers.routing`) checks the budgets once and
names, for the time it runs, whose calls these are; every embeddings HTTP call it makes through
the OpenAI SDK (Letta's clients for OpenAI-compatible providers, Ollama's ``/v1`` included, batch
retries too) is then a row of its own with the usage that response reported
(:func:`embeddings_sent`, called by the SDK patch). A ``request_embeddings`` that answered without
any such call is one row with usage unknown.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Awaitable, Callable

import sqlalchemy as sa

from ketta.usage import budgets, context, prices
from ketta.usage.tokens import StreamTally, Tokens, from_response

log = logging.getLogger("ketta.usage")

# (provider name, organization) -> (provider type, base url) of the provider row, or None
Describe = Callable[[str, str], Awaitable[tuple[str | None, str | None] | None]]
Classify = Callable[[BaseException], str]

_PRICE = (
    "SELECT (GREATEST(CAST(:prompt AS bigint) - COALESCE(CAST(:cached AS bigint), 0) - COALESCE(CAST(:cache_write AS bigint), 0), 0) * o.input_per_mtok "
    "+ COALESCE(CAST(:cached AS bigint), 0) * COALESCE(o.cached_input_per_mtok, o.input_per_mtok) "
    "+ COALESCE(CAST(:cache_write AS bigint), 0) * COALESCE(o.cache_write_per_mtok, o.input_per_mtok) "
    "+ COALESCE(CAST(:completion AS bigint), 0) * o.output_per_mtok) / 1000000 AS cost "
    "FROM ketta_usage_prices o WHERE o.organization_id = CAST(:org AS varchar) AND o.provider_name = CAST(:provider AS varchar) AND o.model IN (CAST(:model AS varchar), '*') "
    "ORDER BY (o.model = '*') LIMIT 1"
)
_RECORD = sa.text(
    f"WITH price AS ({_PRICE}), recorded AS ("
    "INSERT INTO ketta_usage (organization_id, user_id, agent_id, agent_name, run_id, provider_id, provider_name, provider_type, "
    "model, handle, pool, fallback, streamed, prompt_tokens, completion_tokens, cached_input_tokens, cache_write_tokens, "
    "reasoning_tokens, cost_usd, price_source, status, error_class, duration_ms, kind) VALUES ("
    "CAST(:org AS varchar), CAST(:user AS varchar), CAST(:agent AS varchar), (SELECT name FROM agents WHERE id = CAST(:agent AS varchar)), CAST(:run AS varchar), "
    "(SELECT id FROM providers WHERE name = CAST(:provider AS varchar) AND organization_id = CAST(:org AS varchar) AND NOT is_deleted LIMIT 1), CAST(:provider AS varchar), CAST(:provider_type AS varchar), "
    "CAST(:model AS varchar), CAST(:handle AS varchar), CAST(:pool AS varchar), :fallback, :streamed, CAST(:prompt AS integer), CAST(:completion AS integer), CAST(:cached AS integer), CAST(:cache_write AS integer), CAST(:reasoning AS integer), "
    "CASE WHEN :reported THEN COALESCE((SELECT cost FROM price), CAST(:catalog AS numeric)) END, "
    "CASE WHEN NOT :reported THEN NULL WHEN EXISTS (SELECT 1 FROM price) THEN 'override' "
    "WHEN CAST(:catalog AS numeric) IS NOT NULL THEN 'catalog' END, CAST(:status AS varchar), CAST(:error_class AS varchar), CAST(:duration_ms AS integer), "
    "CAST(:kind AS varchar)) "
    "RETURNING cost_usd, COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0) AS tokens) "
    f"{budgets.SPEND_UPSERT}"
)


def enabled() -> bool:
    from ketta.core.settings import get_settings

    return get_settings().usage_ledger


@dataclass
class Call:
    """What is known of an attempt when it is sent."""

    organization_id: str | None
    user_id: str | None
    agent_id: str | None
    run_id: str | None
    provider: str | None
    model: str | None
    handle: str | None
    pool: str | None
    fallback: bool
    streamed: bool
    started: float = field(default_factory=time.perf_counter)
    provider_type: str | None = None
    base_url: str | None = None
    done: bool = False
    kind: str = "llm"  # or "embedding"

    def budget_parameters(self) -> dict[str, Any]:
        return budgets.match_parameters(self.organization_id, self.user_id, self.agent_id, self.provider, self.pool)


def _begin(client: Any, config: Any, streamed: bool) -> Call:
    actor = getattr(client, "actor", None)
    agent_id, run_id = context.agent_step.get()
    if agent_id is None:  # calls outside an agent step (summaries) that Letta tagged
        agent_id = getattr(client, "_telemetry_agent_id", None)
        run_id = run_id or getattr(client, "_telemetry_run_id", None)
    provider = getattr(config, "provider_name", None)
    handle = getattr(config, "handle", None)
    if not provider and handle and "/" in handle:
        provider = handle.split("/", 1)[0]
    return Call(
        organization_id=getattr(actor, "organization_id", None), user_id=getattr(actor, "id", None),
        agent_id=agent_id, run_id=run_id, provider=provider, model=getattr(config, "model", None), handle=handle,
        pool=context.via_pool.get(), fallback=context.via_fallback.get(), streamed=streamed,
        provider_type=getattr(getattr(config, "model_endpoint_type", None), "value", getattr(config, "model_endpoint_type", None)),
    )


async def _session() -> Any:
    from letta.server.db import db_registry

    return db_registry.async_session()


def _engine() -> Any:
    """The pool the ledger writes through: the sessions' own (Ketta's engine of this event loop, or
    Letta's with KETTA_DB_POOL=false)."""
    from ketta.core.settings import get_settings

    if get_settings().db_pool:
        from ketta.db.engine import session_factory

        return session_factory().kw["bind"]
    from letta.server.db import engine

    return engine


@functools.cache
def _driver_statement() -> tuple[str, tuple[str, ...]]:
    """``_RECORD`` as asyncpg takes it (``$n`` placeholders) and its parameters' names in order."""
    from sqlalchemy.dialects.postgresql import asyncpg

    compiled = _RECORD.compile(dialect=asyncpg.dialect())
    return compiled.string, tuple(compiled.positiontup or ())


def row_parameters(call: Call, tokens: Tokens, status: str, error_class: str | None = None) -> dict[str, Any]:
    """``_RECORD``'s parameters for one attempt: who and what it was, its tokens and catalog cost."""
    catalog: Decimal | None = prices.catalog_cost(call.provider_type, call.base_url, call.model, tokens)
    parameters = {
        **call.budget_parameters(), "run": call.run_id, "provider_type": call.provider_type, "model": call.model,
        "handle": call.handle, "fallback": call.fallback, "streamed": call.streamed,
        "prompt": tokens.prompt, "completion": tokens.completion, "cached": tokens.cached_input,
        "cache_write": tokens.cache_write, "reasoning": tokens.reasoning, "reported": tokens.reported, "catalog": catalog,
        "status": status, "error_class": error_class, "duration_ms": int((time.perf_counter() - call.started) * 1000),
        "kind": call.kind,
    }
    parameters["pool"] = call.pool  # the row's pool column (budgets match on pool_match)
    return parameters


async def record(call: Call, tokens: Tokens, status: str, error_class: str | None = None) -> None:
    """Write the attempt's row and raise its budgets' spend (once per attempt; never raises).

    One statement, atomic by itself, sent on a pooled connection's asyncpg connection directly:
    no session, no SQLAlchemy compilation or result processing (a session cost the recording
    about as much CPU again as the statement), and outside a transaction block: one round trip,
    no BEGIN or COMMIT (behind a transaction-mode PgBouncer, in a transaction: there a statement's
    prepare and execute outside one may reach different server connections)."""
    if call.done:
        return
    call.done = True
    try:
        parameters = row_parameters(call, tokens, status, error_class)
        statement, names = _driver_statement()
        values = [parameters[name] for name in names]
        from ketta.core.settings import get_settings
        from ketta.db.engine import driver_connection

        async with driver_connection(_engine()) as connection:
            if get_settings().db_pgbouncer:
                async with connection.transaction():
                    await connection.execute(statement, *values)
            else:
                await connection.execute(statement, *values)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the ledger never fails the call it records
        log.warning("Usage of a call to %s not recorded: %s", call.provider, type(exc).__name__)


def record_later(call: Call, tokens: Tokens, status: str, error_class: str | None = None) -> None:
    """Record in a task of its own: the answer goes on at once (the write is off the round trip).
    A budget check first waits for this worker's writes in progress (:func:`drain`)."""
    if call.done:
        return
    try:
        task = asyncio.get_running_loop().create_task(record(call, tokens, status, error_class))
    except RuntimeError:
        return
    _pending.add(task)
    task.add_done_callback(_pending.discard)


_pending: set[asyncio.Task] = set()


async def drain() -> None:
    """Wait for this worker's ledger writes in progress (their spend counts in the next budget check)."""
    if _pending:
        await asyncio.gather(*list(_pending), return_exceptions=True)


class UsageStream:
    """A provider's stream, passed through unchanged, its usage report read on the way."""

    def __init__(self, stream: Any, call: Call, classify: Classify):
        self._stream = stream
        self._call = call
        self._classify = classify
        self._tally = StreamTally()
        self._iterator: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def __aenter__(self) -> "UsageStream":
        if hasattr(self._stream, "__aenter__"):
            await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        self._unfinished()
        if hasattr(self._stream, "__aexit__"):
            return await self._stream.__aexit__(*exc_info)
        return None

    async def close(self) -> None:
        self._unfinished()
        if hasattr(self._stream, "close"):
            await self._stream.close()

    def _unfinished(self) -> None:
        record_later(self._call, self._tally.tokens, "incomplete")

    def __aiter__(self) -> "UsageStream":
        self._iterator = self._stream.__aiter__()
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._iterator.__anext__()
        except StopAsyncIteration:
            record_later(self._call, self._tally.tokens, "ok")
            raise
        except asyncio.CancelledError:
            record_later(self._call, self._tally.tokens, "incomplete")
            raise
        except Exception as exc:
            record_later(self._call, self._tally.tokens, "error", self._classify(exc))
            raise
        try:
            self._tally.see(item)
        except Exception:  # noqa: BLE001 - an odd chunk costs its usage, never the stream
            pass
        return item


async def _refuse_over_budget(call: Any) -> None:
    """Raise BudgetExceeded (recorded as a 'refused' row) when a hard budget of the call's organization is spent."""
    if call.organization_id:
        try:
            await _check_budgets(call)
        except budgets.BudgetExceeded:
            record_later(call, Tokens(), "refused")
            raise


def wrap(client: Any, method: Callable, stream: bool, describe: Describe, classify: Classify) -> Callable:
    """``method`` (a client's raw request_async/stream_async) recording each call in the ledger."""

    @functools.wraps(method)
    async def recorded(*args: Any, **kwargs: Any) -> Any:
        config = args[1] if len(args) > 1 else kwargs.get("llm_config")
        call = _begin(client, config, stream)
        await _refuse_over_budget(call)
        call.started = time.perf_counter()
        try:
            result = await method(*args, **kwargs)
        except asyncio.CancelledError:
            record_later(call, Tokens(), "incomplete")
            raise
        except Exception as exc:
            await _describe(call, describe)
            record_later(call, Tokens(), "error", classify(exc))
            raise
        await _describe(call, describe)
        if stream and hasattr(result, "__aiter__"):
            return UsageStream(result, call, classify)
        record_later(call, from_response(result), "ok")
        return result

    return recorded


async def _check_budgets(call: Call) -> None:
    """The call's budgets (no query at all while its organization has none, see budgets.has_budgets)."""
    read_at, organizations = budgets._with_budgets
    if time.monotonic() - read_at <= budgets.BUDGETS_SEEN_S and call.organization_id not in organizations:
        return
    await drain()
    async with await _session() as session:
        await budgets.check(session, call.budget_parameters())


async def _describe(call: Call, describe: Describe) -> None:
    if not (call.provider and call.organization_id):
        return
    try:
        found = await describe(call.provider, call.organization_id)
    except Exception:  # noqa: BLE001
        found = None
    if found:
        call.provider_type, call.base_url = found[0] or call.provider_type, found[1]


@dataclass
class EmbeddingRequest:
    """One ``request_embeddings`` being run: its row's template and how many calls it sent."""

    call: Call
    classify: Classify
    sent: int = 0


def wrap_embeddings(client: Any, method: Callable, describe: Describe, classify: Classify) -> Callable:
    """``method`` (a client's ``request_embeddings(texts, embedding_config)``) with its embeddings
    HTTP calls recorded (:func:`embeddings_sent`); a spent hard budget refuses it before any call."""

    @functools.wraps(method)
    async def recorded(*args: Any, **kwargs: Any) -> Any:
        config = args[1] if len(args) > 1 else kwargs.get("embedding_config")
        call = _begin(client, None, streamed=False)
        handle = getattr(config, "handle", None)
        call.kind, call.handle, call.model = "embedding", handle, getattr(config, "embedding_model", None)
        call.provider = handle.split("/", 1)[0] if handle and "/" in handle else None
        endpoint_type = getattr(config, "embedding_endpoint_type", None)
        call.provider_type = getattr(endpoint_type, "value", endpoint_type)
        await _refuse_over_budget(call)
        await _describe(call, describe)
        request = EmbeddingRequest(call, classify)
        token = context.embedding_request.set(request)
        try:
            result = await method(*args, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not request.sent:
                record_later(call, Tokens(), "error", classify(exc))
            raise
        finally:
            context.embedding_request.reset(token)
        if not request.sent and result:  # answered by a path the SDK hook does not see: usage unknown
            record_later(call, Tokens(), "ok")
        return result

    return recorded


async def embeddings_sent(send: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """One embeddings HTTP call (the OpenAI SDK's ``embeddings.create``): inside a recorded
    ``request_embeddings``, a ledger row with the usage its response reported."""
    request: EmbeddingRequest | None = context.embedding_request.get()
    if request is None:
        return await send(*args, **kwargs)
    request.sent += 1
    call = replace(request.call, started=time.perf_counter(), done=False)
    try:
        response = await send(*args, **kwargs)
    except asyncio.CancelledError:
        record_later(call, Tokens(), "incomplete")
        raise
    except Exception as exc:
        record_later(call, Tokens(), "error", request.classify(exc))
        raise
    record_later(call, from_response(response), "ok")
    return response
