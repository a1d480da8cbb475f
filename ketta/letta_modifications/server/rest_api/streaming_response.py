"""Patches of ``letta/server/rest_api/streaming_response.py``: a stream whose client went away is
not shielded from cancellation.

Letta runs a streaming response under ``asyncio.shield`` (``use_asyncio_shield``, on by default),
so when the client disconnects the agent step and its LLM call go on to the end: with a hanging
upstream that is the whole read timeout, for nobody. With Ketta's cancel-on-disconnect
middleware (``ketta/api/disconnect.py``) the request's work stops when its client leaves; this
streams without the shield, as Letta does with ``use_asyncio_shield`` off. Setting
``LETTA_USE_ASYNCIO_SHIELD=true`` explicitly keeps Letta's shield.
"""

from __future__ import annotations

import os
from typing import Any

from ketta.core import patching
from ketta.core.patching import Patch

TARGET = "letta.server.rest_api.streaming_response:StreamingResponseWithStatusCode.stream_response"


async def stream_response(self: Any, send: Any) -> None:
    if os.environ.get("LETTA_USE_ASYNCIO_SHIELD", "").lower() in ("1", "true", "yes"):
        return await patching.original(TARGET)(self, send)
    await self._protected_stream_response(send)


PATCHES = [
    Patch(
        target=TARGET,
        replacement=stream_response,
        fingerprint="9bad76264d95b6c4",
        setting="cancel_on_disconnect",
        why="A streaming request whose client disconnected is cancelled with its upstream LLM call, not shielded to the end.",
    ),
]
