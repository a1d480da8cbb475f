"""Patches of ``letta/helpers/message_helper.py``: image URLs in message content are fetched
through Ketta's URL guard, every redirect hop checked (CVE-2026-4964). See :mod:`ketta.security.image_fetch`."""

from __future__ import annotations

import httpx
from letta.errors import LettaImageFetchError

from ketta.security import image_fetch
from ketta.core.patching import Patch

TARGET = "letta.helpers.message_helper:_fetch_image_from_url"


async def _fetch_image_from_url(url: str, max_retries: int = 1, timeout_seconds: float = 5.0) -> tuple[bytes, str | None]:
    """Letta's contract (bytes, media type; LettaImageFetchError, a 400, on failure), guarded."""
    for attempt in range(max_retries + 1):
        try:
            return await image_fetch.fetch_image(url, timeout_seconds)
        except image_fetch.ImageRefused as exc:
            raise LettaImageFetchError(url=url, reason=f"refused: {exc}") from None
        except httpx.TimeoutException as exc:
            if attempt == max_retries:
                raise LettaImageFetchError(url=url, reason=f"Timeout after {max_retries + 1} attempts: {exc}") from None
        except httpx.HTTPError as exc:
            raise LettaImageFetchError(url=url, reason=str(exc) or type(exc).__name__) from None
    raise LettaImageFetchError(url=url, reason="no attempt made")


PATCHES = [
    Patch(
        target=TARGET,
        replacement=_fetch_image_from_url,
        fingerprint="852f3b6be8635037",
        setting="url_guard",
        why="CVE-2026-4964: Letta fetched any http(s) image URL of a message, following redirects, with no address "
        "check (server-side request forgery into loopback/private networks). Every hop now passes the URL guard; "
        "a refused address answers 400 before any connection.",
    ),
]
