"""Existing data for unified providers: no base providers, no soft-deleted rows, no org-less rows.

Ketta keeps every provider as an ordinary, organization-scoped row and deletes for real
(issue 3, "Existing data"). On a database Letta made, this revision:

1. deletes base providers — ``provider_category = 'base'``, and organization-less providers not
   marked ``byok`` (Letta 0.16.8 stores env-synced providers with ``organization_id IS NULL``) —
   with their ``provider_models`` rows;
2. deletes soft-deleted providers (with their models) and soft-deleted ``provider_models`` rows;
   ``steps.provider_id`` / ``step_metrics.provider_id`` pointing at a deleted provider become NULL
   (their foreign keys are ON DELETE RESTRICT; the step keeps ``provider_name``/``provider_category``);
3. gives organization-less rows an organization: a ``byok`` provider without one goes to Letta's
   default organization (created, exactly as Letta would create it, only if such a row exists; if
   the default organization already has a provider of that name, the moved one is renamed
   ``<name>-<last 8 chars of its id>`` and its model handles follow); an organization-less model of
   a remaining provider takes its provider's organization, and is dropped if that organization
   already has the same handle and model type (a duplicate).

On an empty database every statement touches no row. Downgrade is a no-op: deleted rows cannot
come back (back up first if you may need them).
"""

from __future__ import annotations

from alembic import op

revision: str = "0002_unify_providers"
down_revision: str | None = "0001_letta_0_16_8"
branch_labels = None
depends_on = None

# letta.constants.DEFAULT_ORG_ID / DEFAULT_ORG_NAME in Letta 0.16.8, frozen here (a test checks them).
DEFAULT_ORG_ID = "org-00000000-0000-4000-8000-000000000000"
DEFAULT_ORG_NAME = "default_org"

DOOMED_PROVIDERS = """
    SELECT id FROM providers
    WHERE is_deleted
       OR provider_category = 'base'
       OR (organization_id IS NULL AND provider_category IS DISTINCT FROM 'byok')
"""

# A moved org-less provider whose name the default organization already uses.
CLASHING_PROVIDER = f"""
    p.organization_id IS NULL AND EXISTS (
        SELECT 1 FROM providers taken WHERE taken.organization_id = '{DEFAULT_ORG_ID}' AND taken.name = p.name)
"""

STATEMENTS = [
    # 1 + 2: detach history, then delete base and soft-deleted providers and soft-deleted models.
    f"UPDATE steps SET provider_id = NULL WHERE provider_id IN ({DOOMED_PROVIDERS})",
    f"UPDATE step_metrics SET provider_id = NULL WHERE provider_id IN ({DOOMED_PROVIDERS})",
    f"DELETE FROM provider_models WHERE is_deleted OR provider_id IN ({DOOMED_PROVIDERS})",
    f"DELETE FROM providers WHERE id IN ({DOOMED_PROVIDERS})",
    # 3: org-less byok providers to the default organization (created only when needed).
    f"""
    INSERT INTO organizations (id, name, privileged_tools, created_at, updated_at, is_deleted)
    SELECT '{DEFAULT_ORG_ID}', '{DEFAULT_ORG_NAME}', false, now(), now(), false
    WHERE EXISTS (SELECT 1 FROM providers WHERE organization_id IS NULL)
    ON CONFLICT (id) DO NOTHING
    """,
    f"""
    UPDATE provider_models m
    SET handle = p.name || '-' || right(p.id, 8) || substr(m.handle, length(p.name) + 1)
    FROM providers p
    WHERE m.provider_id = p.id AND left(m.handle, length(p.name) + 1) = p.name || '/' AND {CLASHING_PROVIDER}
    """,
    f"UPDATE providers p SET name = p.name || '-' || right(p.id, 8) WHERE {CLASHING_PROVIDER}",
    f"UPDATE providers SET organization_id = '{DEFAULT_ORG_ID}' WHERE organization_id IS NULL",
    # 3: org-less models take their provider's organization; duplicates there are dropped.
    """
    DELETE FROM provider_models m USING providers p
    WHERE m.provider_id = p.id AND m.organization_id IS NULL AND EXISTS (
        SELECT 1 FROM provider_models other
        WHERE other.organization_id = p.organization_id AND other.handle = m.handle AND other.model_type = m.model_type)
    """,
    """
    UPDATE provider_models m SET organization_id = p.organization_id
    FROM providers p WHERE m.provider_id = p.id AND m.organization_id IS NULL
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    """Nothing to undo in the schema; the deleted rows are gone for good."""
