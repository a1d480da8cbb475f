"""Patches of ``letta/server/server.py``: no start-up sync of env-configured providers."""

from __future__ import annotations

import logging

from ketta.patching import Patch
from letta.server.server import SyncServer

log = logging.getLogger("ketta.providers")


async def _sync_provider_models_async(self: SyncServer) -> None:
    """Stock start-up refreshes the models of env-configured base providers; Ketta has none.
    Each provider's models are listed when it is created or refreshed over REST."""
    log.info("Ketta: no base provider models to sync at start-up")


PATCHES = [
    Patch(
        target="letta.server.server:SyncServer._sync_provider_models_async",
        replacement=_sync_provider_models_async,
        fingerprint="e0fef70dabe394ab",
        setting="unified_providers",
        why="Start-up makes no calls to env-configured providers' APIs.",
    ),
]
