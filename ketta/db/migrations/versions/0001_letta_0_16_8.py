"""Baseline: Letta 0.16.8's schema, exactly as Letta's own migrations leave it (head 1c28e167b74f).

Executes the committed snapshot letta_0_16_8_schema.sql (see ketta/db/migrations.py for why a
snapshot and not create_all at run time). A database made by Letta's migrations is stamped at
this revision instead of running it (adoption).

Downgrade DELIBERATELY DROPS EVERY LETTA TABLE AND ALL ITS DATA (agents, messages, providers ...),
the enum types and the message sequence, plus Letta's own ``alembic_version`` table when the
database was adopted (it would otherwise claim a schema that is gone). The ``vector`` extension
stays: an administrator may have installed it, and other schemas may use it. Only an explicit
``ketta db downgrade base`` gets here.
"""

from __future__ import annotations

import re

from alembic import op

from ketta.db.migrations import LETTA_VERSION_TABLE, baseline_sql

revision: str = "0001_letta_0_16_8"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Through the DB-API cursor: the snapshot is many statements and must not go through
    # SQLAlchemy's parameter handling.
    cursor = op.get_bind().connection.driver_connection.cursor()
    try:
        cursor.execute(baseline_sql())
    finally:
        cursor.close()


def downgrade() -> None:
    sql = baseline_sql()
    tables = re.findall(r"^CREATE TABLE public\.(\w+) \(", sql, re.MULTILINE)
    types = re.findall(r"^CREATE TYPE public\.(\w+) AS", sql, re.MULTILINE)
    sequences = re.findall(r"^CREATE SEQUENCE public\.(\w+)$", sql, re.MULTILINE)
    op.execute("DROP TABLE IF EXISTS " + ", ".join(f"public.{name}" for name in tables) + " CASCADE")
    op.execute("DROP SEQUENCE IF EXISTS " + ", ".join(f"public.{name}" for name in sequences))
    op.execute("DROP TYPE IF EXISTS " + ", ".join(f"public.{name}" for name in types))
    op.execute(f"DROP TABLE IF EXISTS public.{LETTA_VERSION_TABLE}")
