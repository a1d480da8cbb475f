"""Patches of ``letta/services/files_agents_manager.py``: detaching a file from an agent removes the link.

Stock ``detach_file`` / ``detach_file_bulk`` flag the ``files_agents`` row ``is_deleted``; Klui
deletes for real, so the row is deleted.
"""

from __future__ import annotations

from sqlalchemy import and_, delete, tuple_

from letta.orm.errors import NoResultFound
from letta.orm.files_agents import FileAgent as FileAgentRow
from letta.schemas.user import User
from letta.server.db import db_registry
from letta.services.files_agents_manager import FileAgentManager

from ketta.core.patching import Patch

TARGET = "letta.services.files_agents_manager:FileAgentManager"
BATCH = 1000  # pairs per statement (asyncpg allows 32,767 parameters)


async def detach_file(self: FileAgentManager, *, agent_id: str, file_id: str, actor: User) -> None:
    """Delete the agent-file link (404 if there is none)."""
    async with db_registry.async_session() as session:
        result = await session.execute(
            delete(FileAgentRow).where(FileAgentRow.agent_id == agent_id, FileAgentRow.file_id == file_id,
                                       FileAgentRow.organization_id == actor.organization_id)
        )
        if not result.rowcount:
            raise NoResultFound(f"FileAgent(agent_id={agent_id}, file_id={file_id}) not found in org={actor.organization_id}")
        await session.commit()


async def detach_file_bulk(self: FileAgentManager, *, agent_file_pairs: list, actor: User) -> int:
    """Delete every listed (agent_id, file_id) link; returns how many were deleted."""
    deleted = 0
    for start in range(0, len(agent_file_pairs or []), BATCH):
        batch = agent_file_pairs[start:start + BATCH]
        async with db_registry.async_session() as session:
            result = await session.execute(
                delete(FileAgentRow)
                .where(and_(tuple_(FileAgentRow.agent_id, FileAgentRow.file_id).in_(batch),
                            FileAgentRow.organization_id == actor.organization_id))
                .execution_options(synchronize_session=False)
            )
            deleted += result.rowcount
            await session.commit()
    return deleted


WHY = "Detaching a file from an agent deletes the files_agents row instead of flagging it is_deleted."

PATCHES = [
    Patch(target=f"{TARGET}.detach_file", replacement=detach_file, fingerprint="66055f084ad5a706", setting="hard_delete", why=WHY),
    Patch(target=f"{TARGET}.detach_file_bulk", replacement=detach_file_bulk, fingerprint="b848714f015507b0", setting="hard_delete", why=WHY),
]
