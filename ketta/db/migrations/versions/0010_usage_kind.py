"""Usage ledger rows say what kind of call they were: 'llm' (a chat/completion call) or
'embedding' (an embeddings call, :func:`ketta.usage.ledger.embeddings_sent`)."""

from __future__ import annotations

from alembic import op

revision: str = "0010_usage_kind"
down_revision: str | None = "0009_usage_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE ketta_usage ADD COLUMN kind text NOT NULL DEFAULT 'llm'")


def downgrade() -> None:
    op.execute("ALTER TABLE ketta_usage DROP COLUMN kind")
