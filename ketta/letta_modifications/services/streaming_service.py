"""Fix of letta-ai/letta#3304 for streamed messages (``letta/services/streaming_service.py``).

When the agent's LLM call is rate limited, Letta's stream ends with an ``event: error`` whose
``message`` is one fixed sentence; the provider's text is only in ``detail``. The patch watches
the agent loop's stream for the rate-limit error and gives that event the provider's own text
(:mod:`ketta.llm.errors`); every other chunk passes unchanged. The run's stored error metadata
keeps Letta's sentence (its ``detail`` has the provider's text).
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from ketta.core import patching
from ketta.llm.errors import rate_limit_message
from ketta.core.patching import Patch

TARGET = "letta.services.streaming_service:StreamingService._create_error_aware_stream"
ERROR_EVENT = "event: error\ndata: "


class _RateLimitWatcher:
    """The agent loop, whose ``stream()`` remembers a rate-limit error before it propagates."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self.rate_limit: Exception | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        from letta.errors import LLMRateLimitError

        try:
            async for chunk in self._loop.stream(*args, **kwargs):
                yield chunk
        except LLMRateLimitError as exc:
            self.rate_limit = exc
            raise


def _with_provider_text(chunk: Any, error: Exception | None) -> Any:
    if error is None or not isinstance(chunk, str) or not chunk.startswith(ERROR_EVENT):
        return chunk
    payload = json.loads(chunk[len(ERROR_EVENT):])
    if payload.get("error_type") != "llm_rate_limit":
        return chunk
    payload["message"] = rate_limit_message(error)
    return f"{ERROR_EVENT}{json.dumps(payload)}\n\n"


def _create_error_aware_stream(self: Any, agent_loop: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
    watcher = _RateLimitWatcher(agent_loop)
    stream = patching.original(TARGET)(self, watcher, *args, **kwargs)

    async def rewritten() -> AsyncIterator[Any]:
        async for chunk in stream:
            yield _with_provider_text(chunk, watcher.rate_limit)

    return rewritten()


PATCHES = [
    Patch(
        target=TARGET,
        replacement=_create_error_aware_stream,
        fingerprint="62d4a8336d3cc422",
        setting="letta_fixes",
        kind="fix",
        upstream="letta-ai/letta#3304",
        why="A streamed message whose LLM call is rate limited ends with an error event whose 'message' is the provider's "
            "own text, not Letta's fixed 'Rate limit exceeded ... Please wait'.",
    ),
]
