"""One validation step for what a request says about where a key goes: a provider's input and base_url, an agent's endpoints.

The provider-manager patch (create, PATCH, check) and the agent-manager patch (create, update)
call these before anything is listed, sent or stored, so a refused request changes nothing.
The rules themselves live in :mod:`ketta.providers.rules` (names, types, fields) and
:mod:`ketta.security.url_guard` (which addresses a key may go to); each URL check follows
``KETTA_URL_GUARD``, read per call.
"""

from __future__ import annotations

from typing import Any

from ketta.core.settings import get_settings
from ketta.providers.pools import POOL_PROVIDER_TYPE
from ketta.providers.rules import ProviderInputError, check_creatable_type, check_provider_fields, clean_provider_name
from ketta.security.url_guard import check_url_async

# Types whose base_url is not a URL the server calls (Bedrock's is the literal "bedrock"); the
# same for an agent config's endpoint type.
NON_URL_TYPES = ("bedrock",)


async def check_base_url(provider_type: object, base_url: str | None) -> None:
    """422 unless a given base_url is one the URL guard lets Ketta call with a key."""
    if not base_url or not get_settings().url_guard:
        return
    if getattr(provider_type, "value", provider_type) in NON_URL_TYPES:
        return
    await check_url_async(base_url, "base_url")


async def validate_create(request: Any) -> str:
    """A ``ProviderCreate`` checked (type, fields, base_url); the cleaned name to store it under."""
    name = clean_provider_name(request.name)
    check_creatable_type(request.provider_type)
    check_provider_fields(request.model_dump(include={"api_key", "access_key", "base_url", "region", "api_version"}))
    await check_base_url(request.provider_type, request.base_url)
    return name


def validate_update_fields(sent: dict[str, Any]) -> None:
    """The fields a PATCH sends, checked before the provider is read (422 before 404)."""
    check_provider_fields(sent)


async def validate_update(current: Any, sent: dict[str, Any]) -> None:
    """A PATCH of the stored provider ``current``: a pool has no key or base_url of its own; a new
    base_url must pass the URL guard."""
    if str(getattr(current.provider_type, "value", current.provider_type)) == POOL_PROVIDER_TYPE:
        raise ProviderInputError(f"Provider '{current.name}' is a pool: it has no key or base_url of its own; "
                                 f"change its members with PATCH /v1/pools/{current.id}.")
    await check_base_url(current.provider_type, sent.get("base_url"))


async def validate_check(provider_check: Any) -> None:
    """A ``ProviderCheck`` (POST /v1/providers/check) checked like a create, before its key is sent."""
    check_creatable_type(provider_check.provider_type)
    check_provider_fields(provider_check.model_dump())
    await check_base_url(provider_check.provider_type, provider_check.base_url)


async def check_agent_endpoints(llm_config: Any, embedding_config: Any) -> None:
    """422 unless every endpoint an agent's configs name passes the URL guard."""
    if not get_settings().url_guard:
        return
    if llm_config is not None and llm_config.model_endpoint is not None and llm_config.model_endpoint_type not in NON_URL_TYPES:
        await check_url_async(llm_config.model_endpoint, "llm_config.model_endpoint")
    if embedding_config is not None and embedding_config.embedding_endpoint is not None \
            and embedding_config.embedding_endpoint_type not in NON_URL_TYPES:
        await check_url_async(embedding_config.embedding_endpoint, "embedding_config.embedding_endpoint")
