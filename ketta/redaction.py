"""No API key leaves the server: provider responses carry no key material.

Stock Letta returns ``api_key_enc`` in every provider response: the plaintext key when no
encryption key is set, the ciphertext otherwise. Letta's route functions are bound when
its app is built, so the filter sits in front of them as ASGI middleware.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECRET_FIELDS = ("api_key", "api_key_enc", "access_key", "access_key_enc")
PROVIDERS_PREFIX = "/v1/providers"


def strip_secrets(payload: Any) -> Any:
    """Null every secret field of a provider (or a list of them)."""
    if isinstance(payload, list):
        return [strip_secrets(item) for item in payload]
    if isinstance(payload, dict):
        return {k: (None if k in SECRET_FIELDS else v) for k, v in payload.items()}
    return payload


class ProviderSecretsFilter:
    """Rewrites JSON responses under /v1/providers so they never contain key material."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROVIDERS_PREFIX):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def buffer(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            if dict(start["headers"]).get(b"content-type", b"").startswith(b"application/json") and body:
                try:
                    body = json.dumps(strip_secrets(json.loads(body))).encode()
                except ValueError:
                    pass
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffer)
