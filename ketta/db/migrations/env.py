"""Alembic environment for Ketta: runs on the connection ketta.db.migrations hands over.

ketta.db.migrations opens the connection, begins the transaction and takes the advisory lock;
this file only points alembic at Ketta's own version table. There is no alembic.ini and no
offline (--sql) mode: use ``ketta db upgrade|current|downgrade``.
"""

from __future__ import annotations

from alembic import context

from ketta.db.migrations import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Run Ketta's migrations through ketta.db.migrations (e.g. `ketta db upgrade`), not the alembic CLI.")

context.configure(connection=connection, version_table=VERSION_TABLE, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
