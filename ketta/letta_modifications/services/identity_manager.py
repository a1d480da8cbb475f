"""Patches of ``letta/services/identity_manager.py``: an identity's agents and blocks are the caller's.

Stock identity create, update and upsert link ``agent_ids``/``block_ids`` found by id alone, and
``GET /v1/identities/{id}/blocks`` and ``/agents`` list what is linked without an organization
filter: a user token of organization B read A's memory blocks and agents through an identity of
its own. The two private doors every route goes through are checked first. See
:mod:`ketta.security.references`.
"""

from __future__ import annotations

from typing import Any

from ketta.core import patching
from ketta.core.patching import Patch
from ketta.core.settings import get_settings
from ketta.security.references import identity_refs, require_own

CREATE_TARGET = "letta.services.identity_manager:IdentityManager._create_identity_async"
UPDATE_TARGET = "letta.services.identity_manager:IdentityManager._update_identity_async"


async def create_identity(self: Any, db_session: Any, identity: Any, actor: Any, *args: Any, **kwargs: Any) -> Any:
    """404 for an agent or block of another organization, then Letta's create."""
    if get_settings().organization_scope:
        await require_own(actor, identity_refs(identity))
    return await patching.original(CREATE_TARGET)(self, db_session, identity, actor, *args, **kwargs)


async def update_identity(self: Any, db_session: Any, existing_identity: Any, identity: Any, actor: Any, *args: Any, **kwargs: Any) -> Any:
    """404 for an agent or block of another organization, then Letta's update (upsert included)."""
    if get_settings().organization_scope:
        await require_own(actor, identity_refs(identity))
    return await patching.original(UPDATE_TARGET)(self, db_session, existing_identity, identity, actor, *args, **kwargs)


PATCHES = [
    Patch(
        target=CREATE_TARGET,
        replacement=create_identity,
        fingerprint="58e368b0dc35c2d8",
        setting="organization_scope",
        why="An identity's agent_ids and block_ids must be of the caller's organization (404 otherwise): B read A's blocks through it.",
    ),
    Patch(
        target=UPDATE_TARGET,
        replacement=update_identity,
        fingerprint="cbe18eed5a545180",
        setting="organization_scope",
        why="An identity update's (or upsert's) agent_ids and block_ids must be of the caller's organization (404 otherwise).",
    ),
]
