"""Patches of ``letta/llm_api/openai.py``: model listing connects through Ketta's URL guard.

``openai_get_model_list_async`` (the listing of openai, vLLM, LM Studio, DeepSeek, Cerebras,
OpenRouter providers) makes a plain ``httpx.AsyncClient`` when not given one; the patch gives
it a guarded client, so a listing (provider create, refresh, model sync) cannot reach an
address the operator did not allow, even after a redirect or a changed DNS answer.
"""

from __future__ import annotations

from typing import Any

import httpx

from ketta.core import patching
from ketta.core.patching import Patch
from ketta.security.url_guard import guarded_async_client

TARGET = "letta.llm_api.openai:openai_get_model_list_async"
LISTING_TIMEOUT = httpx.Timeout(30.0, connect=10.0)  # what Letta's own client uses


async def call_with_guarded_client(target: str, *args: Any, client: httpx.AsyncClient | None = None, **kwargs: Any) -> Any:
    """Call the original ``target`` with the caller's client, or a guarded one of its own."""
    original = patching.original(target)
    if client is not None:
        return await original(*args, client=client, **kwargs)
    async with guarded_async_client(timeout=LISTING_TIMEOUT) as guarded:
        return await original(*args, client=guarded, **kwargs)


async def openai_get_model_list_async(*args: Any, **kwargs: Any) -> dict:
    return await call_with_guarded_client(TARGET, *args, **kwargs)


PATCHES = [
    Patch(
        target=TARGET,
        replacement=openai_get_model_list_async,
        fingerprint="7e01921f1a49f40b",
        setting="url_guard",
        why="Model listings of OpenAI-compatible providers connect only to addresses the URL guard allows.",
    ),
]
