"""Patches of ``letta/schemas/providers/__init__.py``: Ketta's provider classes exported beside Letta's."""

from __future__ import annotations

from ketta.letta_modifications.schemas.providers.base import UPDATE_WHY, ProviderUpdate
from ketta.providers.kimi import KimiProvider
from ketta.core.patching import Patch

PATCHES = [
    Patch(
        target="letta.schemas.providers:KimiProvider",
        replacement=KimiProvider,
        fingerprint="5da89bff031ff085",
        setting="kimi_provider",
        why="'from letta.schemas.providers import KimiProvider' works like for Letta's own provider classes.",
        mode="add",
    ),
    Patch(
        target="letta.schemas.providers:ProviderUpdate",
        replacement=ProviderUpdate,
        fingerprint="6da86835778a0f10",
        setting="unified_providers",
        why=UPDATE_WHY,
    ),
]
