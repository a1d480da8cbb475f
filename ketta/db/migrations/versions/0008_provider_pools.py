"""Provider pools: several providers serving the same models under one handle.

A pool is a ``providers`` row of type ``pool`` (its name, handles and models work like any
provider's); which providers it spreads calls over, in which order, is this table. A member's
row goes with its provider, and all rows of a pool with the pool (ON DELETE CASCADE).
"""

from __future__ import annotations

from alembic import op

revision: str = "0008_provider_pools"
down_revision: str | None = "0007_user_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE ketta_pool_members (
            pool_id varchar NOT NULL REFERENCES providers(id) ON DELETE CASCADE,
            member_id varchar NOT NULL REFERENCES providers(id) ON DELETE CASCADE,
            position integer NOT NULL,
            PRIMARY KEY (pool_id, member_id),
            CHECK (pool_id <> member_id)
        )
        """
    )
    op.execute("CREATE INDEX ix_ketta_pool_members_member ON ketta_pool_members (member_id)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS ketta_pool_members")
