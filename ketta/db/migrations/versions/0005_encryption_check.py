"""Ketta's encryption check value: which key this database's secrets are written with.

One row: ``check_enc`` is a known token encrypted (Letta's format) with the key the stored
secrets are under, ``key_id`` that key's fingerprint (``ketta.security.keyring.cipher.fingerprint``). At start
Ketta refuses to serve when no configured key decrypts it, instead of answering 500 "Failed to
decrypt data" on the first message. ``ketta keys rotate`` rewrites it with the new key. The row
is written at the first start after this revision (the migration cannot know the key).
"""

from __future__ import annotations

from alembic import op

revision: str = "0005_encryption_check"
down_revision: str | None = "0004_provider_health"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE ketta_encryption_check (
            id integer PRIMARY KEY CHECK (id = 1),
            key_id varchar(64) NOT NULL,
            check_enc text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            rotated_at timestamptz
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS ketta_encryption_check")
