"""``KimiProvider``: Moonshot AI (Kimi) as a provider type Letta does not have.

Moonshot speaks the OpenAI wire format, so its chat models are listed as ``openai`` endpoint
models (Letta's OpenAI-compatible streaming, model settings and token streaming then apply
unchanged); what differs lives here (model list, fallback list, key check) and in
:mod:`ketta.providers.kimi_client` (requests Moonshot accepts).
This module adds a class and patches nothing by itself; the provider registry
(:mod:`.base`) maps ``ProviderType.kimi`` to it.
"""

from __future__ import annotations

import logging
import re
import httpx
from fastapi import HTTPException
from pydantic import Field

from letta.errors import ErrorCode, LLMAuthenticationError
from letta.schemas.embedding_config import EmbeddingConfig
from letta.schemas.enums import ProviderCategory, ProviderType
from letta.schemas.llm_config import LLMConfig
from letta.schemas.providers.base import Provider

from ketta.security.url_guard import guarded_async_client

log = logging.getLogger("ketta.kimi")

MOONSHOT_CHINA_BASE_URL = "https://api.moonshot.cn/v1"
MOONSHOT_GLOBAL_BASE_URL = "https://api.moonshot.ai/v1"

# Moonshot's published context windows (DESIGN.md), used when /models omits context_length.
KNOWN_CONTEXT_WINDOWS: dict[str, int] = {
    "moonshot-v1-8k": 8192,
    "moonshot-v1-32k": 32768,
    "moonshot-v1-128k": 131072,
    "moonshot-v1-auto": 131072,
    "kimi-k2-0711-preview": 131072,
    "kimi-k2-0905-preview": 262144,
    "kimi-k2-turbo-preview": 262144,
    "kimi-k2-thinking": 262144,
    "kimi-k2-thinking-turbo": 262144,
    "kimi-k2.5": 262144,
    "kimi-k2.6": 262144,
    "kimi-latest": 131072,
    "kimi-thinking-preview": 131072,
    "kimi-k3": 1048576,
}

# Served when Moonshot cannot be reached, so a provider created during an outage still has
# models (the K2 family first, as the most asked-for).
FALLBACK_MODELS: tuple[str, ...] = (
    "kimi-k2-0905-preview",
    "kimi-k2-0711-preview",
    "kimi-k2-turbo-preview",
    "kimi-k2-thinking",
    "kimi-k2-thinking-turbo",
    "kimi-k2.5",
    "kimi-k2.6",
    "kimi-k3",
    "kimi-thinking-preview",
    "kimi-latest",
)

# Ids Moonshot serves for chat. "kimi-*" and "moonshot-*" cover every id it published so far;
# everything else /models returns (e.g. a proxy's other models) is not a Kimi model.
_KIMI_MODEL_ID = re.compile(r"^(kimi-|moonshot-)", re.IGNORECASE)
DEFAULT_CONTEXT_WINDOW = 131072  # the smallest window of the current K2 family: safe for unknown ids
LISTING_TIMEOUT_S = 5.0  # an outage must not hold a REST call (create, refresh, check) for long


def is_thinking_model(model: str) -> bool:
    """Models that return ``reasoning_content`` (thinking on by default)."""
    name = model.lower()
    return "thinking" in name or name.startswith(("kimi-k2.5", "kimi-k2.6", "kimi-k2.7", "kimi-k3"))


def context_window_for(model: str, reported: object = None) -> int:
    """Moonshot's ``context_length`` if it gave one, else the known table, else a safe default."""
    if isinstance(reported, int) and not isinstance(reported, bool) and reported > 0:
        return reported
    return KNOWN_CONTEXT_WINDOWS.get(model.lower(), DEFAULT_CONTEXT_WINDOW)


