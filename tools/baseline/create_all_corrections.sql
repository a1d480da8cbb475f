-- Corrections that turn letta.orm.Base.metadata.create_all() (letta 0.16.8, PostgreSQL) into the
-- schema Letta 0.16.8's own alembic migrations produce (head 1c28e167b74f), as recorded in
-- tests/data/letta-0.16.8-schema.json. Written by comparing the two with
-- ketta.db.migrations.schema_diff; 40 differences, grouped by cause below.
-- Used only by tools/baseline/make_baseline_sql.py to regenerate the baseline snapshot.

-- messages.sequence_id is server_default=FetchedValue() in the ORM: the migrations back it with a
-- sequence (without it the first agent message fails with a NULL sequence_id).            (3)
CREATE SEQUENCE message_seq_id;
ALTER TABLE messages ALTER COLUMN sequence_id SET DEFAULT nextval('message_seq_id');

-- Column defaults the migrations set differently from the ORM's server_default.            (20)
-- archives_agents.created_at: the ORM evaluates datetime.now() at import time.
ALTER TABLE archives_agents ALTER COLUMN created_at SET DEFAULT now();
ALTER TABLE identities ALTER COLUMN created_at SET DEFAULT CURRENT_TIMESTAMP;
ALTER TABLE identities ALTER COLUMN updated_at SET DEFAULT CURRENT_TIMESTAMP;
ALTER TABLE identities ALTER COLUMN properties SET DEFAULT '[]'::jsonb;
ALTER TABLE messages ALTER COLUMN created_at DROP DEFAULT;
ALTER TABLE organizations ALTER COLUMN created_at DROP DEFAULT;
ALTER TABLE users ALTER COLUMN created_at DROP DEFAULT;
ALTER TABLE steps ALTER COLUMN completion_tokens SET DEFAULT 0;
ALTER TABLE steps ALTER COLUMN prompt_tokens SET DEFAULT 0;
ALTER TABLE steps ALTER COLUMN total_tokens SET DEFAULT 0;

-- Association tables: the ORM declares primary keys the migrations never made; they have
-- unique constraints instead (agents_tags, tools_agents) or nothing (blocks_agents).        (6)
ALTER TABLE agents_tags DROP CONSTRAINT unique_agent_tag;
ALTER TABLE agents_tags ADD CONSTRAINT unique_agent_tag UNIQUE (agent_id, tag);
ALTER TABLE tools_agents DROP CONSTRAINT unique_agent_tool;
ALTER TABLE tools_agents ADD CONSTRAINT unique_agent_tool UNIQUE (agent_id, tool_id);
ALTER TABLE blocks_agents DROP CONSTRAINT blocks_agents_pkey;

-- Composite primary keys the migrations made, where the ORM has a single-column id key.    (8)
ALTER TABLE file_contents DROP CONSTRAINT file_contents_pkey;
ALTER TABLE file_contents ADD CONSTRAINT file_contents_pkey PRIMARY KEY (file_id, id);
ALTER TABLE files_agents DROP CONSTRAINT files_agents_pkey;
ALTER TABLE files_agents ADD CONSTRAINT files_agents_pkey PRIMARY KEY (id, file_id, agent_id);

-- Indexes the ORM declares but the migrations never created.                              (2)
DROP INDEX ix_blocks_tags_block_id_tag;
DROP INDEX ix_blocks_tags_tag_block_id;

-- provider_trace_metadata: a unique index in the migrations, a unique constraint in the ORM. (1)
ALTER TABLE provider_trace_metadata DROP CONSTRAINT uq_provider_trace_metadata_id;
CREATE UNIQUE INDEX uq_provider_trace_metadata_id ON provider_trace_metadata (id);
