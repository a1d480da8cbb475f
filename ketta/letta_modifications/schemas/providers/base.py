"""Patches of ``letta/schemas/providers/base.py``: a registry of provider classes.

Stock ``Provider.cast_to_subtype`` is a hard-coded ``match`` over ``ProviderType``; every new
provider type would have to patch it again. Here the cast goes through
:data:`PROVIDER_CLASSES` (``ProviderType`` -> class), prefilled from Letta's own classes and
Ketta's, and extended with :func:`register_provider_class`.
"""

from __future__ import annotations

from pydantic import Field

import letta.schemas.providers as letta_providers
from letta.schemas.enums import ProviderType
from letta.schemas.providers.base import Provider
from letta.schemas.providers.base import ProviderUpdate as LettaProviderUpdate

from ketta.letta_modifications.schemas.providers.kimi import KIMI_PROVIDER_TYPE, KimiProvider
from ketta.letta_modifications.schemas.providers.pool import POOL_PROVIDER_TYPE, PoolProvider
from ketta.patching import Patch

# ProviderType value -> class. Keyed by the value string: Ketta's own types exist in the enum only
# once the enum patch ran, which may be after this module is imported.
PROVIDER_CLASSES: dict[str, type[Provider]] = {}


def register_provider_class(provider_class: type[Provider], provider_type: ProviderType | str | None = None) -> None:
    """Make ``cast_to_subtype`` produce ``provider_class`` for ``provider_type`` (default: its field's default)."""
    if provider_type is None:
        provider_type = provider_class.model_fields["provider_type"].default
    PROVIDER_CLASSES[getattr(provider_type, "value", provider_type)] = provider_class


def _register_letta_classes() -> None:
    """Every class Letta exports whose ``provider_type`` field names one type (its own default)."""
    for name in letta_providers.__all__:
        candidate = getattr(letta_providers, name)
        if isinstance(candidate, type) and issubclass(candidate, Provider) and candidate is not Provider:
            if isinstance(candidate.model_fields["provider_type"].default, ProviderType):
                register_provider_class(candidate)


def provider_class_for(provider_type: ProviderType | str) -> type[Provider]:
    try:
        return PROVIDER_CLASSES[getattr(provider_type, "value", provider_type)]
    except KeyError:
        raise ValueError(f"Unknown provider type: {provider_type}") from None


def cast_to_subtype(self: Provider) -> Provider:
    """The stored provider as an instance of its type's class (looked up in the registry)."""
    if self.base_url == "":
        self.base_url = None
    return provider_class_for(self.provider_type)(**self.model_dump(exclude_none=True))


class ProviderUpdate(LettaProviderUpdate):
    """PATCH body where every field is optional: Klui's edit form for ollama sends only ``base_url``
    (stock requires ``api_key`` and answers 422). Fields not sent keep their stored values."""

    api_key: str | None = Field(None, description="A new API key; omit it to keep the stored one.")


class ProviderUpdate(LettaProviderUpdate):
    """PATCH body where every field is optional: Klui's edit form for ollama sends only ``base_url``
    (stock requires ``api_key`` and answers 422). Fields not sent keep their stored values."""

    api_key: str | None = Field(None, description="A new API key; omit it to keep the stored one.")


_register_letta_classes()
register_provider_class(KimiProvider, KIMI_PROVIDER_TYPE)
register_provider_class(PoolProvider, POOL_PROVIDER_TYPE)

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
