"""Patches of ``letta/schemas/enums.py``: provider types Letta does not know."""

from __future__ import annotations

from ketta.patching import Patch

PATCHES = [
    Patch(
        target="letta.schemas.enums:ProviderType.kimi",
        replacement="kimi",
        fingerprint="f9c932b655c6ac47",
        setting="kimi_provider",
        why="Moonshot AI as a provider type; must exist before Letta builds its pydantic schemas.",
        mode="enum_member",
    ),
]
