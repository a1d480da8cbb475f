"""The one base for Ketta's wrappers of an SDK stream (Kimi's reasoning recorder, the routing seam's
recorded stream): everything but iteration goes to the wrapped stream.

Letta uses an SDK stream as an async context manager, closes it, and reads attributes of it
(``response``, ...); a wrapper must keep all of that while it changes what iteration yields.
"""

from __future__ import annotations

from typing import Any


class StreamProxy:
    """Attributes, ``async with`` and ``close()`` of the wrapped stream; subclasses define iteration."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def __aenter__(self) -> Any:
        if hasattr(self._stream, "__aenter__"):
            await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        if hasattr(self._stream, "__aexit__"):
            return await self._stream.__aexit__(*exc_info)
        return None

    async def close(self) -> None:
        if hasattr(self._stream, "close"):
            await self._stream.close()
