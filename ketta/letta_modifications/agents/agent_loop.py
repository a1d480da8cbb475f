"""Patches of ``letta/agents/agent_loop.py``: an agent whose provider is gone fails early and clearly,
and an agent calls its provider's current base_url.

Every message endpoint builds its agent loop with ``AgentLoop.load``. Checking the agent's
provider there turns "provider deleted" into a 400 naming it, before Letta's LLM error
handling would wrap it into a 500. The agent's ``llm_config.model_endpoint`` was copied from
the provider when the agent was created; it is set from the provider's base_url as stored
now, so a PATCHed base_url (Klui's Ollama form) reaches existing agents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ketta import patching
from ketta.patching import Patch
from ketta.provider_keys import current_model_endpoint, require_provider
from letta.schemas.agent import AgentState

if TYPE_CHECKING:
    from letta.orm import User

TARGET = "letta.agents.agent_loop:AgentLoop.load"


def load(agent_state: AgentState, actor: "User"):
    llm_config = agent_state.llm_config
    if llm_config is not None and llm_config.provider_name and actor is not None:
        require_provider(llm_config.provider_name, actor.organization_id, llm_config.handle)
        endpoint = current_model_endpoint(llm_config.provider_name, actor.organization_id)
        if endpoint and endpoint != llm_config.model_endpoint:
            agent_state.llm_config = llm_config.model_copy(update={"model_endpoint": endpoint})
    return patching.original(TARGET)(agent_state=agent_state, actor=actor)


PATCHES = [
    Patch(
        target=TARGET,
        replacement=staticmethod(load),
        fingerprint="b16004c1b5c03304",
        setting="unified_providers",
        why="A message to an agent whose provider was deleted answers 400 naming the provider, not 500; the agent calls "
        "its provider's current base_url.",
    ),
]
