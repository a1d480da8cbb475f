"""Patches of ``letta/llm_api/openai_client.py``: embedding calls use their provider's stored key.

Stock Letta sends embedding requests with OPENAI_API_KEY from the environment only.
The provider is the first part of the embedding handle ('{provider name}/{model}').
"""

from __future__ import annotations

from ketta import patching
from ketta.patching import Patch
from ketta.provider_keys import lookup_key
from letta.llm_api.openai_client import OpenAIClient
from letta.schemas.embedding_config import EmbeddingConfig

TARGET = "letta.llm_api.openai_client:OpenAIClient._prepare_client_kwargs_embedding"


def _prepare_client_kwargs_embedding(self: OpenAIClient, embedding_config: EmbeddingConfig) -> dict:
    kwargs = patching.original(TARGET)(self, embedding_config)
    handle = embedding_config.handle or ""
    if "/" in handle and self.actor is not None:
        key = lookup_key(handle.split("/", 1)[0], self.actor.organization_id, handle)
        if key:
            kwargs["api_key"] = key
    return kwargs


PATCHES = [
    Patch(
        target=TARGET,
        replacement=_prepare_client_kwargs_embedding,
        fingerprint="87c765c1c5274715",
        setting="unified_providers",
        why="Embedding requests carry the key of the provider named in the embedding handle.",
    ),
]
