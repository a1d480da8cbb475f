"""One pooled HTTP client per LLM endpoint, with Ketta's timeouts and retry budget.

Letta builds a new OpenAI (or Anthropic) SDK client for every LLM call, and each SDK client
builds its own httpx client: a new connection pool, TLS context and CA bundle per call (about
15 % of a busy server's CPU), with the SDK's 600 s read timeout and 2 retries. Here every
endpoint (base URL, plus the timeout settings) gets one httpx client, made on first use and
reused by every call to it, whichever provider and key: the key travels in the headers of each
request (the SDK sets them), never in the shared client. The clients are closed at shutdown
(:func:`aclose_all`, from the app's lifespan).

Everything that talks to an LLM endpoint gets its client here (:func:`async_client`,
:func:`sync_client`, or :func:`sdk_options` for an SDK constructor), so a transport that checks
where a connection goes (the SSRF guard) plugs in at one place: :func:`_guarded_transport`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import threading
from contextvars import ContextVar
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from ketta.core.settings import get_settings

log = logging.getLogger("ketta.llm_http")

# (library, asynchronous, endpoint, timeouts, event loop id or 0) -> client
_clients: dict[tuple[Any, ...], Any] = {}
_lock = threading.Lock()


def _guarded_transport(lib_name: str, asynchronous: bool, options: dict[str, Any]) -> Any:
    """The SSRF guard's checking transport (``ketta.security.url_guard``, KETTA_URL_GUARD) when it is
    there and on, else None (the library's default transport)."""
    try:
        from ketta.security import url_guard
    except ImportError:
        return None
    if not getattr(get_settings(), "url_guard", False):
        return None
    make = getattr(url_guard, "guarded_async_transport" if asynchronous else "guarded_sync_transport", None)
    return make(lib_name, **options) if make is not None else None


def timeouts() -> tuple[float, float]:
    """(connect, read) seconds from the settings; read is the longest silence between bytes."""
    settings = get_settings()
    return settings.llm_connect_timeout, settings.llm_read_timeout


# True while a provider pool tries a member with others left to try (ketta.providers.pools): the
# SDK client made for that call does not retry, so a 429 or 5xx moves on to the next member at
# once instead of waiting (Retry-After) on the same key.
no_retries: ContextVar[bool] = ContextVar("ketta_llm_no_retries", default=False)


def max_retries() -> int:
    return 0 if no_retries.get() else get_settings().llm_max_retries


def timeout(lib: str = "httpx") -> Any:
    """The library's Timeout: connect (also the wait for a free pooled connection), read/write."""
    connect, read = timeouts()
    return importlib.import_module(lib).Timeout(connect=connect, read=read, write=read, pool=connect)


def endpoint(base_url: str | None) -> str:
    """The part of a base URL that identifies an endpoint: scheme, host, port, path."""
    parts = urlsplit(str(base_url or ""))
    return urlunsplit((parts.scheme.lower(), (parts.hostname or "").lower() + (f":{parts.port}" if parts.port else ""),
                       parts.path.rstrip("/"), "", ""))


def _loop_id() -> int:
    try:
        return id(asyncio.get_running_loop())
    except RuntimeError:
        return 0


def _build(lib_name: str, asynchronous: bool) -> Any:
    lib = importlib.import_module(lib_name)
    limits = lib.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=30)
    options: dict[str, Any] = {"limits": limits}
    factory = _guarded_transport
    transport = factory(lib_name, asynchronous, dict(options))
    if not asynchronous:
        return lib.Client(timeout=timeout(lib_name), follow_redirects=True, transport=transport, **options)
    transport = transport or lib.AsyncHTTPTransport(**options)
    return lib.AsyncClient(timeout=timeout(lib_name), follow_redirects=True, transport=_detached_transport(lib, transport))


