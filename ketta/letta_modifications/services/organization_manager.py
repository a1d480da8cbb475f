"""Patches of ``letta/services/organization_manager.py``: two workers starting together on a new
database both get the default organization.

Every worker's start-up calls ``create_default_organization_async``: read it, and create it if
it is missing. Two workers doing that at the same moment both miss it; the second insert fails
(``duplicate key ... organizations_pkey``) and that worker never finishes starting (uvicorn
does not replace it). Here the loser reads what the winner made.
"""

from __future__ import annotations

from letta.orm.errors import UniqueConstraintViolationError
from letta.schemas.organization import Organization
from letta.services.organization_manager import OrganizationManager
from sqlalchemy.exc import IntegrityError

from ketta.core import patching
from ketta.core.patching import Patch

TARGET = "letta.services.organization_manager:OrganizationManager.create_default_organization_async"


async def create_default_organization_async(self: OrganizationManager) -> Organization:
    try:
        return await patching.original(TARGET)(self)
    except (UniqueConstraintViolationError, IntegrityError):
        from letta.constants import DEFAULT_ORG_ID

        return await self.get_organization_by_id_async(DEFAULT_ORG_ID)  # made by a worker starting alongside


PATCHES = [
    Patch(
        target=TARGET,
        replacement=create_default_organization_async,
        fingerprint="c3e03fd2890b6a69",
        setting="unified_providers",
        why="Workers starting together on a new database: the one whose insert of the default organization "
        "loses the race reads it instead of failing its start-up (duplicate key).",
    ),
]
