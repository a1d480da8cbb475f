"""Where a provider's key may be sent: the base_url guard against server-side request forgery.

A provider's ``base_url`` (and an agent's model/embedding endpoint) is user input that the
server calls with a stored key. It must be an http(s) URL without credentials or control
characters, and its host must not resolve to a loopback, private, link-local, CGNAT,
unspecified, multicast or reserved address unless the operator allowed it with
``KETTA_ALLOW_PRIVATE_HOSTS`` (hostnames, IPs or CIDRs; local LLMs such as Ollama are a
normal use).

Checked twice: when the URL is stored or checked (:func:`check_url_async`, 422 saying what
to fix), and when a connection is made (:func:`guarded_async_transport`), whose network
backend resolves the host itself, checks every address and connects to the checked address,
so a DNS answer that changes after the first check (rebinding) or a redirect to another host
cannot reach a refused address. The resolver is :data:`resolver`, replaceable in-process so
tests can map names to any address without sending a packet.
"""

from __future__ import annotations

import ipaddress
import socket
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from fastapi import HTTPException

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

ALLOWED_SCHEMES = ("http", "https")
CGNAT = ipaddress.ip_network("100.64.0.0/10")


class UnsafeURL(HTTPException):
    """A URL Ketta will not call with a key (422; the message says what to fix)."""

    def __init__(self, message: str):
        super().__init__(status_code=422, detail=message)


class BlockedAddress(Exception):
    """A host resolves to an address the operator did not allow."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (what a connection would use)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


# The resolver the guard calls; tests replace it (``url_guard.resolver = fake``) to map names to
# addresses without DNS. Looked up at call time.
resolver: Resolver = system_resolver


@dataclass(frozen=True)
class AllowList:
    """KETTA_ALLOW_PRIVATE_HOSTS parsed: hostnames, and networks (an IP is a /32 or /128)."""

    hostnames: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def allows(self, host: str, address: IPAddress) -> bool:
        return _plain_host(host) in self.hostnames or any(address in net for net in self.networks if net.version == address.version)


@lru_cache(maxsize=8)
def parse_allow_list(value: str) -> AllowList:
    hostnames: set[str] = set()
    networks = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            hostnames.add(_plain_host(entry))
    return AllowList(frozenset(hostnames), tuple(networks))


def allow_list() -> AllowList:
    from ketta.core.settings import get_settings

    return parse_allow_list(get_settings().allow_private_hosts)


def _plain_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def refused_category(address: IPAddress) -> str | None:
    """Why an address is refused ('loopback', 'private', ...), None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refused_category(address.ipv4_mapped)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("CGNAT", isinstance(address, ipaddress.IPv4Address) and address in CGNAT),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-public", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def _bad_character(text: str) -> str | None:
    for char in text:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            return repr(char)
    return None


@dataclass(frozen=True)
class ParsedURL:
    scheme: str
    host: str
    port: int


