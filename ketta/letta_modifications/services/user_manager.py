"""Patches of ``letta/services/user_manager.py``: two workers starting together on a new
database both get the default user (the same race as the default organization's, see
``organization_manager.py``)."""

from __future__ import annotations

from letta.orm.errors import UniqueConstraintViolationError
from letta.schemas.user import User
from letta.services.user_manager import UserManager
from sqlalchemy.exc import IntegrityError

from ketta.core import patching
from ketta.core.patching import Patch

TARGET = "letta.services.user_manager:UserManager.create_default_actor_async"


async def create_default_actor_async(self: UserManager, *args, **kwargs) -> User:
    try:
        return await patching.original(TARGET)(self, *args, **kwargs)
    except (UniqueConstraintViolationError, IntegrityError):
        return await self.get_actor_by_id_async(self.DEFAULT_USER_ID)  # made by a worker starting alongside


PATCHES = [
    Patch(
        target=TARGET,
        replacement=create_default_actor_async,
        fingerprint="582a38a3165da29b",
        setting="unified_providers",
        why="Workers starting together on a new database: the one whose insert of the default user loses the "
        "race reads it instead of failing its start-up (duplicate key).",
    ),
]
