"""Patches of ``letta/services/group_manager.py``: a group's agents and shared blocks are the caller's.

Stock ``create_group_async``/``modify_group_async`` look its ``agent_ids``, ``shared_block_ids`` and
``manager_agent_id`` up by id alone: a user token of organization B made A's agents members (or
the manager) of B's group. See :mod:`ketta.security.references`.
"""

from __future__ import annotations

from typing import Any

from ketta.core import patching
from ketta.core.patching import Patch
from ketta.core.settings import get_settings
from ketta.security.references import group_refs, require_own

CREATE_TARGET = "letta.services.group_manager:GroupManager.create_group_async"
MODIFY_TARGET = "letta.services.group_manager:GroupManager.modify_group_async"


async def create_group_async(self: Any, group: Any, actor: Any, *args: Any, **kwargs: Any) -> Any:
    """404 for an agent or block of another organization, then Letta's create."""
    if get_settings().organization_scope:
        await require_own(actor, group_refs(group))
    return await patching.original(CREATE_TARGET)(self, group, actor, *args, **kwargs)


async def modify_group_async(self: Any, group_id: str, group_update: Any, actor: Any, *args: Any, **kwargs: Any) -> Any:
    """404 for an agent or block of another organization, then Letta's update."""
    if get_settings().organization_scope:
        await require_own(actor, group_refs(group_update))
    return await patching.original(MODIFY_TARGET)(self, group_id, group_update, actor, *args, **kwargs)


PATCHES = [
    Patch(
        target=CREATE_TARGET,
        replacement=create_group_async,
        fingerprint="d8f34e92c5db1e20",
        setting="organization_scope",
        why="A group's agent_ids, shared_block_ids and manager_agent_id must be of the caller's organization (404 otherwise).",
    ),
    Patch(
        target=MODIFY_TARGET,
        replacement=modify_group_async,
        fingerprint="7fb7d937294bce20",
        setting="organization_scope",
        why="A group update's agent_ids and manager_agent_id must be of the caller's organization (404 otherwise).",
    ),
]
