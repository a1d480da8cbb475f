"""Patches for ``letta/llm_api/anthropic_client.py`` (and MiniMax's, Anthropic's listing): every
connection of the Anthropic SDK passes Ketta's URL guard.

Letta builds ``anthropic.AsyncAnthropic``/``Anthropic`` clients in several places without an
``http_client``; the SDK then makes its own ``AsyncHttpxClientWrapper`` (on ``httpx2``). The
patch gives that default client the guarded transport of :mod:`ketta.url_guard`, so every
request, retry and redirect connects only to addresses the operator allows.
"""

from __future__ import annotations

from typing import Any

import anthropic._base_client as sdk

from ketta.patching import Patch
from ketta.url_guard import with_guarded_transport


class GuardedAsyncHttpxClientWrapper(sdk.AsyncHttpxClientWrapper):
    """The SDK's default async client, on Ketta's guarded transport."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**with_guarded_transport(kwargs, "httpx2"))


class GuardedSyncHttpxClientWrapper(sdk.SyncHttpxClientWrapper):
    """The SDK's default sync client, on Ketta's guarded transport."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**with_guarded_transport(kwargs, "httpx2", asynchronous=False))


WHY = "Anthropic SDK clients Letta builds connect only to addresses the URL guard allows (private hosts, DNS rebinding, redirects)."

PATCHES = [
    Patch(
        target="anthropic._base_client:AsyncHttpxClientWrapper",
        replacement=GuardedAsyncHttpxClientWrapper,
        fingerprint="c7c8cff088734ad0",
        setting="url_guard",
        why=WHY,
    ),
    Patch(
        target="anthropic._base_client:SyncHttpxClientWrapper",
        replacement=GuardedSyncHttpxClientWrapper,
        fingerprint="8e52ed05d20ed1a0",
        setting="url_guard",
        why=WHY,
    ),
]
