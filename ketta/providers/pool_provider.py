"""``PoolProvider``: several providers of the same models behind one name (:mod:`ketta.providers.pools`).

A pool is stored as a provider row of type ``pool`` so that everything Letta and Klui do with a
provider name works for it unchanged: the name is unique among the organization's providers,
its handles (``{pool}/{model}``) are listed by ``GET /v1/models/`` and resolve for agents,
``DELETE /v1/providers/{id}`` removes it. It has no key and no endpoint of its own: every call
goes to one of its members with that member's key and endpoint. This module adds a class and
patches nothing by itself; the provider registry (:mod:`.base`) maps ``ProviderType.pool`` to it.
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from letta.schemas.embedding_config import EmbeddingConfig
from letta.schemas.enums import ProviderCategory, ProviderType
from letta.schemas.llm_config import LLMConfig
from letta.schemas.providers.base import Provider

from ketta.providers.pools import POOL_PROVIDER_TYPE


class PoolProvider(Provider):
    """A pool: its models are those every member serves (read from the members' stored models)."""

    provider_type: ProviderType = Field(default_factory=lambda: ProviderType(POOL_PROVIDER_TYPE), description="The type of the provider.")
    provider_category: ProviderCategory = Field(ProviderCategory.byok, description="The category of the provider (base or byok)")
    base_url: Optional[str] = Field(None, description="The first member's base_url (informational: each call goes to the chosen member's own).")

    async def check_api_key(self) -> None:
        raise ValueError("A pool has no API key of its own: check its members' keys (POST /v1/providers/check).")

    async def list_llm_models_async(self) -> list[LLMConfig]:
        """The chat models every member has, under the pool's handles (a refresh re-reads the members)."""
        from ketta.providers.pools import common_models

        if not self.id:
            return []
        return await common_models(self.id, self.name)

    async def list_embedding_models_async(self) -> list[EmbeddingConfig]:
        """None: agents embed with a provider's handle."""
        return []
