"""Provider health shared by every worker and replica: one row per (provider, worker).

Each worker upserts its recent call outcomes of a provider (``events``: [epoch s, ok, latency
ms, status class], bounded) and its last error/success at most every few seconds; the health
route merges the rows. The rows go with their provider (ON DELETE CASCADE), so a deleted and
re-created provider starts clean. ``cooldown_until`` lets every worker skip a provider that
asked for a pause (HTTP 429 Retry-After).
"""

from __future__ import annotations

from alembic import op

revision: str = "0004_provider_health"
down_revision: str | None = "0003_provider_named_handles"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE ketta_provider_health (
            provider_id varchar NOT NULL REFERENCES providers(id) ON DELETE CASCADE,
            worker varchar(200) NOT NULL,
            organization_id varchar,
            events jsonb NOT NULL DEFAULT '[]'::jsonb,
            last_error text,
            last_error_class varchar(20),
            last_error_at timestamptz,
            last_success_at timestamptz,
            cooldown_until timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (provider_id, worker)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS ketta_provider_health")
