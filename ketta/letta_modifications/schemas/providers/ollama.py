"""Patch of aiohttp's request, for Letta's ollama and mistral listings (``letta/schemas/providers/ollama.py``,
``letta/llm_api/mistral.py``).

Those listings make their own ``aiohttp.ClientSession``, which follows redirects and connects
wherever a name resolves: a provider on an allowed host answering 302 sent the listing (and a
mistral key) to a refused address. Every aiohttp request now passes Ketta's URL guard first and
never follows a redirect (a 302 is answered as the listing's failure: 502 naming the provider).
"""

from __future__ import annotations

from typing import Any

from ketta.core import patching
from ketta.core.patching import Patch

TARGET = "aiohttp.client:ClientSession._request"


async def _request(self: Any, method: str, str_or_url: Any, **kwargs: Any) -> Any:
    from ketta.security.url_guard import check_url_async

    await check_url_async(str(str_or_url), "base_url")
    kwargs["allow_redirects"] = False
    return await patching.original(TARGET)(self, method, str_or_url, **kwargs)


PATCHES = [
    Patch(
        target=TARGET,
        replacement=_request,
        fingerprint="0ea88654cef56ab2",
        setting="url_guard",
        why="aiohttp requests (Letta's ollama and mistral listings) pass the URL guard and never follow a redirect.",
    ),
]
