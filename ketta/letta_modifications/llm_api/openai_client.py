"""Patches of ``letta/llm_api/openai_client.py``: embedding calls use their provider's stored key;
every OpenAI SDK client connects through Ketta's URL guard, is bounded and reuses its
endpoint's HTTP client (:mod:`ketta.llm.http`: constructors of ``AsyncOpenAI``/``OpenAI`` get the
shared client, Ketta's timeouts and retry budget; the shared clients use the guarded transport).

Stock Letta sends embedding requests with OPENAI_API_KEY from the environment only.
The provider is the first part of the embedding handle ('{provider name}/{model}').

Letta builds ``openai.AsyncOpenAI``/``OpenAI`` clients (OpenAI, Kimi, Azure, DeepSeek, xAI, ...)
without an ``http_client``; the SDK then makes its own ``AsyncHttpxClientWrapper``. The patch
gives that default client the guarded transport of :mod:`ketta.security.url_guard`.

Letta's ``request_embeddings`` (every OpenAI-compatible client: OpenAI, Azure, Together, xAI,
Groq, Z.ai, Ollama's /v1) keeps the vectors of the SDK's ``embeddings.create`` and drops its
``usage``: the SDK method is wrapped so each call is a row of the usage ledger
(:func:`ketta.usage.ledger.embeddings_sent`).
"""

from __future__ import annotations

from typing import Any

import openai._base_client as sdk

from ketta.core import patching
from ketta.core.patching import Patch
from ketta.providers.key_binding import endpoint_for_call
from ketta.llm.http import OPENAI_DEFAULT_BASE_URL, bounded_init, guarded_sdk_client_classes
from ketta.llm.request_body import transform_unless_identity
from ketta.providers.keys import lookup, lookup_key_async
from ketta.providers.rules import NO_KEY
from ketta.usage import ledger as usage_ledger
from letta.llm_api.openai_client import OpenAIClient
from letta.schemas.embedding_config import EmbeddingConfig

TARGET = "letta.llm_api.openai_client:OpenAIClient._prepare_client_kwargs_embedding"


def _prepare_client_kwargs_embedding(self: OpenAIClient, embedding_config: EmbeddingConfig) -> dict:
    kwargs = patching.original(TARGET)(self, embedding_config)
    kwargs["api_key"] = NO_KEY  # never the OPENAI_API_KEY Letta put there, to whatever endpoint the config names
    handle = embedding_config.handle or ""
    if "/" in handle and self.actor is not None:
        provider_name = handle.split("/", 1)[0]
        key, row = lookup(provider_name, self.actor.organization_id, handle)
        if key:
            kwargs["api_key"] = key
        kwargs["base_url"] = endpoint_for_call(kwargs.get("base_url"), provider_name, row.provider_type, row.base_url)
        if row.provider_type == "ollama" and kwargs["base_url"] and not kwargs["base_url"].rstrip("/").endswith("/v1"):
            # Letta builds an embedding config from a handle with the provider's base_url as its
            # endpoint; Ollama serves its OpenAI-compatible embeddings under /v1 (POST /embeddings: 404).
            kwargs["base_url"] = kwargs["base_url"].rstrip("/") + "/v1"
    return kwargs


GuardedAsyncHttpxClientWrapper, GuardedSyncHttpxClientWrapper = guarded_sdk_client_classes(sdk, "httpx")


GUARD_WHY = "OpenAI SDK clients Letta builds connect only to addresses the URL guard allows (private hosts, DNS rebinding, redirects)."

# The SDK release range these patches were written for (constraints.txt pins openai==2.54.0):
# another installed version is drift, however the fingerprints compare.
OPENAI_SDK = "openai>=2.54,<3"
ASYNC_SDK_TARGET = "openai._client:AsyncOpenAI.__init__"
SYNC_SDK_TARGET = "openai._client:OpenAI.__init__"
EMBEDDINGS_TARGET = "letta.llm_api.openai_client:OpenAIClient.request_embeddings"
SDK_PATCH_WHY = ("LLM calls reuse one HTTP client per endpoint (no new pool, TLS context and CA bundle per call) and are "
                 "bounded by KETTA_LLM_CONNECT_TIMEOUT/READ_TIMEOUT/MAX_RETRIES instead of the SDK's 600 s and retries.")


async def request_embeddings(self: OpenAIClient, inputs: list[str], embedding_config: EmbeddingConfig) -> list[list[float]]:
    """Look the embedding provider's key up asynchronously first: the synchronous
    ``_prepare_client_kwargs_embedding`` (above) then finds it without a query or a decryption
    on the event loop."""
    handle = embedding_config.handle or ""
    if "/" in handle and self.actor is not None:
        await lookup_key_async(handle.split("/", 1)[0], self.actor.organization_id, handle)
    return await patching.original(EMBEDDINGS_TARGET)(self, inputs, embedding_config)


EMBEDDINGS_CREATE_TARGET = "openai.resources.embeddings:AsyncEmbeddings.create"


