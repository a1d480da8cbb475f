"""Every LLM and embedding call of a Letta client, seen from one place.

Letta makes every LLM client through ``LLMClientBase.__init__`` (``LLMClient.create`` and the
few direct constructions alike), and each client sends through four methods:
``request_async``, ``stream_async``, ``request_embeddings`` and the synchronous ``request``.
:func:`instrument` (called from the patched ``__init__``) wraps those four on the instance, so
subclasses that call ``super()`` are not counted twice and every provider type is covered
without patching each client class. The wrapper times the call and records the outcome with
:mod:`ketta.providers.health`; a stream counts from the request to the opened response (its
headers), a stream that fails later is recorded as a second, failed call. An agent's client
with fallback handles (:mod:`ketta.providers.fallback`) sends a failed request elsewhere here,
also when its stream breaks before the first token (:class:`RecordedStream`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from typing import Any, Awaitable, Callable

from ketta.providers import fallback as provider_fallback, health as provider_health, pool_routing
from ketta.providers.client_state import state_of
from ketta.llm.streams import StreamProxy
from ketta.usage import context as usage_context
from ketta.usage import ledger as usage_ledger


def provider_of(config: Any) -> str | None:
    """The provider name of an LLM config (``provider_name``) or embedding config (its handle)."""
    if config is None:
        return None
    name = getattr(config, "provider_name", None)
    if name:
        return name
    handle = getattr(config, "handle", None) or ""
    return handle.split("/", 1)[0] if "/" in handle else None


def _config(args: tuple, kwargs: dict) -> Any:
    if len(args) > 1:
        return args[1]
    return kwargs.get("llm_config") or kwargs.get("embedding_config")


def _organization(client: Any) -> str | None:
    actor = getattr(client, "actor", None)
    return getattr(actor, "organization_id", None)


# Opens the same request elsewhere: the new stream, and the provider whose later failures this
# wrapper records (None: the stream records its own, e.g. a fallback client's RecordedStream).
Reopen = Callable[[BaseException], Awaitable[tuple[Any, str | None]]]

_DELTA_FIELDS = ("content", "tool_calls", "function_call", "refusal", "reasoning_content", "reasoning")
_PRE_TOKEN_EVENTS = frozenset({"message_start", "ping"})  # Anthropic events before any content


def carries_token(item: Any) -> bool:
    """Whether a streamed item is (or carries) output the client would see. Chat Completions
    chunks before the first token hold only the role; Anthropic opens with message_start/ping.
    Anything else counts as a token (nothing is sent elsewhere after it)."""
    choices = getattr(item, "choices", None)
    if isinstance(choices, list):
        for choice in choices:
            if getattr(choice, "finish_reason", None):
                return True
            delta = getattr(choice, "delta", None)
            if delta is not None and any(getattr(delta, name, None) for name in _DELTA_FIELDS):
                return True
            extra = getattr(delta, "model_extra", None) or {}
            if any(extra.get(name) for name in _DELTA_FIELDS):
                return True
        return bool(getattr(item, "usage", None)) and not choices
    return getattr(item, "type", None) not in _PRE_TOKEN_EVENTS


class RecordedStream(StreamProxy):
    """A provider's stream, recording a failure while it is read (the open was recorded already).

    With ``reopen`` (the agent has fallback handles, or the handle is a pool), the chunks before
    the first token are held back; a retriable failure before the first token then replaces the
    stream with the one ``reopen`` opens elsewhere, and the held chunks of the failed one are
    dropped, so the client sees one answer. After the first token a failure is raised as before
    (the client gets Letta's error event, no text twice)."""

    def __init__(self, stream: Any, organization_id: str | None, provider: str | None, reopen: Reopen | None = None):
        super().__init__(stream)
        self._where = (organization_id, provider)
        self._started = time.perf_counter()
        self._reopen = reopen
        self._token_seen = reopen is None
        self._held: list[Any] = []
        self._ready: list[Any] = []
        self._entered = False

    async def __aenter__(self) -> "RecordedStream":
        await super().__aenter__()
        self._entered = True
        return self

    def __aiter__(self) -> "RecordedStream":
        self._iterator = self._stream.__aiter__()
        return self

    async def __anext__(self) -> Any:
        if self._ready:
            return self._ready.pop(0)
        while True:
            try:
                item = await self._iterator.__anext__()
            except StopAsyncIteration:
                if self._held:  # a stream without any token: what it had, as it came
                    self._ready, self._held = self._held, []
                    self._token_seen = True
                    return self._ready.pop(0)
                raise
            except Exception as exc:
                if self._where[1] is not None:
                    _record(*self._where, exc, time.perf_counter() - self._started)
                if self._token_seen or self._reopen is None or not provider_fallback.retriable(exc):
                    raise
                await self._switch(exc)
                continue
            if self._token_seen:
                return item
            if not carries_token(item):
                self._held.append(item)
                continue
            self._token_seen = True
            self._ready, self._held = [*self._held, item], []
            return self._ready.pop(0)

    async def _switch(self, error: BaseException) -> None:
        """Open the same request elsewhere (raises ``error`` if nothing answers) and read on from it."""
        replacement, provider = await self._reopen(error)
        failed, self._stream = self._stream, replacement
        self._where, self._started = (self._where[0], provider), time.perf_counter()
        self._held = []
        try:
            if hasattr(failed, "close"):
                await failed.close()
        except Exception:
            pass
        if self._entered and hasattr(replacement, "__aenter__"):
            await replacement.__aenter__()
        self._iterator = replacement.__aiter__()


async def _describe_provider(name: str, organization_id: str) -> tuple[str | None, str | None] | None:
    """The provider row's type and base_url, for pricing a ledger row (read once per request anyway)."""
    from ketta.providers.keys import provider_row_async

    row = await provider_row_async(name, organization_id)
    return (row.provider_type, row.base_url) if row.found else None


async def _send_elsewhere(*args: Any, **kwargs: Any) -> Any:
    """:func:`provider_fallback.send_elsewhere`, its calls marked as a fallback's in the usage ledger."""
    marked = usage_context.via_fallback.set(True)
    try:
        return await provider_fallback.send_elsewhere(*args, **kwargs)
    finally:
        usage_context.via_fallback.reset(marked)


def _async_wrapper(client: Any, method: Callable, stream: bool, sendable: bool) -> Callable:
    if sendable and usage_ledger.enabled():  # each attempt (own provider, pool member, fallback) is a ledger row
        method = usage_ledger.wrap(client, method, stream, _describe_provider, provider_health.status_class)
    elif method.__name__ == "request_embeddings" and usage_ledger.enabled():  # each embeddings HTTP call is a row
        method = usage_ledger.wrap_embeddings(client, method, _describe_provider, provider_health.status_class)

    @functools.wraps(method)
    async def recorded(*args: Any, **kwargs: Any) -> Any:
        organization, provider = _organization(client), provider_of(_config(args, kwargs))
        fallbacks = sendable and provider_fallback.fallbacks_of(client)
        if sendable:  # set again by whoever answers instead of this call's own provider (a fallback, a pool member)
            provider_fallback.answered_by.set(None)
        if fallbacks:
            state_of(client).answer = None
        if fallbacks and len(args) >= 2 and provider_health.cooling_until(organization, provider):
            try:  # the primary asked for a pause: its fallbacks first, the primary only if none answers
                return await _send_elsewhere(client, method.__name__, args[0], args[1], None, kwargs)
            except provider_fallback.NoAnswer:
                pass
            except Exception as exc:
                if not provider_fallback.retriable(exc):
                    raise
        if sendable and len(args) >= 2 and _pools_on() and await pool_routing.is_pool(organization, provider):
            return await _via_pool(client, method, stream, args, kwargs, organization, provider, bool(fallbacks))
        started = time.perf_counter()
        try:
            result = await method(*args, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _record(organization, provider, exc, time.perf_counter() - started)
            if fallbacks and len(args) >= 2 and provider_fallback.retriable(exc):
                return await _send_elsewhere(client, method.__name__, args[0], args[1], exc, kwargs)
            raise
        _record(organization, provider, None, time.perf_counter() - started)
        if stream and hasattr(result, "__aiter__"):
            reopen = None
            if fallbacks and len(args) >= 2:
                async def reopen(error: BaseException) -> tuple[Any, str | None]:
                    return await _send_elsewhere(client, method.__name__, args[0], args[1], error, kwargs), None
            return RecordedStream(result, organization, provider, reopen)
        return result

    return recorded


def _record(organization: str | None, provider: str | None, error: BaseException | None, seconds: float) -> None:
    """The call's outcome to provider health, when health is on (routing works without it)."""
    from ketta.core.settings import get_settings

    if get_settings().provider_health:
        provider_health.record(organization, provider, error, seconds)


def _pools_on() -> bool:
    from ketta.core.settings import get_settings

    return get_settings().provider_pools


async def _via_pool(client: Any, method: Callable, stream: bool, args: tuple, kwargs: dict, organization: str | None,
                    pool: str, fallbacks: bool) -> Any:
    """A call whose provider is a pool goes to its members (:func:`ketta.providers.pool_routing.send`);
    a pool with no member answering falls back like a failed provider."""
    request_data, llm_config, rest = args[0], args[1], args[2:]

    async def attempt(config: Any) -> Any:
        member_of = usage_context.via_pool.set(pool)
        try:
            return await method(request_data, config, *rest, **kwargs)
        finally:
            usage_context.via_pool.reset(member_of)

    async def elsewhere(error: BaseException) -> Any:
        if fallbacks and provider_fallback.retriable(error):
            return await _send_elsewhere(client, method.__name__, request_data, llm_config, error, kwargs)
        raise error

    try:
        result, member, tried = await pool_routing.send(organization, pool, llm_config, attempt)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return await elsewhere(exc)
    if not (stream and hasattr(result, "__aiter__")):
        return result

    async def reopen(error: BaseException) -> tuple[Any, str | None]:
        nonlocal tried
        try:
            replacement, next_member, tried = await pool_routing.send(organization, pool, llm_config, attempt, skip=tried, error=error)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return await elsewhere(exc), None
        return replacement, next_member.name

    return RecordedStream(result, organization, member.name, reopen)


def _async_generator_wrapper(client: Any, method: Callable) -> Callable:
    """Gemini's stream_async is an async generator: the first item counts as the open."""

    @functools.wraps(method)
    async def recorded(*args: Any, **kwargs: Any) -> Any:
        organization, provider = _organization(client), provider_of(_config(args, kwargs))
        started = time.perf_counter()
        opened = False
        try:
            async for item in method(*args, **kwargs):
                if not opened:
                    opened = True
                    _record(organization, provider, None, time.perf_counter() - started)
                yield item
        except Exception as exc:
            _record(organization, provider, exc, time.perf_counter() - started)
            raise

    return recorded


def _sync_wrapper(client: Any, method: Callable) -> Callable:
    @functools.wraps(method)
    def recorded(*args: Any, **kwargs: Any) -> Any:
        organization, provider = _organization(client), provider_of(_config(args, kwargs))
        started = time.perf_counter()
        try:
            result = method(*args, **kwargs)
        except Exception as exc:
            _record(organization, provider, exc, time.perf_counter() - started)
            raise
        _record(organization, provider, None, time.perf_counter() - started)
        return result

    return recorded


def instrument(client: Any) -> None:
    """Wrap the client's sending methods on the instance (idempotent)."""
    state = state_of(client)
    if state.instrumented:
        return
    for name in ("request_async", "stream_async", "request_embeddings", "request"):
        method = getattr(client, name, None)
        if method is None:
            continue
        function = getattr(method, "__func__", method)
        if inspect.isasyncgenfunction(function):
            wrapped = _async_generator_wrapper(client, method)
        elif inspect.iscoroutinefunction(function):
            wrapped = _async_wrapper(client, method, stream=name == "stream_async", sendable=name in ("request_async", "stream_async"))
        else:
            wrapped = _sync_wrapper(client, method)
        setattr(client, name, wrapped)
    state.instrumented = True
