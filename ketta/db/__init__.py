"""The database: where PostgreSQL comes from (external or embedded) and Ketta's migrations.

Imports only :mod:`ketta.core`. The alembic scripts live in ``migrations/versions`` and ship in the
wheel (``package-data`` in pyproject.toml).
"""
