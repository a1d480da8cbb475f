"""``ketta providers import-env``: turn the usual env keys into database providers, once.

Stock Letta synced "base" providers from env vars at every start; Ketta does not. Users who
relied on that run this once. It is idempotent: a provider whose name exists is left alone.
Names are the ones stock Letta gave its base providers, so existing agents' handles still
resolve.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fastapi import HTTPException


@dataclass(frozen=True)
class EnvProvider:
    """A provider made from env vars: ``key`` and ``base_url`` name ``model_settings`` fields."""

    name: str
    provider_type: str
    key: str | None = None
    base_url: str | None = None
    needs_base_url: bool = False


ENV_PROVIDERS: tuple[EnvProvider, ...] = (
    EnvProvider("openai", "openai", key="openai_api_key", base_url="openai_api_base"),
    EnvProvider("anthropic", "anthropic", key="anthropic_api_key"),
    EnvProvider("google_ai", "google_ai", key="gemini_api_key"),
    EnvProvider("groq", "groq", key="groq_api_key"),
    EnvProvider("together", "together", key="together_api_key"),
    EnvProvider("deepseek", "deepseek", key="deepseek_api_key"),
    EnvProvider("xai", "xai", key="xai_api_key"),
    EnvProvider("minimax", "minimax", key="minimax_api_key"),
    EnvProvider("baseten", "baseten", key="baseten_api_key"),
    EnvProvider("zai", "zai", key="zai_api_key"),
    EnvProvider("openrouter", "openrouter", key="openrouter_api_key"),
    EnvProvider("ollama", "ollama", base_url="ollama_base_url", needs_base_url=True),
    EnvProvider("vllm", "vllm", base_url="vllm_api_base", needs_base_url=True),
    EnvProvider("sglang", "sglang", base_url="sglang_api_base", needs_base_url=True),
    EnvProvider("lmstudio_openai", "lmstudio_openai", base_url="lmstudio_base_url", needs_base_url=True),
)


def anything_configured(environ: dict[str, str] | None = None) -> bool:
    """Whether any variable that makes :func:`wanted_providers` list a provider is set (read
    without importing Letta: its ``model_settings`` take these names, case-insensitively, from
    the environment, which already holds ``.env``). False: nothing to import, answered at once."""
    names = {(spec.key or spec.base_url or "").upper() for spec in ENV_PROVIDERS}
    names |= {"AZURE_API_KEY", "AWS_ACCESS_KEY_ID", "MOONSHOT_API_KEY"}
    environ = os.environ if environ is None else environ
    return any(value.strip() for key, value in environ.items() if key.upper() in names)


def _setting(name: str | None) -> str | None:
    from letta.settings import model_settings

    from ketta.security.operator_keys import withheld

    value = (getattr(model_settings, name, None) or withheld().get(name.upper())) if name else None
    return value or None


def wanted_providers() -> list[dict]:
    """ProviderCreate fields for every provider the environment configures."""
    wanted = []
    for spec in ENV_PROVIDERS:
        key, base_url = _setting(spec.key), _setting(spec.base_url)
        if (spec.key and not key) or (spec.needs_base_url and not base_url):
            continue
        wanted.append({"name": spec.name, "provider_type": spec.provider_type, "api_key": key or "", "base_url": base_url})
    if _setting("azure_api_key") and _setting("azure_base_url"):
        wanted.append({"name": "azure", "provider_type": "azure", "api_key": _setting("azure_api_key"),
                       "base_url": _setting("azure_base_url"), "api_version": _setting("azure_api_version")})
    if _setting("aws_access_key_id") and _setting("aws_secret_access_key") and _setting("aws_default_region"):
        wanted.append({"name": "bedrock", "provider_type": "bedrock", "access_key": _setting("aws_access_key_id"),
                       "api_key": _setting("aws_secret_access_key"), "region": _setting("aws_default_region")})
    from ketta.core.settings import get_settings

    if os.environ.get("MOONSHOT_API_KEY") and get_settings().kimi_provider:
        wanted.append({"name": "kimi", "provider_type": "kimi", "api_key": os.environ["MOONSHOT_API_KEY"],
                       "base_url": os.environ.get("MOONSHOT_BASE_URL") or None})
    return wanted


async def import_env_providers() -> list[tuple[str, str]]:
    """Create the env-configured providers that do not exist yet; returns (name, outcome) rows."""
    from letta.schemas.providers import ProviderCreate
    from letta.services.organization_manager import OrganizationManager
    from letta.services.provider_manager import ProviderManager
    from letta.services.user_manager import UserManager

    await OrganizationManager().create_default_organization_async()
    actor = await UserManager().create_default_actor_async()
    manager = ProviderManager()
    outcomes: list[tuple[str, str]] = []
    for fields in wanted_providers():
        if await manager.list_providers_async(actor=actor, name=fields["name"]):
            outcomes.append((fields["name"], "exists, left as is"))
            continue
        try:
            await manager.create_provider_async(ProviderCreate(**{k: v for k, v in fields.items() if v is not None}), actor=actor)
            outcomes.append((fields["name"], "created"))
        except HTTPException as exc:
            outcomes.append((fields["name"], f"refused: {exc.detail}"))
    return outcomes
