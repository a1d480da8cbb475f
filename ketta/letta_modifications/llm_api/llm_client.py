"""Patches of ``letta/llm_api/llm_client.py``: which client class serves a provider type.

Stock ``LLMClient.create`` is a hard-coded ``match``. Here a registry (:data:`CLIENT_CLASSES`)
is consulted first, then Letta's own factory. Kimi models are ``openai`` endpoint models, so
the ``openai`` type gets :class:`OpenAICompatibleClient` (Letta's OpenAI client that applies
Moonshot's rules when the model's provider is a ``kimi`` provider) and ``kimi`` gets
:class:`KimiClient` (always Moonshot's rules).
"""

from __future__ import annotations

from typing import Optional

from letta.llm_api.llm_client_base import LLMClientBase
from letta.schemas.enums import ProviderType

from ketta.core import patching
from ketta.providers.kimi_client import KimiClient, OpenAICompatibleClient
from ketta.providers.kimi import KIMI_PROVIDER_TYPE
from ketta.core.patching import Patch

TARGET = "letta.llm_api.llm_client:LLMClient.create"

# ProviderType value -> client class; types not listed go to Letta's own factory.
CLIENT_CLASSES: dict[str, type[LLMClientBase]] = {
    KIMI_PROVIDER_TYPE: KimiClient,
    ProviderType.openai.value: OpenAICompatibleClient,
}


def create(provider_type: ProviderType, put_inner_thoughts_first: bool = True, actor=None) -> Optional[LLMClientBase]:
    """The registered client for ``provider_type``, else whatever Letta's factory makes."""
    client_class = CLIENT_CLASSES.get(getattr(provider_type, "value", provider_type))
    if client_class is None:
        return patching.original(TARGET)(provider_type=provider_type, put_inner_thoughts_first=put_inner_thoughts_first, actor=actor)
    return client_class(put_inner_thoughts_first=put_inner_thoughts_first, actor=actor)


PATCHES = [
    Patch(
        target=TARGET,
        replacement=staticmethod(create),
        fingerprint="19b4f02396453131",
        setting="kimi_provider",
        why="Kimi requests get Moonshot's adjustments (temperature, tool_choice, reasoning_content, errors): "
        "the kimi type and kimi providers' openai-endpoint models get KimiClient via a client registry.",
    ),
]
