"""Patches of ``letta/schemas/providers/openai.py``: handles named after the provider, no
embedding models offered for chat.

Stock Letta names the chat models of an ``openai`` provider with a custom base_url
``openai-proxy/<model>`` (embeddings get ``{name}/<model>``): agent creation with the
provider's own handle then fails with 500 and two such providers collide. It also offers
every id ``/models`` returns as a chat model, embedding models included.
"""

from __future__ import annotations

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


PATCHES = [
    Patch(
        target=LIST_TARGET,
        replacement=_list_llm_models,
        fingerprint="e9ef9c6f3b48afd1",
        setting="no_openai_proxy",
        why="Embedding ids (marked by the upstream or of a known embedding family) are not offered as chat models.",
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
