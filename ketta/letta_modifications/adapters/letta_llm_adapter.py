"""Patches of ``letta/adapters/letta_llm_adapter.py``: the usage ledger learns whose call it is.

Every agent step builds an LLM adapter (blocking or streaming, memgpt-style or letta_v1) with the
agent's id and the run's id; the LLM client it is given does not carry them, and the call a
fallback or pool member answers is made by another client. Recording them here in a context
variable (:mod:`ketta.usage.context`) names the agent and run on every ledger row of the step.
"""

from __future__ import annotations

from typing import Any

from ketta.core import patching
from ketta.core.patching import Patch
from ketta.usage import context

TARGET = "letta.adapters.letta_llm_adapter:LettaLLMAdapter.__init__"


def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
    """Letta's constructor, then the step's agent and run become the ledger's context."""
    patching.original(TARGET)(self, *args, **kwargs)
    context.set_agent_step(getattr(self, "agent_id", None), getattr(self, "run_id", None))


PATCHES = [
    Patch(
        target=TARGET,
        replacement=__init__,
        fingerprint="29918943ed113c9b",
        setting="usage_ledger",
        why="Each agent step's LLM calls are recorded in the usage ledger with the agent and run they were made for.",
    ),
]
