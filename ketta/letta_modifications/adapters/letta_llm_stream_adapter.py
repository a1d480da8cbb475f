"""Patches of ``letta/adapters/letta_llm_stream_adapter.py``: memgpt-style streaming keeps Kimi's reasoning.

memgpt-style agents (``memgpt_agent``, ``memgpt_v2_agent``) stream through
``LettaLLMStreamAdapter``, whose Chat Completions interface reads only tool-call deltas: the
step's reasoning becomes the agent's inner thoughts (the ``thinking`` argument) and the
model's own ``reasoning_content`` is dropped. Moonshot's thinking models refuse a request
whose earlier assistant tool-call messages do not carry back the reasoning_content they came
with, so for a request that went to Moonshot the step keeps that reasoning instead, as a
native ``ReasoningContent``, exactly as the blocking path (``LettaLLMRequestAdapter``) keeps it.

Which requests went to Moonshot is the client's decision (:class:`KimiClient` for the
``kimi`` type, :class:`OpenAICompatibleClient` when the model's provider is a ``kimi``
provider); the client records what its stream carried. Any other provider: stock behaviour.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from letta.schemas.letta_message_content import ReasoningContent

from ketta.core import patching
from ketta.providers.kimi_client import KimiClient
from ketta.core.patching import Patch

TARGET = "letta.adapters.letta_llm_stream_adapter:LettaLLMStreamAdapter.invoke_llm"


async def invoke_llm(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
    """Letta's streaming call; then, for a Moonshot stream, the model's reasoning_content as the step's reasoning."""
    async for chunk in patching.original(TARGET)(self, *args, **kwargs):
        yield chunk
    if not isinstance(self.llm_client, KimiClient):
        return
    reasoning = self.llm_client.streamed_reasoning(self.request_data)
    if reasoning:
        self.reasoning_content = [ReasoningContent(reasoning=reasoning, is_native=True)]


PATCHES = [
    Patch(
        target=TARGET,
        replacement=invoke_llm,
        fingerprint="c9d3519bb5475163",
        setting="kimi_provider",
        why="memgpt-style agents streaming from a Kimi thinking model keep the model's reasoning_content "
        "(Moonshot needs it sent back on earlier tool-call messages), not only the inner thoughts.",
    ),
]
