"""Patches of ``letta/schemas/providers/openai.py``: handles named after the provider.

Stock Letta names the chat models of an ``openai`` provider with a custom base_url
``openai-proxy/<model>`` (embeddings get ``{name}/<model>``): agent creation with the
provider's own handle then fails with 500 and two such providers collide.
"""

from __future__ import annotations

from ketta.patching import Patch
from letta.schemas.providers.base import Provider
from letta.schemas.providers.openai import OpenAIProvider

PROXY_BASE_NAME = "openai-proxy"


def get_handle(self: OpenAIProvider, model_name: str, is_embedding: bool = False, base_name: str | None = None) -> str:
    """'{provider name}/{model}', whatever the base_url."""
    if base_name == PROXY_BASE_NAME:
        base_name = None
    return Provider.get_handle(self, model_name, is_embedding=is_embedding, base_name=base_name)


PATCHES = [
    Patch(
        target="letta.schemas.providers.openai:OpenAIProvider.get_handle",
        replacement=get_handle,
        fingerprint="ad36a233deaadde1",
        setting="no_openai_proxy",
        why="Handles are '{provider name}/{model}' for every OpenAI-compatible provider, never 'openai-proxy/...'.",
        mode="add",
    ),
]