async def create_embeddings(self: Any, *args: Any, **kwargs: Any) -> Any:
    """The SDK's embeddings call, its usage recorded when a recorded ``request_embeddings`` sent it."""
    original = patching.original(EMBEDDINGS_CREATE_TARGET)
    return await usage_ledger.embeddings_sent(lambda *a, **k: original(self, *a, **k), *args, **kwargs)


RESPONSES_TARGET = "letta.llm_api.openai_client:OpenAIClient.build_request_data_responses"


def build_request_data_responses(self: OpenAIClient, *args: Any, **kwargs: Any) -> dict:
    """Letta's Responses API request without ``user``: OpenAI deprecated it there, and endpoints
    that serve the Responses API without it (Codex-style backends, strict proxies) answer 400
    'Unsupported parameter: user', so every reasoning-model agent on them fails."""
    request_data = patching.original(RESPONSES_TARGET)(self, *args, **kwargs)
    request_data.pop("user", None)
    return request_data


CHAT_TRANSFORM_TARGET = "openai.resources.chat.completions.completions:async_maybe_transform"
RESPONSES_TRANSFORM_TARGET = "openai.resources.responses.responses:async_maybe_transform"
TRANSFORM_WHY = ("The SDK's walk of a request body against its parameter types, about a quarter of a message's server CPU, "
                 "is skipped when it cannot change the body (plain JSON, no alias or format in the type).")


def _transform_skipping_identity(target: str) -> Any:
    """The SDK module's ``async_maybe_transform``, returning a plain body as is (ketta.llm.request_body)."""

    async def async_maybe_transform(data: Any, expected_type: Any) -> Any:
        return await transform_unless_identity(patching.original(target), data, expected_type)

    return async_maybe_transform


PATCHES = [
    Patch(
        target=RESPONSES_TARGET,
        replacement=build_request_data_responses,
        fingerprint="36c160847023dbdc",
        setting="letta_fixes",
        kind="fix",
        upstream="letta-ai/letta#3144",
        why="Responses API requests (OpenAI reasoning models on letta_v1_agent) no longer carry 'user', which "
            "Responses endpoints that do not take it refuse with 400 'Unsupported parameter: user'.",
    ),
    Patch(
        target=TARGET,
        replacement=_prepare_client_kwargs_embedding,
        fingerprint="87c765c1c5274715",
        setting="unified_providers",
        why="Embedding requests carry the key of the provider named in the embedding handle, and go only to its endpoint "
            "(an Ollama provider's under /v1, where it serves them).",
    ),
    Patch(
        target="openai._base_client:AsyncHttpxClientWrapper",
        replacement=GuardedAsyncHttpxClientWrapper,
        fingerprint="c7c8cff088734ad0",
        setting="url_guard", requires=OPENAI_SDK,
        why=GUARD_WHY,
    ),
    Patch(
        target="openai._base_client:SyncHttpxClientWrapper",
        replacement=GuardedSyncHttpxClientWrapper,
        fingerprint="8e52ed05d20ed1a0",
        setting="url_guard", requires=OPENAI_SDK,
        why=GUARD_WHY,
    ),
    Patch(
        target=EMBEDDINGS_TARGET,
        replacement=request_embeddings,
        fingerprint="d66bf9aad09930cf",
        setting="unified_providers",
        why="The embedding provider's key is read and decrypted off the event loop before Letta's synchronous client set-up.",
    ),
    Patch(target=EMBEDDINGS_CREATE_TARGET, replacement=create_embeddings, fingerprint="ceef0545717bd794",
          setting="usage_ledger", requires=OPENAI_SDK,
          why="Each embeddings call's usage (the response's usage.prompt_tokens, which Letta's request_embeddings "
              "drops) is a row of the usage ledger."),
    Patch(target=ASYNC_SDK_TARGET, replacement=bounded_init(ASYNC_SDK_TARGET, "httpx", True, "OPENAI_BASE_URL", OPENAI_DEFAULT_BASE_URL),
          fingerprint="d344730b9de46aee", setting="bounded_llm_calls", requires=OPENAI_SDK, why=SDK_PATCH_WHY),
    Patch(target=SYNC_SDK_TARGET, replacement=bounded_init(SYNC_SDK_TARGET, "httpx", False, "OPENAI_BASE_URL", OPENAI_DEFAULT_BASE_URL),
          fingerprint="92ca416353eee20b", setting="bounded_llm_calls", requires=OPENAI_SDK, why=SDK_PATCH_WHY),
    Patch(target=CHAT_TRANSFORM_TARGET, replacement=_transform_skipping_identity(CHAT_TRANSFORM_TARGET),
          fingerprint="b9d0fa66ce18357e", setting="lean_cpu_paths", requires=OPENAI_SDK, why=TRANSFORM_WHY),
    Patch(target=RESPONSES_TRANSFORM_TARGET, replacement=_transform_skipping_identity(RESPONSES_TRANSFORM_TARGET),
          fingerprint="b9d0fa66ce18357e", setting="lean_cpu_paths", requires=OPENAI_SDK, why=TRANSFORM_WHY),
]
