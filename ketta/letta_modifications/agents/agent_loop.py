"""Patches of ``letta/agents/agent_loop.py``: an agent whose provider is gone fails early and clearly,
and an agent calls its provider's current base_url.

Every message endpoint builds its agent loop with ``AgentLoop.load`` (synchronous, on the event
loop). Checking the agent's provider there turns "provider deleted" into a 400 naming it, before
Letta's LLM error handling would wrap it into a 500. The agent's ``llm_config.model_endpoint`` was
copied from the provider when the agent was created; it is set from the provider's base_url as
stored now, so a PATCHed base_url (Klui's Ollama form) reaches existing agents. Neither reads the
database here: the provider row was read asynchronously when the request loaded its agent
(``services/agent_manager.py``). When it was not (a model override, a run resumed elsewhere), the
loop's ``step``/``stream`` do both asynchronously before running.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, Callable

from ketta.core import patching
from ketta.core.patching import Patch
from ketta.providers.rules import ProviderMissing
from ketta.providers.keys import current_model_endpoint, remembered_row, require_provider_async
from letta.schemas.agent import AgentState

if TYPE_CHECKING:
    from letta.orm import User

TARGET = "letta.agents.agent_loop:AgentLoop.load"


def load(agent_state: AgentState, actor: "User"):
    llm_config = agent_state.llm_config
    check = None
    if llm_config is not None and llm_config.provider_name and actor is not None:
        row = remembered_row(llm_config.provider_name, actor.organization_id)
        if row is not None and not row.found:
            raise ProviderMissing(llm_config.provider_name, llm_config.handle)
        if row is None:
            check = functools.partial(_require_and_retarget, agent_state, actor)
        else:
            _retarget(agent_state, actor)
    agent = patching.original(TARGET)(agent_state=agent_state, actor=actor)
    if check is not None:
        for name in ("step", "stream"):
            _check_first(agent, name, check)
    return agent


def _retarget(agent_state: AgentState, actor: "User") -> None:
    """Point the agent's llm_config at its provider's base_url as stored now (row already read)."""
    llm_config = agent_state.llm_config
    endpoint = current_model_endpoint(llm_config.provider_name, actor.organization_id)
    if endpoint and endpoint != llm_config.model_endpoint:
        agent_state.llm_config = llm_config.model_copy(update={"model_endpoint": endpoint})


async def _require_and_retarget(agent_state: AgentState, actor: "User") -> None:
    llm_config = agent_state.llm_config
    await require_provider_async(llm_config.provider_name, actor.organization_id, llm_config.handle)
    _retarget(agent_state, actor)


def _check_first(agent: Any, name: str, check: Callable[[], Any]) -> None:
    """Make ``agent.<name>`` await ``check()`` before it runs."""
    method = getattr(agent, name, None)
    if method is None:
        return
    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def checked_stream(*args: Any, **kwargs: Any) -> Any:
            await check()
            async for item in method(*args, **kwargs):
                yield item

        setattr(agent, name, checked_stream)
    elif inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def checked_step(*args: Any, **kwargs: Any) -> Any:
            await check()
            return await method(*args, **kwargs)

        setattr(agent, name, checked_step)


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
