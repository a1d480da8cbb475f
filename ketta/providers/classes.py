"""The provider class registry: ``ProviderType`` value -> the class a stored provider is cast to.

Stock ``Provider.cast_to_subtype`` is a hard-coded ``match`` over ``ProviderType``; every new
provider type would have to patch it again. Here :data:`PROVIDER_CLASSES` is prefilled from
Letta's own classes and Ketta's (Kimi, pools) and extended with :func:`register_provider_class`;
the patch of ``cast_to_subtype`` (:mod:`ketta.letta_modifications.schemas.providers.base`) and the
key binding (:mod:`ketta.providers.key_binding`) both read it.
"""

from __future__ import annotations

import letta.schemas.providers as letta_providers
from letta.schemas.enums import ProviderType
from letta.schemas.providers.base import Provider

from ketta.providers.kimi import KIMI_PROVIDER_TYPE, KimiProvider
from ketta.providers.pool_provider import PoolProvider
from ketta.providers.pools import POOL_PROVIDER_TYPE

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
    """The class of a provider type; ValueError for a type nobody registered."""
    try:
        return PROVIDER_CLASSES[getattr(provider_type, "value", provider_type)]
    except KeyError:
        raise ValueError(f"Unknown provider type: {provider_type}") from None


_register_letta_classes()
register_provider_class(KimiProvider, KIMI_PROVIDER_TYPE)
register_provider_class(PoolProvider, POOL_PROVIDER_TYPE)
