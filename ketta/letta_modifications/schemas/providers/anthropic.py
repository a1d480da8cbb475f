"""Patches of ``letta/schemas/providers/anthropic.py``: listing and key check at the provider's base_url.

Stock ``AnthropicProvider`` lists models and checks keys with ``anthropic.AsyncAnthropic(api_key=…)``
on Anthropic's own host whatever the base_url. Here both go to the provider's base_url (see
:func:`ketta.letta_modifications.llm_api.anthropic_client.sdk_base_url`).
"""

from __future__ import annotations

import anthropic

from letta.errors import ErrorCode, LLMAuthenticationError, LLMPermissionDeniedError
from letta.schemas.llm_config import LLMConfig
from letta.schemas.providers.anthropic import AnthropicProvider

from ketta.core import patching
from ketta.letta_modifications.llm_api.anthropic_client import sdk_base_url
from ketta.core.patching import Patch

TARGET = "letta.schemas.providers.anthropic:AnthropicProvider"


async def _client(provider: AnthropicProvider) -> anthropic.AsyncAnthropic:
    key = await provider.api_key_enc.get_plaintext_async() if provider.api_key_enc else None
    if not key:
        raise ValueError("No API key provided")
    return anthropic.AsyncAnthropic(api_key=key, base_url=sdk_base_url(provider.base_url))


async def list_llm_models_async(self: AnthropicProvider) -> list[LLMConfig]:
    """The models ``GET {base_url}/v1/models`` lists (all pages), as stock builds them."""
    client = await _client(self)
    models = [model.model_dump() async for model in client.models.list()]
    return self._list_llm_models(models)


async def check_api_key(self: AnthropicProvider) -> None:
    """Stock's check on Anthropic's own API; elsewhere a models listing (what compatible endpoints serve)."""
    if sdk_base_url(self.base_url) is None:
        return await patching.original(f"{TARGET}.check_api_key")(self)
    client = await _client(self)
    try:
        await client.models.list()
    except anthropic.AuthenticationError as exc:
        raise LLMAuthenticationError(message=f"The endpoint refused the key: {exc.message}", code=ErrorCode.UNAUTHENTICATED) from exc
    except anthropic.PermissionDeniedError as exc:
        raise LLMPermissionDeniedError(message=f"The endpoint refused the key: {exc.message}", code=ErrorCode.PERMISSION_DENIED) from exc


WHY = "Anthropic-compatible endpoints: model listing and key check use the provider's base_url."

PATCHES = [
    Patch(target=f"{TARGET}.list_llm_models_async", replacement=list_llm_models_async, fingerprint="31da46943dbf8710",
          setting="unified_providers", why=WHY),
    Patch(target=f"{TARGET}.check_api_key", replacement=check_api_key, fingerprint="d49a4dd497fc90b8",
          setting="unified_providers", why=WHY),
]
