"""Cancel a request's work when its client goes away before the response is complete.

Starlette lets a handler run to its end after the client disconnected, so a message whose LLM
call hangs keeps the upstream call (and its key's quota) busy for the whole read timeout, for
nobody. This ASGI middleware watches the connection while the app runs and cancels the app
(and with it the upstream HTTP call) on ``http.disconnect``. A disconnect after the response
was sent cancels nothing (Starlette's background tasks run then).

It reads the request messages itself and hands them to the app from a queue, so the app sees
exactly what the client sent. Letta shields its streaming responses from cancellation by
default (``LETTA_USE_ASYNCIO_SHIELD``); the patch in
``letta_modifications/server/rest_api/streaming_response.py`` streams without the shield so a
stream's upstream call is cancelled too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

log = logging.getLogger("ketta.disconnect")

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]

_DISCONNECT: Message = {"type": "http.disconnect"}


class CancelOnDisconnect:
    """ASGI middleware: the app's task is cancelled when the client disconnects mid-request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        state = {"complete": False, "disconnected": False}

        async def app_receive() -> Message:
            if state["disconnected"] and inbox.empty():
                return _DISCONNECT
            return await inbox.get()

        async def app_send(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                state["complete"] = True
            await send(message)

        app_task = asyncio.ensure_future(self.app(scope, app_receive, app_send))

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    state["disconnected"] = True
                    inbox.put_nowait(message)
                    if not state["complete"] and not app_task.done():
                        log.info("client disconnected from %s %s: cancelling its work", scope.get("method"), scope.get("path"))
                        app_task.cancel()
                    return
                inbox.put_nowait(message)

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({app_task}, return_when=asyncio.ALL_COMPLETED)
        except asyncio.CancelledError:
            app_task.cancel()
            raise
        finally:
            watcher.cancel()
        if app_task.cancelled():
            if state["disconnected"]:
                return  # nobody is listening for an answer
            raise asyncio.CancelledError()
        app_task.result()  # re-raise the app's exception, as without this middleware
