"""Patches of ``letta/schemas/model.py``: listed models name their provider and its type.

Stock ``GET /v1/models/embedding`` reports ``provider_name`` as the endpoint type ("openai")
for every embedding model; Ketta reports the provider the handle names, as chat models do.
Stock ``GET /v1/models/`` reports ``provider_type`` as the endpoint type (a Kimi model says
"openai"); Ketta reports the type of the provider that serves it.
"""

from __future__ import annotations

from ketta.core import patching
from ketta.core.patching import Patch
from letta.schemas.embedding_config import EmbeddingConfig
from letta.schemas.enums import ProviderType
from letta.schemas.llm_config import LLMConfig
from letta.schemas.model import EmbeddingModel, Model

TARGET = "letta.schemas.model:EmbeddingModel.from_embedding_config"
LLM_TARGET = "letta.schemas.model:Model.from_llm_config"


def from_llm_config(cls: type[Model], llm_config: LLMConfig) -> Model:
    """Stock conversion, with ``provider_type`` the type of the provider the listing read."""
    from ketta.letta_modifications.server.server import listed_provider_types

    model = patching.original(LLM_TARGET)(cls, llm_config)
    provider_type = listed_provider_types().get(llm_config.provider_name or "")
    if provider_type:
        model.provider_type = ProviderType(provider_type)
    return model


def from_embedding_config(cls: type[EmbeddingModel], embedding_config: EmbeddingConfig) -> EmbeddingModel:
    model = patching.original(TARGET)(cls, embedding_config)
    if embedding_config.handle and "/" in embedding_config.handle:
        model.provider_name = embedding_config.handle.split("/", 1)[0]
    return model


PATCHES = [
    Patch(
        target=LLM_TARGET,
        replacement=classmethod(from_llm_config),
        fingerprint="89beb7dded1970bc",
        setting="unified_providers",
        why="Listed chat models report their provider's type (kimi for a Kimi provider), not the endpoint type.",
    ),
    Patch(
        target=TARGET,
        replacement=classmethod(from_embedding_config),
        fingerprint="6bdb207b8bad338c",
        setting="no_openai_proxy",
        why="Embedding models report the provider their handle names, not the endpoint type.",
    ),
]
