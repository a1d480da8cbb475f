"""Patches of ``letta/schemas/providers/openai.py``: handles named after the provider, no
embedding models offered for chat.

Stock Letta names the chat models of an ``openai`` provider with a custom base_url
``openai-proxy/<model>`` (embeddings get ``{name}/<model>``): agent creation with the
provider's own handle then fails with 500 and two such providers collide. It also offers
every id ``/models`` returns as a chat model, embedding models included.
"""

from __future__ import annotations

import asyncio
import re

from ketta.core import patching
from ketta.core.patching import Patch
from letta.schemas.providers.base import Provider
from letta.schemas.providers.openai import OpenAIProvider

PROXY_BASE_NAME = "openai-proxy"


def get_handle(self: OpenAIProvider, model_name: str, is_embedding: bool = False, base_name: str | None = None) -> str:
    """'{provider name}/{model}', whatever the base_url."""
    if base_name == PROXY_BASE_NAME:
        base_name = None
    return Provider.get_handle(self, model_name, is_embedding=is_embedding, base_name=base_name)


LIST_TARGET = "letta.schemas.providers.openai:OpenAIProvider._list_llm_models"

# Known embedding families: OpenAI text-embedding-*, nomic-embed, mxbai-embed, jina-embeddings,
# arctic-embed, Qwen3-Embedding, BGE, E5, GTE, all-MiniLM.
_EMBEDDING_ID = re.compile(r"embed|(^|/)(bge|e5|gte|multilingual-e5)[-_]|minilm", re.IGNORECASE)
_EMBEDDING_MARKS = ("embedding", "embeddings")


def is_embedding_model(entry: object) -> bool:
    """An id the upstream marks as an embedding model (type/task/object), or of a known embedding family."""
    if not isinstance(entry, dict):
        return False
    for key in ("type", "task", "object", "model_type"):
        if str(entry.get(key, "")).lower() in _EMBEDDING_MARKS:
            return True
    return bool(_EMBEDDING_ID.search(str(entry.get("id", ""))))


async def _list_llm_models(self: OpenAIProvider, data: list[dict]) -> list:
    """Stock chat-model listing, without the ids that are embedding models."""
    return await patching.original(LIST_TARGET)(self, [entry for entry in data if not is_embedding_model(entry)])


EMBEDDINGS_TARGET = "letta.schemas.providers.openai:OpenAIProvider.list_embedding_models_async"
MODELS_TARGET = "letta.schemas.providers.openai:OpenAIProvider._get_models_async"

# provider instance id -> its /models request in flight: the chat and embedding listings, which
# Ketta runs at once, share one request instead of asking the endpoint twice
_in_flight: dict[int, asyncio.Future] = {}


async def _get_models_async(self: OpenAIProvider) -> list[dict]:
    """Letta's ``GET /models``; a call made while the same provider's request is in flight joins it."""
    key = id(self)
    pending = _in_flight.get(key)
    if pending is None:
        pending = asyncio.ensure_future(patching.original(MODELS_TARGET)(self))
        _in_flight[key] = pending
        pending.add_done_callback(lambda _done: _in_flight.pop(key, None))
    return await asyncio.shield(pending)


async def list_embedding_models_async(self: OpenAIProvider) -> list:
    """Letta's built-in OpenAI embedding models (ada-002, 3-small, 3-large), only those the
    endpoint's own ``/models`` names: stock offers all three for every OpenAI-compatible endpoint
    (and for groq, xai, zai, cerebras, openrouter, deepseek, baseten, which inherit it), and an
    agent made with one then fails at its first embedding."""
    configs = await patching.original(EMBEDDINGS_TARGET)(self)
    listed = {str(entry.get("id")) for entry in await self._get_models_async() if isinstance(entry, dict)}
    return [config for config in configs if config.embedding_model in listed]


PATCHES = [
    Patch(
        target=LIST_TARGET,
        replacement=_list_llm_models,
        fingerprint="e9ef9c6f3b48afd1",
        setting="no_openai_proxy",
        why="Embedding ids (marked by the upstream or of a known embedding family) are not offered as chat models.",
    ),
    Patch(
        target=MODELS_TARGET,
        replacement=_get_models_async,
        fingerprint="9198b727422e18c3",
        setting="no_openai_proxy",
        why="The chat and embedding listings of one provider, run at once, share one GET /models.",
    ),
    Patch(
        target=EMBEDDINGS_TARGET,
        replacement=list_embedding_models_async,
        fingerprint="5084d5920d247740",
        setting="no_openai_proxy",
        why="An OpenAI-compatible provider offers only the embedding models its /models names (stock: OpenAI's three for "
            "every such endpoint, which then fail at the first embedding).",
    ),
    Patch(
        target="letta.schemas.providers.openai:OpenAIProvider.get_handle",
        replacement=get_handle,
        fingerprint="ad36a233deaadde1",
        setting="no_openai_proxy",
        why="Handles are '{provider name}/{model}' for every OpenAI-compatible provider, never 'openai-proxy/...'.",
        mode="add",
    ),
]
