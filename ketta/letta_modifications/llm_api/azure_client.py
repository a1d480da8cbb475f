"""Patches of ``letta/llm_api/azure_client.py``: the operator's ``AZURE_API_KEY`` never goes to a
call without a key of its own.

Stock ``AzureClient._resolve_credentials`` fills a missing key with ``AZURE_API_KEY`` (Letta's
settings, then the environment) whatever the endpoint: a user's keyless ``azure`` provider then
sends the operator's key to its own ``base_url``, and an agent config without a provider spends it
at the operator's ``AZURE_BASE_URL``. Stock ``request_embeddings`` uses only the env key and
``AZURE_BASE_URL``, never the embedding provider's stored key.

Here a call without a stored key gets the operator's key only as Ketta's env-key fallback allows
(``KETTA_ENV_KEY_FALLBACK``, off by default) and only when the endpoint is the operator's own
(``AZURE_BASE_URL`` or ``AZURE_API_BASE``); otherwise the placeholder ``ketta-no-key``.
Embeddings use the provider named by the embedding handle (its key, ``base_url``, ``api_version``).
"""

from __future__ import annotations

from typing import List, Optional

from openai import AsyncAzureOpenAI, AsyncOpenAI

from ketta.core import patching
from ketta.security.operator_keys import operator_key_at
from ketta.core.patching import Patch
from ketta.providers.rules import NO_KEY
from letta.llm_api.azure_client import AzureClient
from letta.schemas.embedding_config import EmbeddingConfig

TARGET = "letta.llm_api.azure_client:AzureClient._resolve_credentials"
EMBEDDINGS_TARGET = "letta.llm_api.azure_client:AzureClient.request_embeddings"


def operator_endpoints() -> list[Optional[str]]:
    """Where the operator's AZURE_API_KEY belongs: the operator's own Azure endpoint."""
    from ketta.security import server_secrets
    from letta.settings import model_settings

    return [model_settings.azure_base_url, server_secrets.get("AZURE_BASE_URL"), server_secrets.get("AZURE_API_BASE")]


def _resolve_credentials(self: AzureClient, api_key: Optional[str], base_url: Optional[str], api_version: Optional[str]):
    """Letta's endpoint and API version fallbacks; the key is the call's own, else the operator's
    only where the env-key fallback allows it, else the placeholder."""
    _, base_url, api_version = patching.original(TARGET)(self, NO_KEY, base_url, api_version)
    key = api_key or operator_key_at("AZURE_API_KEY", base_url, operator_endpoints()) or NO_KEY
    return key, base_url, api_version


async def request_embeddings(self: AzureClient, inputs: List[str], embedding_config: EmbeddingConfig) -> List[List[float]]:
    """Embeddings with the credentials of the provider named by the handle ('{provider}/{model}');
    without one (or without its key) as :func:`_resolve_credentials` decides."""
    api_key = base_url = api_version = None
    handle = embedding_config.handle or ""
    if "/" in handle and self.actor is not None:
        from letta.services.provider_manager import ProviderManager

        api_key, base_url, api_version = await ProviderManager().get_azure_credentials_async(handle.split("/", 1)[0], actor=self.actor)
    api_key, base_url, api_version = self._resolve_credentials(api_key, base_url, api_version)
    if self._is_v1_endpoint(base_url):
        client = AsyncOpenAI(api_key=api_key, base_url=base_url)
    else:
        client = AsyncAzureOpenAI(api_key=api_key, api_version=api_version, azure_endpoint=base_url)
    response = await client.embeddings.create(model=embedding_config.embedding_model, input=inputs)
    return [item.embedding for item in response.data]


WHY = ("An azure call without a stored key never gets the operator's AZURE_API_KEY, unless KETTA_ENV_KEY_FALLBACK is on "
       "and the endpoint is the operator's own (AZURE_BASE_URL/AZURE_API_BASE).")

PATCHES = [
    Patch(target=TARGET, replacement=_resolve_credentials, fingerprint="0b144e386e13256a", setting="unified_providers", why=WHY),
    Patch(target=EMBEDDINGS_TARGET, replacement=request_embeddings, fingerprint="77fe50e1e37cff7c", setting="unified_providers",
          why="Azure embeddings use the embedding provider's stored key and endpoint, not only AZURE_API_KEY at AZURE_BASE_URL; "
              + WHY),
]
