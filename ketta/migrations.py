"""TEMPORARY stub (being replaced by the alembic-based implementation)."""

from __future__ import annotations


class MigrationError(RuntimeError):
    pass


def upgrade(uri: str, revision: str = "head") -> None:
    import sqlalchemy as sa

    from ketta.database import sync_url
    from letta.orm import Base

    engine = sa.create_engine(sync_url(uri))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
        conn.execute(sa.text("CREATE SEQUENCE IF NOT EXISTS message_seq_id"))
        Base.metadata.create_all(conn)
        conn.execute(sa.text("ALTER TABLE messages ALTER COLUMN sequence_id SET DEFAULT nextval('message_seq_id')"))
    engine.dispose()


def current(uri: str) -> str | None:
    return None


def downgrade(uri: str, revision: str) -> None:
    raise MigrationError("not implemented")
