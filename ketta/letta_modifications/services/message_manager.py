"""Patch of ``letta/services/message_manager.py``: message listings see the caller's organization only.

Stock ``list_messages`` without ``agent_id`` (``GET /v1/messages/`` and ``/latest/messages/``)
has no organization filter: a user token of one organization listed every organization's
messages. See :mod:`ketta.security.organization_scope`.
"""

from __future__ import annotations

from typing import Any

from ketta.core import patching
from ketta.security.organization_scope import organization_only
from ketta.core.patching import Patch

TARGET = "letta.services.message_manager:MessageManager.list_messages"


async def list_messages(self: Any, actor: Any, *args: Any, **kwargs: Any) -> Any:
    """Letta's listing, with every message query of it limited to ``actor``'s organization."""
    with organization_only(getattr(actor, "organization_id", None)):
        return await patching.original(TARGET)(self, actor, *args, **kwargs)


PATCHES = [
    Patch(
        target=TARGET,
        replacement=list_messages,
        fingerprint="0adf17c976f41f2d",
        setting="organization_scope",
        why="GET /v1/messages/ (list_messages without agent_id) listed every organization's messages: its queries are limited "
            "to the caller's organization.",
    ),
]
