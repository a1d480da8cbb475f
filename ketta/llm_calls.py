"""Every LLM and embedding call of a Letta client, seen from one place.

Letta makes every LLM client through ``LLMClientBase.__init__`` (``LLMClient.create`` and the
few direct constructions alike), and each client sends through four methods:
``request_async``, ``stream_async``, ``request_embeddings`` and the synchronous ``request``.
:func:`instrument` (called from the patched ``__init__``) wraps those four on the instance, so
subclasses that call ``super()`` are not counted twice and every provider type is covered
without patching each client class. The wrapper times the call and records the outcome with
:mod:`ketta.provider_health`; a stream counts from the request to the opened response (its
headers), a stream that fails later is recorded as a second, failed call. An agent's client
with fallback handles (:mod:`ketta.provider_fallback`) sends a failed request elsewhere here.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from typing import Any, Callable

from ketta import provider_fallback, provider_health

WRAPPED = "_ketta_instrumented"


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


class RecordedStream:
    """A provider's stream, recording a failure while it is read (the open was recorded already)."""

    def __init__(self, stream: Any, organization_id: str | None, provider: str | None):
        self._stream = stream
        self._where = (organization_id, provider)
        self._started = time.perf_counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def __aenter__(self) -> "RecordedStream":
        if hasattr(self._stream, "__aenter__"):
            await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        if hasattr(self._stream, "__aexit__"):
            return await self._stream.__aexit__(*exc_info)
        return None

    def __aiter__(self) -> "RecordedStream":
        self._iterator = self._stream.__aiter__()
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._iterator.__anext__()
        except StopAsyncIteration:
            raise
        except Exception as exc:
            provider_health.record(*self._where, exc, time.perf_counter() - self._started)
            raise


def _async_wrapper(client: Any, method: Callable, stream: bool, sendable: bool) -> Callable:
    @functools.wraps(method)
    async def recorded(*args: Any, **kwargs: Any) -> Any:
        organization, provider = _organization(client), provider_of(_config(args, kwargs))
        fallbacks = sendable and provider_fallback.fallbacks_of(client)
        if fallbacks:
            client._ketta_answer = None
            provider_fallback.answered_by.set(None)
        if fallbacks and len(args) >= 2 and provider_health.cooling_until(organization, provider):
            try:  # the primary asked for a pause: its fallbacks first, the primary only if none answers
                return await provider_fallback.send_elsewhere(client, method.__name__, args[0], args[1], None, kwargs)
            except provider_fallback.NoAnswer:
                pass
            except Exception as exc:
                if not provider_fallback.retriable(exc):
                    raise
        started = time.perf_counter()
        try:
            result = await method(*args, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            provider_health.record(organization, provider, exc, time.perf_counter() - started)
            if fallbacks and len(args) >= 2 and provider_fallback.retriable(exc):
                return await provider_fallback.send_elsewhere(client, method.__name__, args[0], args[1], exc, kwargs)
            raise
        provider_health.record(organization, provider, None, time.perf_counter() - started)
        if stream and hasattr(result, "__aiter__"):
            return RecordedStream(result, organization, provider)
        return result

    return recorded


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
                    provider_health.record(organization, provider, None, time.perf_counter() - started)
                yield item
        except Exception as exc:
            provider_health.record(organization, provider, exc, time.perf_counter() - started)
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
            provider_health.record(organization, provider, exc, time.perf_counter() - started)
            raise
        provider_health.record(organization, provider, None, time.perf_counter() - started)
        return result

    return recorded


def instrument(client: Any) -> None:
    """Wrap the client's sending methods on the instance (idempotent)."""
    if getattr(client, WRAPPED, False):
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
    setattr(client, WRAPPED, True)
