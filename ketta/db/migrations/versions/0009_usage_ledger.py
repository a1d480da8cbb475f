"""Usage ledger, operator prices and budgets (issue 23, :mod:`ketta.usage`).

``ketta_usage`` has one row per LLM call attempt. Providers, agents and users are kept by id
*and* name as plain text, without foreign keys: providers and agents are hard-deleted (their
rows go), and a ledger row must outlive them so past spend stays answerable by name.
"""

from __future__ import annotations

from alembic import op

revision: str = "0009_usage_ledger"
down_revision: str | None = "0008_provider_pools"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE ketta_usage (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at timestamptz NOT NULL DEFAULT now(),
            organization_id varchar,
            user_id varchar,
            agent_id varchar,
            agent_name text,
            run_id varchar,
            provider_id varchar,
            provider_name text,
            provider_type text,
            model text,
            handle text,
            pool text,
            fallback boolean NOT NULL DEFAULT false,
            streamed boolean NOT NULL DEFAULT false,
            prompt_tokens integer,
            completion_tokens integer,
            cached_input_tokens integer,
            cache_write_tokens integer,
            reasoning_tokens integer,
            cost_usd numeric,
            price_source text,
            status text NOT NULL,
            error_class text,
            duration_ms integer
        )
        """
    )
    op.execute("CREATE INDEX ix_ketta_usage_org_at ON ketta_usage (organization_id, at)")
    op.execute("CREATE INDEX ix_ketta_usage_user_at ON ketta_usage (user_id, at)")
    op.execute(
        """
        CREATE TABLE ketta_usage_prices (
            organization_id varchar NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
            provider_name text NOT NULL,
            model text NOT NULL,
            input_per_mtok numeric NOT NULL CHECK (input_per_mtok >= 0),
            output_per_mtok numeric NOT NULL CHECK (output_per_mtok >= 0),
            cached_input_per_mtok numeric CHECK (cached_input_per_mtok >= 0),
            cache_write_per_mtok numeric CHECK (cache_write_per_mtok >= 0),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (organization_id, provider_name, model)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE ketta_usage_budgets (
            id varchar PRIMARY KEY,
            organization_id varchar NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
            name text NOT NULL,
            scope text NOT NULL CHECK (scope IN ('provider', 'user', 'agent')),
            subject text NOT NULL,
            metric text NOT NULL CHECK (metric IN ('tokens', 'cost_usd')),
            limit_value numeric NOT NULL CHECK (limit_value > 0),
            period text NOT NULL CHECK (period IN ('day', 'month')),
            hard boolean NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (organization_id, name)
        )
        """
    )
    op.execute("CREATE INDEX ix_ketta_usage_budgets_subject ON ketta_usage_budgets (organization_id, scope, subject)")
    op.execute(
        """
        CREATE TABLE ketta_usage_budget_spend (
            budget_id varchar NOT NULL REFERENCES ketta_usage_budgets(id) ON DELETE CASCADE,
            period_start timestamp NOT NULL,
            spent numeric NOT NULL DEFAULT 0,
            PRIMARY KEY (budget_id, period_start)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS ketta_usage_budget_spend")
    op.execute("DROP TABLE IF EXISTS ketta_usage_budgets")
    op.execute("DROP TABLE IF EXISTS ketta_usage_prices")
    op.execute("DROP TABLE IF EXISTS ketta_usage")
