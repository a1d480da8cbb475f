"""Existing data for provider-named handles: no ``openai-proxy/`` handles, no "base" agent configs.

Stock Letta named the chat models of an ``openai`` provider with a custom base_url
``openai-proxy/<model>`` and stored that handle in each agent's ``llm_config``; Ketta names
them ``{provider name}/<model>``. And stock agents on env-synced providers stored
``provider_category: "base"``, which Letta's Azure and Bedrock clients read to decide whether
to use the stored key. On a database Letta made, this revision:

1. renames every ``openai-proxy/<model>`` row of ``provider_models`` to
   ``<provider name>/<model>`` (unless the organization already has that handle and type);
2. rewrites ``llm_config.handle`` of agents from ``openai-proxy/<model>`` to
   ``<provider_name>/<model>`` (the config names its provider);
3. sets ``llm_config.provider_category`` of agents from ``base`` to ``byok``: every provider
   is now an organization's own row.

On an empty database no row is touched. Downgrade is a no-op (the old names carried no
information the new ones lack).
"""

from __future__ import annotations

from alembic import op

revision: str = "0003_provider_named_handles"
down_revision: str | None = "0002_unify_providers"
branch_labels = None
depends_on = None

PROXY_PREFIX = "openai-proxy/"

STATEMENTS = [
    f"""
    UPDATE provider_models m
    SET handle = p.name || '/' || substr(m.handle, length('{PROXY_PREFIX}') + 1)
    FROM providers p
    WHERE m.provider_id = p.id AND m.handle LIKE '{PROXY_PREFIX}%' AND NOT EXISTS (
        SELECT 1 FROM provider_models taken
        WHERE taken.organization_id = m.organization_id AND taken.model_type = m.model_type
          AND taken.handle = p.name || '/' || substr(m.handle, length('{PROXY_PREFIX}') + 1))
    """,
    f"""
    UPDATE agents
    SET llm_config = (llm_config::jsonb || jsonb_build_object(
        'handle', (llm_config->>'provider_name') || '/' || substr(llm_config->>'handle', length('{PROXY_PREFIX}') + 1)))::json
    WHERE llm_config->>'handle' LIKE '{PROXY_PREFIX}%' AND coalesce(llm_config->>'provider_name', '') <> ''
    """,
    """
    UPDATE agents
    SET llm_config = jsonb_set(llm_config::jsonb, '{provider_category}', '"byok"')::json
    WHERE llm_config->>'provider_category' = 'base'
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    """Nothing to undo: the renamed handles and categories describe the same rows."""
