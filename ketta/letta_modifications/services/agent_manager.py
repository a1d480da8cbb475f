"""Patches of ``letta/services/agent_manager.py``: what an agent's configs may say.

- A config that names a stored provider must use that provider's endpoint (400 naming the
  field, :mod:`ketta.providers.key_binding`): a provider's key goes only to its own base_url.
- Every endpoint of an agent's configs (``llm_config.model_endpoint``,
  ``embedding_config.embedding_endpoint``) must pass the URL guard (422 saying what to fix,
  :mod:`ketta.providers.validation`).
- The blocks, folders, identities, tools and messages a config refers to by id must be of the
  caller's organization (404 as for an unknown id, :mod:`ketta.security.references`).
- A Kimi agent needs another provider's embedding. Moonshot has no embeddings API: stock Letta
  creates the agent and fails later (archival memory, file sources) with an unrelated error;
  here the request is refused up front with a 400 that says what to pass.

When KETTA_DB_FEWER_ROUND_TRIPS is on, an update whose caller discards the answer and that sets only
scalar columns (a finished run's ``last_stop_reason``) and the in-context message ids after each
step are stored by one UPDATE each (:mod:`ketta.db.direct_writes`).

Create and update are the two doors every REST route, template and agent-file import goes
through. Each check follows its own setting, read per call.
"""

from __future__ import annotations

from typing import Any

from letta.errors import LettaInvalidArgumentError
from letta.schemas.agent import AgentState, CreateAgent, UpdateAgent
from letta.schemas.user import User
from letta.services.agent_manager import AgentManager

from ketta.core import patching
from ketta.db import direct_writes
from ketta.providers.key_binding import check_agent_configs
from ketta.providers.kimi import KIMI_PROVIDER_TYPE
from ketta.core.patching import Patch
from ketta.providers.keys import provider_row_async, provider_type_async
from ketta.core.settings import get_settings
from ketta.providers.validation import check_agent_endpoints
from ketta.security.references import agent_refs, require_own

CREATE_TARGET = "letta.services.agent_manager:AgentManager.create_agent_async"
UPDATE_TARGET = "letta.services.agent_manager:AgentManager.update_agent_async"


async def refuse_kimi_without_embedding(agent_create: CreateAgent, actor: User) -> None:
    llm_config = agent_create.llm_config
    if llm_config is not None and agent_create.embedding_config is None and llm_config.provider_name:
        if await provider_type_async(llm_config.provider_name, actor.organization_id) == KIMI_PROVIDER_TYPE:
            raise LettaInvalidArgumentError(
                f"Model '{llm_config.handle}' is served by Moonshot (Kimi), which has no embedding models: "
                "pass 'embedding' with an embedding model of another provider, e.g. 'my-openai/text-embedding-3-small' "
                "(see GET /v1/models/embedding).",
                argument_name="embedding",
            )


async def create_agent_async(self: AgentManager, agent_create: CreateAgent, actor: User, *args: Any, **kwargs: Any) -> AgentState:
    """Check the agent's configs, then create it as Letta does."""
    await check_agent_endpoints(agent_create.llm_config, agent_create.embedding_config)
    await check_agent_configs(agent_create.llm_config, agent_create.embedding_config, actor.organization_id)
    if get_settings().kimi_provider:
        await refuse_kimi_without_embedding(agent_create, actor)
    if get_settings().organization_scope:
        await require_own(actor, agent_refs(agent_create))
    return await patching.original(CREATE_TARGET)(self, agent_create, actor, *args, **kwargs)


async def update_agent_async(self: AgentManager, agent_id: str, agent_update: UpdateAgent, actor: User, *args: Any, **kwargs: Any) -> AgentState:
    """Check the configs an update sets, then update as Letta does."""
    await check_agent_endpoints(agent_update.llm_config, agent_update.embedding_config)
    await check_agent_configs(agent_update.llm_config, agent_update.embedding_config, actor.organization_id)
    if get_settings().organization_scope:
        await require_own(actor, agent_refs(agent_update))
    columns = direct_writes.agent_columns_only(agent_update) if get_settings().db_fewer_round_trips else None
    if columns is not None and not args and not kwargs:
        # The caller discards the answer (RunManager.update_run_by_id_async): one UPDATE stores the
        # same columns; no such agent in the actor's organization -> Letta's update, for its error.
        if await direct_writes.set_agent_columns(agent_id, columns, actor):
            return None  # type: ignore[return-value]
    return await patching.original(UPDATE_TARGET)(self, agent_id, agent_update, actor, *args, **kwargs)


MESSAGE_IDS_TARGET = "letta.services.agent_manager:AgentManager.update_message_ids_async"


async def update_message_ids_async(self: AgentManager, agent_id: str, message_ids: list[str], actor: User) -> None:
    """The agent's in-context message ids stored by one UPDATE (Letta: the agent row read, then
    updated, in a transaction); no such agent in the actor's organization -> Letta's method."""
    if not await direct_writes.set_message_ids(agent_id, message_ids, actor):
        await patching.original(MESSAGE_IDS_TARGET)(self, agent_id=agent_id, message_ids=message_ids, actor=actor)


GET_TARGET = "letta.services.agent_manager:AgentManager.get_agent_by_id_async"


async def get_agent_by_id_async(self: AgentManager, agent_id: str, actor: User, *args: Any, **kwargs: Any) -> AgentState:
    """The agent, as Letta loads it, with its provider's row read for this request: every message
    endpoint loads its agent before building the agent loop, so the synchronous AgentLoop.load
    checks the provider without a query on the event loop, and the LLM calls reuse the row."""
    agent = await patching.original(GET_TARGET)(self, agent_id, actor, *args, **kwargs)
    llm_config = agent.llm_config
    if llm_config is not None and llm_config.provider_name and actor is not None:
        await provider_row_async(llm_config.provider_name, actor.organization_id)
    return agent


PATCHES = [
    Patch(
        target=GET_TARGET,
        replacement=get_agent_by_id_async,
        fingerprint="707689f4ae129e8b",
        setting="unified_providers",
        why="Loading an agent reads its provider row asynchronously, so AgentLoop.load checks it without a query on the event loop.",
    ),
    Patch(
        target=CREATE_TARGET,
        replacement=create_agent_async,
        fingerprint="309ad433df3abbc4",
        setting="unified_providers",
        why="Agent configs are checked before anything is stored: endpoints pass the URL guard (422) and are "
        "their named provider's (400); "
        "a Kimi agent without another provider's embedding answers a clear 400.",
    ),
    Patch(
        target=UPDATE_TARGET,
        replacement=update_agent_async,
        fingerprint="d03a557f83d96aec",
        setting="unified_providers",
        why="Agent updates are checked like creation: endpoints pass the URL guard (422) and are their named provider's (400). "
        "An update of scalar columns whose answer is discarded (a finished run's last_stop_reason) is one UPDATE "
        "when KETTA_DB_FEWER_ROUND_TRIPS is on.",
    ),
    Patch(
        target=MESSAGE_IDS_TARGET,
        replacement=update_message_ids_async,
        fingerprint="04de74e0d8d08f5c",
        setting="db_fewer_round_trips",
        why="An agent's in-context message ids (set after every step) are stored by one UPDATE, not a read, an UPDATE "
        "and BEGIN/COMMIT (four statements per step to one).",
    ),
]