def default_max_output_tokens(model: str, context_window: int | None = None) -> int:
    """Room for an answer: thinking models need a large budget, small windows a small one."""
    window = context_window or context_window_for(model)
    budget = 32768 if is_thinking_model(model) else 16384
    return min(budget, window // 2)


def moonshot_error_message(response: httpx.Response) -> str:
    """Moonshot's own ``error.message`` (e.g. "Invalid Authentication"), else the body's start."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or f"HTTP {response.status_code}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(body)[:300]


KIMI_PROVIDER_TYPE = "kimi"


class MoonshotUnreachable(Exception):
    """Moonshot did not answer usefully (network error, timeout, 5xx): an outage, not a refusal."""

    def __init__(self, message: str, *, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


class KimiProvider(Provider):
    """Moonshot AI: live model list with a K2 fallback, key checks, no embeddings."""

    # The enum member exists only once Ketta's enum patch ran, and this module may be imported
    # before (``ketta patches``), so the default is looked up when an instance is made.
    provider_type: ProviderType = Field(default_factory=lambda: ProviderType(KIMI_PROVIDER_TYPE), description="The type of the provider.")
    provider_category: ProviderCategory = Field(ProviderCategory.byok, description="The category of the provider (base or byok)")
    base_url: str = Field(MOONSHOT_CHINA_BASE_URL, description="Moonshot API base URL (China .cn, global .ai, or a proxy).")

    async def _api_key(self) -> str | None:
        return await self.api_key_enc.get_plaintext_async() if self.api_key_enc else None

    async def _get(self, path: str) -> dict:
        """GET ``{base_url}{path}`` with the stored key; refusals raise, outages raise MoonshotUnreachable."""
        url = self.base_url.rstrip("/") + path
        headers = {"Authorization": f"Bearer {await self._api_key() or ''}"}
        try:
            async with guarded_async_client(timeout=LISTING_TIMEOUT_S) as client:
                response = await client.get(url, headers=headers)
        except httpx.TimeoutException:
            raise MoonshotUnreachable(f"Moonshot at {self.base_url} did not answer within {LISTING_TIMEOUT_S:g} s", timed_out=True) from None
        except httpx.HTTPError as exc:
            raise MoonshotUnreachable(f"Moonshot at {self.base_url} is unreachable ({type(exc).__name__}: {exc})") from None
        if response.status_code in (401, 403):
            raise LLMAuthenticationError(
                message=f"Moonshot refused the API key ({response.status_code}): {moonshot_error_message(response)}",
                code=ErrorCode.UNAUTHENTICATED,
            )
        if response.status_code >= 500:
            raise MoonshotUnreachable(f"Moonshot at {self.base_url} answered {response.status_code}: {moonshot_error_message(response)}")
        if 300 <= response.status_code < 400:  # not followed (the key would go along): and not an answer about the key
            raise MoonshotUnreachable(f"Moonshot at {self.base_url} answered a redirect ({response.status_code}); "
                                      "redirects are not followed: set base_url to the final address")
        if response.status_code >= 400:
            raise HTTPException(status_code=response.status_code, detail=f"Moonshot answered {response.status_code}: {moonshot_error_message(response)}")
        try:
            return response.json()
        except ValueError:
            raise MoonshotUnreachable(f"Moonshot at {self.base_url} answered with something that is not JSON") from None

    async def check_api_key(self) -> None:
        """Ask Moonshot for the balance: 401 with Moonshot's message on a bad key, 502/504 if unreachable."""
        if not await self._api_key():
            raise ValueError("No API key provided")
        try:
            await self._get("/users/me/balance")
        except MoonshotUnreachable as exc:
            raise HTTPException(status_code=504 if exc.timed_out else 502, detail=str(exc)) from None

    async def account_balance(self) -> dict:
        """The account's balance (``GET /users/me/balance``'s ``data``: available, voucher and cash
        balance, in the account's currency). Raises like :meth:`check_api_key`'s request."""
        data = (await self._get("/users/me/balance")).get("data")
        if not isinstance(data, dict):
            raise MoonshotUnreachable(f"Moonshot at {self.base_url} answered the balance request without 'data'")
        return data

    async def list_llm_models_async(self) -> list[LLMConfig]:
        """Moonshot's chat models, or the built-in list (with a warning) when Moonshot is down."""
        try:
            data = (await self._get("/models")).get("data") or []
            models = [(m["id"], m.get("context_length")) for m in data if isinstance(m, dict) and _KIMI_MODEL_ID.match(str(m.get("id", "")))]
        except MoonshotUnreachable as exc:
            log.warning("Kimi provider '%s': %s; serving the built-in model list.", self.name, exc)
            models = [(model, None) for model in FALLBACK_MODELS]
        return [self._llm_config(model, context_window_for(model, reported)) for model, reported in models]

    def _llm_config(self, model: str, context_window: int) -> LLMConfig:
        return LLMConfig(
            model=model,
            model_endpoint_type="openai",
            model_endpoint=self.base_url,
            context_window=context_window,
            handle=self.get_handle(model),
            max_tokens=default_max_output_tokens(model, context_window),
            provider_name=self.name,
            provider_category=self.provider_category,
            temperature=1.0 if is_thinking_model(model) else 0.6,
        )

    async def list_embedding_models_async(self) -> list[EmbeddingConfig]:
        """None: Moonshot has no embeddings API (a Kimi agent embeds with another provider)."""
        return []

    def get_model_context_window(self, model_name: str) -> int | None:
        return context_window_for(model_name)

    async def get_model_context_window_async(self, model_name: str) -> int | None:
        return context_window_for(model_name)

    def get_default_max_output_tokens(self, model_name: str) -> int:
        return default_max_output_tokens(model_name)
