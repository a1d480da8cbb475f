"""Per-user API tokens (``ketta token create --user``): Letta 0.16.8 has none.

Only a SHA-256 of each token is stored (tokens are 256-bit random strings, so a fast hash is
enough: nothing to brute-force). A token belongs to one user and goes with it; revoking keeps
the row (``revoked_at``) so ``ketta token list`` still shows what existed.
"""

from __future__ import annotations

from alembic import op

revision: str = "0007_user_tokens"
down_revision: str | None = "0006_hard_delete_flagged"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE ketta_user_tokens (
            id varchar PRIMARY KEY,
            user_id varchar NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            organization_id varchar NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
            name varchar(100),
            token_hash char(64) NOT NULL UNIQUE,
            created_at timestamptz NOT NULL DEFAULT now(),
            last_used_at timestamptz,
            revoked_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX ix_ketta_user_tokens_user_id ON ketta_user_tokens (user_id)")


def downgrade() -> None:
    op.execute("DROP TABLE ketta_user_tokens")
