"""Ketta's own settings (env prefix ``KETTA_``); Letta keeps reading its own ``LETTA_*`` vars."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class KettaSettings(BaseSettings):
    """Every switch that changes Letta's behaviour; each gates the patches that declare it."""

    model_config = SettingsConfigDict(env_prefix="KETTA_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path("~/.ketta"), description="Data directory: embedded PostgreSQL, encryption key, lock file.")
    unified_providers: bool = Field(default=True, description="Every provider is an org-scoped database row; nothing synced from env vars.")
    hard_delete: bool = Field(default=True, description="DELETE /v1/providers/{id} removes the rows; the name is reusable at once.")
    no_openai_proxy: bool = Field(default=True, description="Handles are '{provider name}/{model}', never 'openai-proxy/...'.")
    env_key_fallback: bool = Field(default=True, description="With no key stored, use {PROVIDER_NAME}_API_KEY from the environment.")
    kimi_provider: bool = Field(default=True, description="Register the 'kimi' (Moonshot AI) provider type.")
    offline: bool = Field(default=True, description="Never download data at run time (Letta fetches NLTK data at start-up).")
    allow_patch_drift: bool = Field(default=False, description="Start even if an upstream target changed since its patch was written.")

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()


@lru_cache(maxsize=1)
def get_settings() -> KettaSettings:
    return KettaSettings()