def _detached_transport(lib: Any, inner: Any) -> Any:
    """``inner`` run in tasks of its own, so that cancelling a call closes its connection.

    When a request is cancelled inside Starlette/anyio task groups (the client disconnected,
    shutdown), anyio re-delivers the cancellation at every await until the scope is left, which
    also interrupts httpcore's clean-up: the socket to the upstream stayed open and the upstream
    kept generating. Here the exchange runs in a separate task that gets one plain cancel, and
    the response body is read and closed the same way.
    """

    class DetachedStream(lib.AsyncByteStream):
        def __init__(self, stream: Any) -> None:
            self._stream = stream
            self._closing: asyncio.Future | None = None

        async def __aiter__(self) -> Any:
            chunks = self._stream.__aiter__()
            while True:
                step = asyncio.ensure_future(chunks.__anext__())
                try:
                    chunk = await asyncio.shield(step)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    step.cancel()
                    self._close_detached()
                    raise
                yield chunk

        def _close_detached(self) -> asyncio.Future:
            if self._closing is None:
                self._closing = asyncio.ensure_future(self._stream.aclose())
            return self._closing

        async def aclose(self) -> None:
            await asyncio.shield(self._close_detached())

    class DetachedTransport(lib.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = inner

        async def handle_async_request(self, request: Any) -> Any:
            exchange = asyncio.ensure_future(inner.handle_async_request(request))
            try:
                response = await asyncio.shield(exchange)
            except asyncio.CancelledError:
                exchange.cancel()
                raise
            return lib.Response(status_code=response.status_code, headers=response.headers,
                                stream=DetachedStream(response.stream), extensions=response.extensions)

        async def aclose(self) -> None:
            await inner.aclose()

    return DetachedTransport()


def _client(base_url: str | None, lib: str, asynchronous: bool) -> Any:
    key = (lib, asynchronous, endpoint(base_url), timeouts(), _loop_id() if asynchronous else 0)
    client = _clients.get(key)
    if client is None or client.is_closed:
        with _lock:
            client = _clients.get(key)
            if client is None or client.is_closed:
                client = _clients[key] = _build(lib, asynchronous)
                log.debug("new %s client for %s", lib, key[2])
    return client


def async_client(base_url: str | None, lib: str = "httpx") -> Any:
    """The shared async client of an endpoint (per event loop: an async client is bound to one)."""
    return _client(base_url, lib, asynchronous=True)


def sync_client(base_url: str | None, lib: str = "httpx") -> Any:
    """The shared synchronous client of an endpoint (thread-safe)."""
    return _client(base_url, lib, asynchronous=False)


def sdk_options(base_url: str | None, lib: str = "httpx", asynchronous: bool = True) -> dict[str, Any]:
    """What an OpenAI/Anthropic SDK constructor takes to use the shared client and Ketta's bounds."""
    return {
        "http_client": _client(base_url, lib, asynchronous),
        "timeout": timeout(lib),
        "max_retries": max_retries(),
    }


async def aclose_all() -> None:
    """Close every shared client (the async ones of this event loop); at shutdown."""
    loop = _loop_id()
    with _lock:
        closing = [(key, client) for key, client in _clients.items() if not key[1] or key[4] == loop]
        for key, _ in closing:
            _clients.pop(key, None)
    for (_, asynchronous, *_rest), client in closing:
        try:
            if asynchronous:
                await client.aclose()
            else:
                client.close()
        except Exception as exc:  # noqa: BLE001 - shutdown goes on
            log.warning("closing an LLM HTTP client failed: %s", exc)


# --- the SDK clients Letta builds per call -----------------------------------------------------

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"


def _bounded(kwargs: dict[str, Any], base_url: str, lib: str, asynchronous: bool) -> dict[str, Any]:
    options = sdk_options(base_url, lib, asynchronous)
    if kwargs.get("http_client") is not None:  # a caller's own client stays, bounded all the same
        options.pop("http_client")
    return {**kwargs, **options}


def bounded_init(original_target: str, lib: str, asynchronous: bool, base_url_env: str, default_base_url: str) -> Callable[..., None]:
    """A replacement ``__init__`` for an SDK client class (``original_target``, e.g.
    ``openai._client:AsyncOpenAI.__init__``): the endpoint's shared client, Ketta's timeouts and
    retries, whatever the caller (Letta builds one SDK client per call) passed for those; and a key
    always passed, so the SDK never takes the operator's from the environment."""
    from ketta.core import patching
    from ketta.security.operator_keys import never_from_environment

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs = never_from_environment(kwargs)
        base_url = kwargs.get("base_url") or os.environ.get(base_url_env) or default_base_url
        patching.original(original_target)(self, *args, **_bounded(kwargs, str(base_url), lib, asynchronous))

    return __init__


def timeout_error(provider_name: str | None, base_url: str | None, cause: Exception) -> Exception:
    """Letta's LLMTimeoutError (answered 504) naming the provider, its endpoint and the bound that hit."""
    from letta.errors import ErrorCode, LLMTimeoutError

    connect, read = timeouts()
    who = f"provider '{provider_name}'" if provider_name else "the LLM provider"
    return LLMTimeoutError(
        message=(f"The {who} at {endpoint(base_url) or 'its default endpoint'} did not answer in time: no connection within "
                 f"{connect:g} s or no data for {read:g} s (KETTA_LLM_CONNECT_TIMEOUT / KETTA_LLM_READ_TIMEOUT), "
                 f"{max_retries()} retries (KETTA_LLM_MAX_RETRIES)."),
        code=ErrorCode.TIMEOUT,
        details={"provider": provider_name, "cause": type(cause).__name__},
    )


def guarded_sdk_client_classes(sdk_base_client: Any, lib: str) -> tuple[type, type]:
    """The SDK's default httpx client classes (``AsyncHttpxClientWrapper``/``SyncHttpxClientWrapper``
    of ``openai._base_client`` or ``anthropic._base_client``) on the URL guard's transport: the one
    factory both SDK patches use. ``lib`` is the httpx module name the SDK imports ("httpx", "httpx2")."""
    from ketta.security.url_guard import with_guarded_transport

    class GuardedAsyncHttpxClientWrapper(sdk_base_client.AsyncHttpxClientWrapper):  # type: ignore[name-defined,misc]
        """The SDK's default async client, on Ketta's guarded transport."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**with_guarded_transport(kwargs, lib))

    class GuardedSyncHttpxClientWrapper(sdk_base_client.SyncHttpxClientWrapper):  # type: ignore[name-defined,misc]
        """The SDK's default sync client, on Ketta's guarded transport."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**with_guarded_transport(kwargs, lib, asynchronous=False))

    return GuardedAsyncHttpxClientWrapper, GuardedSyncHttpxClientWrapper
