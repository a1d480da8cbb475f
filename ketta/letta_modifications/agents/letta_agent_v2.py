"""Patches of ``letta/agents/letta_agent_v2.py``: an agent's LLM client knows its fallback handles.

``LettaAgentV2.__init__`` makes the client every step of the agent uses (memgpt-style agents and,
through ``LettaAgentV3``, ``letta_v1_agent``). The agent's ``metadata.ketta_fallback_handles``
is attached to that client, which sends a failed request to them (:mod:`ketta.providers.fallback`).
"""

from __future__ import annotations

from ketta.core import patching
from ketta.providers import fallback as provider_fallback
from ketta.core.patching import Patch

TARGET = "letta.agents.letta_agent_v2:LettaAgentV2.__init__"


def __init__(self, agent_state, actor, *args, **kwargs) -> None:
    patching.original(TARGET)(self, agent_state, actor, *args, **kwargs)
    handles = provider_fallback.handles_of(agent_state.metadata)
    if handles and getattr(self, "llm_client", None) is not None:
        provider_fallback.attach(self.llm_client, handles)


PATCHES = [
    Patch(
        target=TARGET,
        replacement=__init__,
        fingerprint="d4507ef377c9cd29",
        setting="provider_fallback",
        why="The agent's LLM client gets metadata.ketta_fallback_handles: a connection error, timeout, 429 or 5xx "
        "before the response opened sends the same request to the next handle.",
    ),
]
