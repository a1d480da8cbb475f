"""Patches of ``letta/services/agent_manager.py``: a Kimi agent needs another provider's embedding.

Moonshot has no embeddings API. Stock Letta creates an agent without an embedding model and
fails later (archival memory, file sources) with an unrelated error; for a Kimi agent the
request is refused up front with a 400 that says what to pass.
"""

from __future__ import annotations

from letta.errors import LettaInvalidArgumentError
from letta.schemas.agent import AgentState, CreateAgent
from letta.schemas.user import User
from letta.services.agent_manager import AgentManager

from ketta import patching
from ketta.provider_keys import provider_type_async
from ketta.letta_modifications.schemas.providers.kimi import KIMI_PROVIDER_TYPE
from ketta.patching import Patch

TARGET = "letta.services.agent_manager:AgentManager.create_agent_async"


async def create_agent_async(self: AgentManager, agent_create: CreateAgent, actor: User, *args, **kwargs) -> AgentState:
    """Refuse a Kimi agent without an embedding model, then create it as Letta does."""
    llm_config = agent_create.llm_config
    if llm_config is not None and agent_create.embedding_config is None and llm_config.provider_name:
        if await provider_type_async(llm_config.provider_name, actor.organization_id) == KIMI_PROVIDER_TYPE:
            raise LettaInvalidArgumentError(
                f"Model '{llm_config.handle}' is served by Moonshot (Kimi), which has no embedding models: "
                "pass 'embedding' with an embedding model of another provider, e.g. 'my-openai/text-embedding-3-small' "
                "(see GET /v1/models/embedding).",
                argument_name="embedding",
            )
    return await patching.original(TARGET)(self, agent_create, actor, *args, **kwargs)


PATCHES = [
    Patch(
        target=TARGET,
        replacement=create_agent_async,
        fingerprint="309ad433df3abbc4",
        setting="kimi_provider",
        why="Moonshot has no embeddings: creating a Kimi agent without another provider's embedding answers a clear 400.",
    ),
]
