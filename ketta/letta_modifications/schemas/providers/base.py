"""Patches of ``letta/schemas/providers/base.py``: casting goes through the provider class registry.

Stock ``Provider.cast_to_subtype`` is a hard-coded ``match`` over ``ProviderType``; every new
provider type would have to patch it again. Here the cast looks the class up in
:mod:`ketta.providers.classes` (Letta's classes and Ketta's); ``ProviderUpdate`` takes any subset.
"""

from __future__ import annotations

from pydantic import Field

from letta.schemas.providers.base import Provider
from letta.schemas.providers.base import ProviderUpdate as LettaProviderUpdate

from ketta.providers.classes import provider_class_for
from ketta.core.patching import Patch


def cast_to_subtype(self: Provider) -> Provider:
    """The stored provider as an instance of its type's class (looked up in the registry)."""
    if self.base_url == "":
        self.base_url = None
    return provider_class_for(self.provider_type)(**self.model_dump(exclude_none=True))


class ProviderUpdate(LettaProviderUpdate):
    """PATCH body where every field is optional: Klui's edit form for ollama sends only ``base_url``
    (stock requires ``api_key`` and answers 422). Fields not sent keep their stored values."""

    api_key: str | None = Field(None, description="A new API key; omit it to keep the stored one.")


UPDATE_WHY = "PATCH /v1/providers/{id} accepts any subset of fields (api_key optional); fields not sent are kept."

PATCHES = [
    Patch(
        target="letta.schemas.providers.base:ProviderUpdate",
        replacement=ProviderUpdate,
        fingerprint="6da86835778a0f10",
        setting="unified_providers",
        why=UPDATE_WHY,
    ),
    Patch(
        target="letta.schemas.providers.base:Provider.cast_to_subtype",
        replacement=cast_to_subtype,
        fingerprint="cec8191ffaedfc4c",
        setting="kimi_provider",
        why="Casting a stored provider to its class goes through a ProviderType -> class registry (Kimi included), "
        "not a hard-coded match that each new provider type would patch again.",
    ),
]
