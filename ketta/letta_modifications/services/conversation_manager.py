"""Patches of ``letta/services/conversation_manager.py``: deleting a conversation removes it.

Stock ``delete_conversation`` flags the conversation, its message links and its own messages
``is_deleted`` and keeps the rows. Klui deletes for real: here the rows go in one transaction
(messages another conversation still links to stay), as do its isolated blocks, as stock does.
"""

from __future__ import annotations

from sqlalchemy import delete, select

from letta.orm.block import Block as BlockRow
from letta.orm.blocks_conversations import BlocksConversations
from letta.orm.conversation import Conversation as ConversationRow
from letta.orm.conversation_messages import ConversationMessage as ConversationMessageRow
from letta.orm.errors import NoResultFound
from letta.orm.message import Message as MessageRow
from letta.schemas.user import User
from letta.server.db import db_registry
from letta.services.conversation_manager import ConversationManager

from ketta.core.patching import Patch


async def delete_conversation(self: ConversationManager, conversation_id: str, actor: User) -> None:
    """Delete the conversation, its links, its unshared messages and its isolated blocks (404 if unknown)."""
    async with db_registry.async_session() as session:
        found = await session.execute(
            select(ConversationRow.id)
            .where(ConversationRow.id == conversation_id, ConversationRow.organization_id == actor.organization_id,
                   ConversationRow.is_deleted.is_(False))
            .with_for_update()
        )
        if not found.first():
            raise NoResultFound(f"Conversation with id {conversation_id} not found")
        block_ids = list((await session.execute(
            select(BlocksConversations.block_id).where(BlocksConversations.conversation_id == conversation_id)
        )).scalars())
        elsewhere = select(ConversationMessageRow.message_id).where(ConversationMessageRow.conversation_id != conversation_id)
        await session.execute(
            delete(MessageRow)
            .where(MessageRow.conversation_id == conversation_id, MessageRow.organization_id == actor.organization_id,
                   MessageRow.id.not_in(elsewhere))
            .execution_options(synchronize_session=False)
        )
        # conversation_messages and blocks_conversations rows go with it (ON DELETE CASCADE)
        await session.execute(delete(ConversationRow).where(ConversationRow.id == conversation_id))
        if block_ids:
            await session.execute(delete(BlockRow).where(BlockRow.id.in_(block_ids)).execution_options(synchronize_session=False))
        await session.commit()


PATCHES = [
    Patch(
        target="letta.services.conversation_manager:ConversationManager.delete_conversation",
        replacement=delete_conversation,
        fingerprint="40524919200c5867",
        setting="hard_delete",
        why="DELETE of a conversation removes its rows (and its unshared messages) instead of flagging them is_deleted.",
    ),
]
