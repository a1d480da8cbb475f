"""Patches of ``letta/schemas/model.py``: embedding models name their provider.

Stock ``GET /v1/models/embedding`` reports ``provider_name`` as the endpoint type ("openai")
for every embedding model; Ketta reports the provider the handle names, as chat models do.
"""

from __future__ import annotations

from ketta import patching
from ketta.patching import Patch
from letta.schemas.embedding_config import EmbeddingConfig
from letta.schemas.model import EmbeddingModel

TARGET = "letta.schemas.model:EmbeddingModel.from_embedding_config"


def from_embedding_config(cls: type[EmbeddingModel], embedding_config: EmbeddingConfig) -> EmbeddingModel:
    model = patching.original(TARGET)(cls, embedding_config)
    if embedding_config.handle and "/" in embedding_config.handle:
        model.provider_name = embedding_config.handle.split("/", 1)[0]
    return model


PATCHES = [
    Patch(
        target=TARGET,
        replacement=classmethod(from_embedding_config),
        fingerprint="6bdb207b8bad338c",
        setting="no_openai_proxy",
        why="Embedding models report the provider their handle names, not the endpoint type.",
    ),
]
