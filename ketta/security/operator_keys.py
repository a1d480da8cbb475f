"""The operator's env keys stay out of Letta's reach; only Ketta's fallback may hand one out.

Letta reads every ``*_API_KEY`` (and the AWS keys) into ``letta.settings.model_settings`` at
import, and many of its LLM clients use those fields whenever a call has no key of its own
(Azure, DeepSeek, Groq, xAI, Together, Fireworks, Baseten, Z.ai, MiniMax, Gemini, Bedrock,
OpenAI embeddings of passages): a keyless provider, or an agent config without
``provider_name``, would then send the operator's key to whatever endpoint it names, or spend it
at the operator's own. Several of those clients read ``model_settings`` directly, never asking
for the provider's key, so a placeholder at one call site is not enough.

:func:`withhold_from_letta` therefore empties those fields once Letta has built its server (after
Letta's start-up read them) and keeps the values here, in memory, for the only code allowed to
use one: :func:`ketta.providers.rules.env_key_for` (``KETTA_ENV_KEY_FALLBACK``, off by default, and only
to the key's own endpoint) and :func:`operator_key_at` for clients that resolve credentials
themselves (Azure). SDK clients built without a key get :data:`NO_KEY` instead of
reading ``OPENAI_API_KEY``/``ANTHROPIC_API_KEY`` from the environment (:func:`never_from_environment`).
"""

from __future__ import annotations

import re
from typing import Any

# Sent instead of an operator's env key where Letta would have used one for a call without a
# stored key (Letta falls back to OPENAI_API_KEY, ANTHROPIC_API_KEY, ... for any keyless call).
NO_KEY = "ketta-no-key"

# Fields of Letta's ModelSettings that hold a credential (checked against the installed Letta by a
# test, so a field a Letta upgrade adds is noticed).
CREDENTIAL_FIELD = re.compile(r"(api_key|access_key_id|secret_access_key|_token|_secret|password)$")

_withheld: dict[str, str] = {}


def credential_fields(model_settings: Any) -> list[str]:
    """The names of ``model_settings``' fields that hold a key."""
    return [name for name in type(model_settings).model_fields if CREDENTIAL_FIELD.search(name)]


def withhold_from_letta() -> list[str]:
    """Empty every credential field of Letta's ``model_settings``, keeping the values here (under
    their environment variable's name) for Ketta's fallback. Returns the env names withheld."""
    from ketta.security import server_secrets
    from letta.settings import model_settings

    names = []
    for field in credential_fields(model_settings):
        value = getattr(model_settings, field, None)
        if not value:
            continue
        env_name = field.upper()
        _withheld[env_name] = str(value)
        server_secrets.keep(env_name, str(value))
        setattr(model_settings, field, None)
        names.append(env_name)
    return sorted(names)


# Keys of Letta's tool_settings that its built-in tools spend for whichever agent calls them
# (web_search, fetch_webpage). E2B and Modal keys are not here: they choose the sandbox that runs
# every tool, an operator's decision that withholding them would silently change.
SEARCH_TOOL_FIELDS = ("exa_api_key", "tavily_api_key")


def withhold_search_keys() -> list[str]:
    """Empty Letta's search-tool keys (kept here), so a user's agent cannot spend the operator's."""
    from ketta.security import server_secrets
    from letta.settings import tool_settings

    names = []
    for field in SEARCH_TOOL_FIELDS:
        value = getattr(tool_settings, field, None)
        if value:
            _withheld[field.upper()] = str(value)
            server_secrets.keep(field.upper(), str(value))
            setattr(tool_settings, field, None)
            names.append(field.upper())
    return names


def withheld() -> dict[str, str]:
    """What was taken from Letta's settings (for redaction; never print it)."""
    return dict(_withheld)


def operator_key_at(env_name: str, endpoint: str | None, own_endpoints: list[str | None]) -> str | None:
    """The operator's ``env_name`` key for a call to ``endpoint``, or None.

    Only when the operator turned the env-key fallback on (``KETTA_ENV_KEY_FALLBACK``) and only
    when ``endpoint`` is one of the key's own (the operator's ``*_BASE_URL``/``*_API_BASE``):
    never to an endpoint a user chose.
    """
    from ketta.security import server_secrets
    from ketta.security.endpoints import is_under
    from ketta.core.settings import get_settings

    if not get_settings().env_key_fallback or not endpoint:
        return None
    key = _withheld.get(env_name) or server_secrets.get(env_name)
    if not key:
        return None
    return key if any(own and is_under(endpoint, own) for own in own_endpoints) else None


def never_from_environment(kwargs: dict[str, Any]) -> dict[str, Any]:
    """SDK constructor arguments with a key always given: an OpenAI or Anthropic SDK client built
    without one reads ``OPENAI_API_KEY``/``ANTHROPIC_API_KEY`` from the environment (still there
    when ``KETTA_SECRETS_OUT_OF_ENVIRONMENT=false``) and sends it to the caller's ``base_url``."""
    if kwargs.get("api_key") is None and not kwargs.get("auth_token"):
        kwargs = {**kwargs, "api_key": NO_KEY}
    return kwargs