def check_url_syntax(url: object, field: str = "base_url") -> ParsedURL:
    """http(s), a host, no credentials, no whitespace or control characters; UnsafeURL otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise UnsafeURL(f"'{field}' must be an http:// or https:// URL with a host, e.g. https://api.example.com/v1 (got an empty value).")
    bad = _bad_character(url)
    if bad:
        raise UnsafeURL(f"'{field}' must not contain whitespace or control characters (found {bad}); remove it.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"'{field}' is not a valid URL ({exc}).") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = f"'{scheme}'" if scheme else "none"
        raise UnsafeURL(f"'{field}' must use http:// or https:// (scheme {shown} is not allowed).")
    if "@" in parts.netloc:
        raise UnsafeURL(f"'{field}' must not contain credentials (user:password@); pass the key as 'api_key'.")
    host = parts.hostname or ""
    if not host:
        raise UnsafeURL(f"'{field}' has no host; give one, e.g. https://api.example.com/v1.")
    return ParsedURL(scheme, host, port or (443 if scheme == "https" else 80))


def refusal(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address, category: str) -> str:
    """Why a host is refused and how the operator allows it, naming the host once (an IP literal
    is its own address) and the exact setting to add."""
    where = f"a {category} address" if host == str(address) else f"its host resolves to {address}, a {category} address"
    return (f"{where}; Ketta sends no request there unless the operator adds {host} to KETTA_ALLOW_PRIVATE_HOSTS "
            "(a comma list of hosts, IPs or CIDRs, in the environment or .env) and restarts the server")


def checked_addresses(host: str, port: int, resolve: Resolver | None = None) -> list[str]:
    """The addresses of ``host`` a connection may use; BlockedAddress if any is refused.

    Every address must pass (a name with one public and one private address is refused):
    which one a client picks is not ours to choose.
    """
    plain = _plain_host(host)
    try:
        addresses = [str(ipaddress.ip_address(plain))]
    except ValueError:
        addresses = (resolve or resolver)(plain, port)
    allowed = allow_list()
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        category = refused_category(address)
        if category and not allowed.allows(plain, address):
            raise BlockedAddress(refusal(plain, address, category))
    return addresses


async def check_url_async(url: object, field: str = "base_url") -> ParsedURL:
    """:func:`check_url_syntax`, then the host's addresses (resolved off the event loop).

    A name that does not resolve now passes: creating a provider during an outage is allowed,
    and every connection is checked again when it is made.
    """
    import anyio

    parsed = check_url_syntax(url, field)
    try:
        await anyio.to_thread.run_sync(checked_addresses, parsed.host, parsed.port)
    except BlockedAddress as exc:
        raise UnsafeURL(f"'{field}': {exc}.") from None
    except OSError:
        pass
    return parsed


# --- connection time -------------------------------------------------------------------------


def _guarded_backends(core: ModuleType) -> tuple[type, type]:
    """(async, sync) httpcore network backends that connect only to checked addresses.

    ``core`` is ``httpcore`` (httpx, the OpenAI SDK) or ``httpcore2`` (httpx2, the Anthropic SDK).
    """

    class GuardedAsyncBackend(core.AsyncNetworkBackend):
        def __init__(self) -> None:
            self._inner = core.AnyIOBackend()

        async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                              local_address: str | None = None, socket_options: Iterable[Any] | None = None) -> Any:
            import anyio

            try:
                addresses = await anyio.to_thread.run_sync(checked_addresses, host, port)
            except BlockedAddress as exc:
                raise core.ConnectError(str(exc)) from None
            except OSError as exc:
                raise core.ConnectError(f"cannot resolve '{host}': {exc}") from None
            last: Exception | None = None
            for address in addresses:
                try:
                    return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
                except core.ConnectError as exc:
                    last = exc
            raise last or core.ConnectError(f"no address for '{host}'")

        async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None) -> Any:
            raise core.ConnectError("Ketta's guarded transport makes TCP connections only")

        async def sleep(self, seconds: float) -> None:
            await self._inner.sleep(seconds)

    class GuardedSyncBackend(core.NetworkBackend):
        def __init__(self) -> None:
            self._inner = core.SyncBackend()

        def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                        local_address: str | None = None, socket_options: Iterable[Any] | None = None) -> Any:
            try:
                addresses = checked_addresses(host, port)
            except BlockedAddress as exc:
                raise core.ConnectError(str(exc)) from None
            except OSError as exc:
                raise core.ConnectError(f"cannot resolve '{host}': {exc}") from None
            last: Exception | None = None
            for address in addresses:
                try:
                    return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
                except core.ConnectError as exc:
                    last = exc
            raise last or core.ConnectError(f"no address for '{host}'")

        def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None) -> Any:
            raise core.ConnectError("Ketta's guarded transport makes TCP connections only")

        def sleep(self, seconds: float) -> None:
            self._inner.sleep(seconds)

    return GuardedAsyncBackend, GuardedSyncBackend


def _environment_proxies(lib: ModuleType) -> list[tuple[Any, str | None]]:
    """(pattern, proxy URL or None for direct) from HTTP(S)_PROXY/ALL_PROXY/NO_PROXY, most specific first."""
    utils = __import__(f"{lib.__name__}._utils", fromlist=["get_environment_proxies", "URLPattern"])
    return sorted(((utils.URLPattern(key), value) for key, value in utils.get_environment_proxies().items()), key=lambda item: item[0])


def _transport_classes(lib: ModuleType, core: ModuleType) -> tuple[type, type]:
    """(async, sync) transports for ``lib`` (httpx or httpx2): direct connections through the
    guarded backend; a request that an environment proxy serves has its host checked first
    (the proxy connects, and the operator chose it)."""
    async_backend, sync_backend = _guarded_backends(core)

    def proxy_for(url: Any, proxies: list) -> str | None:
        return next((proxy for pattern, proxy in proxies if pattern.matches(url)), None)

    class GuardedAsyncTransport(lib.AsyncBaseTransport):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.pop("proxy", None)
            self._direct = lib.AsyncHTTPTransport(**kwargs)
            self._direct._pool._network_backend = async_backend()
            self._proxies = _environment_proxies(lib) if kwargs.get("trust_env", True) else []
            self._via_proxy: dict[str, Any] = {}
            self._kwargs = kwargs

        async def handle_async_request(self, request: Any) -> Any:
            proxy = proxy_for(request.url, self._proxies)
            if proxy is None:
                return await self._direct.handle_async_request(request)
            import anyio

            try:
                await anyio.to_thread.run_sync(checked_addresses, request.url.host, request.url.port or 443)
            except (BlockedAddress, OSError) as exc:
                raise lib.ConnectError(str(exc), request=request) from None
            if proxy not in self._via_proxy:
                self._via_proxy[proxy] = lib.AsyncHTTPTransport(proxy=proxy, **self._kwargs)
            return await self._via_proxy[proxy].handle_async_request(request)

        async def aclose(self) -> None:
            await self._direct.aclose()
            for transport in self._via_proxy.values():
                await transport.aclose()

    class GuardedSyncTransport(lib.BaseTransport):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.pop("proxy", None)
            self._direct = lib.HTTPTransport(**kwargs)
            self._direct._pool._network_backend = sync_backend()
            self._proxies = _environment_proxies(lib) if kwargs.get("trust_env", True) else []
            self._via_proxy: dict[str, Any] = {}
            self._kwargs = kwargs

        def handle_request(self, request: Any) -> Any:
            proxy = proxy_for(request.url, self._proxies)
            if proxy is None:
                return self._direct.handle_request(request)
            try:
                checked_addresses(request.url.host, request.url.port or 443)
            except (BlockedAddress, OSError) as exc:
                raise lib.ConnectError(str(exc), request=request) from None
            if proxy not in self._via_proxy:
                self._via_proxy[proxy] = lib.HTTPTransport(proxy=proxy, **self._kwargs)
            return self._via_proxy[proxy].handle_request(request)

        def close(self) -> None:
            self._direct.close()
            for transport in self._via_proxy.values():
                transport.close()

    return GuardedAsyncTransport, GuardedSyncTransport


@lru_cache(maxsize=4)
def transport_classes(lib_name: str = "httpx") -> tuple[type, type]:
    """The guarded (async, sync) transport classes for ``httpx`` or ``httpx2``."""
    import importlib

    core_name = {"httpx": "httpcore", "httpx2": "httpcore2"}[lib_name]
    return _transport_classes(importlib.import_module(lib_name), importlib.import_module(core_name))


def guarded_async_transport(lib_name: str = "httpx", **kwargs: Any) -> Any:
    return transport_classes(lib_name)[0](**kwargs)


def guarded_sync_transport(lib_name: str = "httpx", **kwargs: Any) -> Any:
    return transport_classes(lib_name)[1](**kwargs)


_TRANSPORT_KWARGS = ("verify", "cert", "trust_env", "http1", "http2", "limits")


def with_guarded_transport(kwargs: dict[str, Any], lib_name: str = "httpx", *, asynchronous: bool = True) -> dict[str, Any]:
    """``kwargs`` of an httpx client, with a guarded transport unless one was given."""
    if kwargs.get("transport") is None:
        options = {k: kwargs[k] for k in _TRANSPORT_KWARGS if kwargs.get(k) is not None}
        make = guarded_async_transport if asynchronous else guarded_sync_transport
        kwargs = {**kwargs, "transport": make(lib_name, **options)}
    return kwargs


def guarded_async_client(**kwargs: Any) -> Any:
    """An ``httpx.AsyncClient`` whose every connection (redirects included) passes the guard."""
    import httpx

    return httpx.AsyncClient(**with_guarded_transport(kwargs))


def guarded_client(**kwargs: Any) -> Any:
    """An ``httpx.Client`` whose every connection (redirects included) passes the guard."""
    import httpx

    return httpx.Client(**with_guarded_transport(kwargs, asynchronous=False))
