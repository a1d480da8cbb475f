"""Rows stock Letta only flagged ``is_deleted`` are removed, as Ketta now deletes them.

Ketta deletes conversations, agent-file links and vanished provider models for real (see
``ketta/letta_modifications/services/``). Rows a stock server flagged before are cleared:
flagged conversations (their message links go with them; their flagged messages too),
flagged conversation-message links, agent-file links and provider models. Nothing else is
touched; on an empty database no row is. Downgrade is a no-op (deleted rows stay deleted).
"""

from __future__ import annotations

from alembic import op

revision: str = "0006_hard_delete_flagged"
down_revision: str | None = "0005_encryption_check"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DELETE FROM messages WHERE is_deleted AND conversation_id IN (SELECT id FROM conversations WHERE is_deleted)"
    )
    op.execute("DELETE FROM conversations WHERE is_deleted")  # conversation_messages, blocks_conversations: ON DELETE CASCADE
    op.execute("DELETE FROM conversation_messages WHERE is_deleted")
    op.execute("DELETE FROM files_agents WHERE is_deleted")
    op.execute("DELETE FROM provider_models WHERE is_deleted")


def downgrade() -> None:
    pass
