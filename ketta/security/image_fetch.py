"""Images named by URL in a message are fetched through Ketta's URL guard (CVE-2026-4964).

Letta 0.16.8 fetches an ``http(s)`` image URL of a message's content with a plain httpx client
that follows redirects to any address: any user could make the server read its own loopback or
private network (metadata services, the embedded database's neighbours) and see the answer as an
"image" in the agent's history. Here every hop is checked like a provider's ``base_url``
(:mod:`ketta.security.url_guard`: http(s), no credentials, no loopback/private/link-local address unless
``KETTA_ALLOW_PRIVATE_HOSTS`` allows it), and the connection itself goes through the guarded
transport, so a DNS answer that changes between the check and the connect is refused too.
A refused URL is a 400 naming the address and the setting, before any connection is made.
"""

from __future__ import annotations

from urllib.parse import urljoin

import anyio
import httpx

from ketta.security import url_guard

MAX_REDIRECTS = 5
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # larger than any LLM API accepts


class ImageRefused(Exception):
    """The image URL (or a redirect) points where the server does not send requests."""


async def check_image_url(url: str) -> None:
    """ImageRefused unless ``url`` is an http(s) URL whose host may be called."""
    try:
        parsed = url_guard.check_url_syntax(url, "image url")
    except url_guard.UnsafeURL as exc:
        raise ImageRefused(str(exc.detail)) from None
    try:
        await anyio.to_thread.run_sync(url_guard.checked_addresses, parsed.host, parsed.port)
    except url_guard.BlockedAddress as exc:
        raise ImageRefused(str(exc)) from None
    except OSError as exc:
        raise ImageRefused(f"host '{parsed.host}' does not resolve ({exc})") from None


async def fetch_image(url: str, timeout_seconds: float = 5.0) -> tuple[bytes, str | None]:
    """(bytes, content type) of the image at ``url``, following at most MAX_REDIRECTS redirects,
    each one checked. Raises ImageRefused for a refused address, httpx errors for the rest."""
    from letta import __version__

    return await fetch_checked(url, timeout_seconds, MAX_IMAGE_BYTES, f"Letta/{__version__}", "the image")


async def fetch_checked(url: str, timeout_seconds: float, max_bytes: int, user_agent: str, what: str) -> tuple[bytes, str | None]:
    """(bytes, content type) of a GET of ``url`` whose every hop (at most MAX_REDIRECTS redirects)
    passes the URL guard, before connecting and at connection time. ImageRefused for a refused
    address or a body over ``max_bytes`` (``what`` names it), httpx errors for the rest."""
    timeout = httpx.Timeout(timeout_seconds, connect=min(timeout_seconds / 2, 3.0))
    async with url_guard.guarded_async_client(timeout=timeout, headers={"User-Agent": user_agent},
                                              follow_redirects=False, trust_env=False) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            await check_image_url(url)
            try:
                async with client.stream("GET", url) as response:
                    if response.is_redirect and response.headers.get("location"):
                        url = urljoin(str(response.url), response.headers["location"])
                        continue
                    response.raise_for_status()
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise ImageRefused(f"{what} is larger than {max_bytes // (1024 * 1024)} MB")
                    return bytes(body), response.headers.get("content-type")
            except httpx.ConnectError as exc:
                if isinstance(exc.__cause__, url_guard.BlockedAddress) or "KETTA_ALLOW_PRIVATE_HOSTS" in str(exc):
                    raise ImageRefused(str(exc)) from None
                raise
    raise ImageRefused(f"more than {MAX_REDIRECTS} redirects")
