"""Who an LLM call is for, known where the agent loop builds its LLM adapter, used where the
call is sent (:mod:`ketta.usage.ledger`), possibly by another client (a fallback's).

Context variables, because the call that a fallback or a pool member answers is made by another
client object in the same task; a new request (a new task) starts empty.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

# (agent id, run id) of the agent step being run (set by the adapter patch).
agent_step: ContextVar[tuple[str | None, str | None]] = ContextVar("ketta_usage_agent_step", default=(None, None))
# True while a call goes to an agent's fallback handle (ketta.providers.routing).
via_fallback: ContextVar[bool] = ContextVar("ketta_usage_via_fallback", default=False)
# The pool's name while a call goes to one of its members (ketta.providers.routing).
via_pool: ContextVar[str | None] = ContextVar("ketta_usage_via_pool", default=None)
# While a client's request_embeddings runs: what each embeddings HTTP call it sends is for
# (a ketta.usage.ledger.EmbeddingRequest; read by the OpenAI SDK patch, one ledger row per call).
embedding_request: ContextVar[Any] = ContextVar("ketta_usage_embedding_request", default=None)


def set_agent_step(agent_id: str | None, run_id: str | None) -> None:
    agent_step.set((agent_id, run_id))
