"""Patches for ``letta/llm_api/anthropic_client.py`` (and MiniMax's, Anthropic's listing): every
connection of the Anthropic SDK passes Ketta's URL guard, and calls go to the provider's base_url.

Letta builds ``anthropic.AsyncAnthropic``/``Anthropic`` clients in several places without an
``http_client``; the SDK then makes its own ``AsyncHttpxClientWrapper`` (on ``httpx2``). The
patch gives that default client the guarded transport of :mod:`ketta.security.url_guard`, so every
request, retry and redirect connects only to addresses the operator allows.

Stock ``AnthropicClient._get_anthropic_client(_async)`` builds its client without a base_url, so
an ``anthropic`` provider pointed at an Anthropic-compatible endpoint (Moonshot, DeepSeek, Zhipu
GLM, MiniMax, a proxy) still calls api.anthropic.com. Here the client Letta built is re-targeted
at the base_url stored for the provider now; a provider on Anthropic's own URL is left as it was.
"""

from __future__ import annotations

import inspect
import logging
from functools import lru_cache

import anthropic._base_client as sdk
from anthropic.resources.beta.messages import AsyncMessages
from letta.llm_api.anthropic_client import AnthropicClient
from letta.schemas.llm_config import LLMConfig

from ketta.core import patching
from ketta.providers import keys as provider_keys
from ketta.llm.http import ANTHROPIC_DEFAULT_BASE_URL, bounded_init, guarded_sdk_client_classes
from ketta.core.patching import Patch


GuardedAsyncHttpxClientWrapper, GuardedSyncHttpxClientWrapper = guarded_sdk_client_classes(sdk, "httpx2")


GUARD_WHY = "Anthropic SDK clients Letta builds connect only to addresses the URL guard allows (private hosts, DNS rebinding, redirects)."

log = logging.getLogger("ketta.anthropic")

TARGET = "letta.llm_api.anthropic_client:AnthropicClient"
ANTHROPIC_API = "https://api.anthropic.com"


def sdk_base_url(base_url: str | None) -> str | None:
    """The SDK's base_url for a provider's base_url, None for Anthropic's own API.

    Letta stores Anthropic's as ``https://api.anthropic.com/v1`` while the SDK appends
    ``/v1/messages`` itself, so a trailing ``/v1`` is dropped (``https://api.moonshot.ai/anthropic``
    and ``…/anthropic/v1`` both work)."""
    if not base_url:
        return None
    url = base_url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return None if url == ANTHROPIC_API else url


def _retarget(client, base_url: str | None):
    target = sdk_base_url(base_url)
    return client.with_options(base_url=target) if target else client


def _get_anthropic_client(self: AnthropicClient, llm_config: LLMConfig, async_client: bool = False):
    client = patching.original(f"{TARGET}._get_anthropic_client")(self, llm_config, async_client)
    stored = None
    if llm_config.provider_name and self.actor is not None:
        stored = provider_keys.base_url(llm_config.provider_name, self.actor.organization_id)
    return _retarget(client, stored or llm_config.model_endpoint)


async def _get_anthropic_client_async(self: AnthropicClient, llm_config: LLMConfig, async_client: bool = False):
    client = await patching.original(f"{TARGET}._get_anthropic_client_async")(self, llm_config, async_client)
    stored = None
    if llm_config.provider_name and self.actor is not None:
        stored = await provider_keys.base_url_async(llm_config.provider_name, self.actor.organization_id)
    return _retarget(client, stored or llm_config.model_endpoint)


@lru_cache(maxsize=1)
def sdk_parameters() -> frozenset[str]:
    """The keyword arguments the installed SDK's ``beta.messages.create`` takes."""
    return frozenset(inspect.signature(AsyncMessages.create).parameters) - {"self"}


def build_request_data(self: AnthropicClient, *args, **kwargs) -> dict:
    """Letta's request, without the fields the installed SDK no longer takes.

    anthropic 2.x dropped ``temperature`` (and ``top_p``/``top_k``) from ``messages.create``,
    while Letta 0.16.8 always sends ``temperature``: every call would fail with "unexpected
    keyword argument". Such fields are dropped for Anthropic's own API and sent in the JSON
    body (``extra_body``) to a custom base_url, whose server may still use them."""
    data = patching.original(f"{TARGET}.build_request_data")(self, *args, **kwargs)
    unsupported = {key: data.pop(key) for key in list(data) if key not in sdk_parameters()}
    if unsupported:
        bound = inspect.signature(patching.original(f"{TARGET}.build_request_data")).bind_partial(self, *args, **kwargs)
        llm_config = bound.arguments.get("llm_config")
        if sdk_base_url(getattr(llm_config, "model_endpoint", None)):
            data["extra_body"] = {**(data.get("extra_body") or {}), **unsupported}
    return data


WHY = ("Anthropic-type providers with a base_url (Anthropic-compatible endpoints) get every call there, "
       "streaming and tool use included; the stored base_url is read per call.")


# The SDK release range these patches were written for (constraints.txt pins anthropic==2.12.0):
# another installed version is drift, however the fingerprints compare.
ANTHROPIC_SDK = "anthropic>=2.12,<3"
ASYNC_TARGET = "anthropic._client:AsyncAnthropic.__init__"
SYNC_TARGET = "anthropic._client:Anthropic.__init__"
BOUNDED_WHY = "Anthropic calls reuse one HTTP client per endpoint and are bounded by KETTA_LLM_CONNECT_TIMEOUT/READ_TIMEOUT/MAX_RETRIES."

PATCHES = [
    Patch(
        target="anthropic._base_client:AsyncHttpxClientWrapper",
        replacement=GuardedAsyncHttpxClientWrapper,
        fingerprint="c7c8cff088734ad0",
        setting="url_guard", requires=ANTHROPIC_SDK,
        why=GUARD_WHY,
    ),
    Patch(
        target="anthropic._base_client:SyncHttpxClientWrapper",
        replacement=GuardedSyncHttpxClientWrapper,
        fingerprint="8e52ed05d20ed1a0",
        setting="url_guard", requires=ANTHROPIC_SDK,
        why=GUARD_WHY,
    ),
    Patch(target=f"{TARGET}.build_request_data", replacement=build_request_data, fingerprint="6eac78dc621b777e",
          setting="unified_providers",
          why="Fields the pinned anthropic SDK no longer takes (temperature) are not passed to it (every call failed); "
          "a custom base_url still gets them in the JSON body."),
    Patch(target=f"{TARGET}._get_anthropic_client", replacement=_get_anthropic_client,
          fingerprint="d75a55d4fb4e3d45", setting="unified_providers", why=WHY),
    Patch(target=f"{TARGET}._get_anthropic_client_async", replacement=_get_anthropic_client_async,
          fingerprint="f773d66b4c47cc08", setting="unified_providers", why=WHY),
    Patch(target=ASYNC_TARGET, replacement=bounded_init(ASYNC_TARGET, "httpx2", True, "ANTHROPIC_BASE_URL", ANTHROPIC_DEFAULT_BASE_URL),
          fingerprint="f8692b3323b7bce5", setting="bounded_llm_calls", requires=ANTHROPIC_SDK, why=BOUNDED_WHY),
    Patch(target=SYNC_TARGET, replacement=bounded_init(SYNC_TARGET, "httpx2", False, "ANTHROPIC_BASE_URL", ANTHROPIC_DEFAULT_BASE_URL),
          fingerprint="d413ca111724e5b8", setting="bounded_llm_calls", requires=ANTHROPIC_SDK, why=BOUNDED_WHY),
]
