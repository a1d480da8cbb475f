"""A stored key goes only to its own provider.

An agent's ``llm_config`` names its provider (``provider_name``) and, separately, the URL to
call (``model_endpoint``); Ketta looks the key up by the name. Unchecked, a config naming a
stored provider with any other endpoint sends that provider's key there. So:

- on agent create/update, a config that names a stored provider must have an endpoint of that
  provider: its ``base_url`` (or its type's default) or a path below it on the same origin
  (Ollama's and vLLM's models live at ``{base_url}/v1``, Azure's under deployments), compared
  normalised (scheme, host, port, path without trailing slash); otherwise 400 naming the field
  and the endpoint it must have;
- at call time (agents stored before, or a provider whose ``base_url`` changed since), the
  call goes to the provider's endpoint, never to the config's.

The embedding config is bound the same way, its provider being the first part of its handle.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException

from ketta.security.endpoints import DEFAULT_PORTS, Endpoint, is_under, normalise, same_origin  # noqa: F401 - names of this module too

log = logging.getLogger("ketta.providers")

class EndpointNotOfProvider(HTTPException):
    """An agent config names a stored provider but another endpoint (400)."""

    def __init__(self, field: str, provider_name: str, expected: str, got: str):
        super().__init__(
            status_code=400,
            detail=(
                f"'{field}' must be the endpoint of provider '{provider_name}', {expected} (or a path below it), "
                f"not {got!r}: a provider's key is only sent to its own base_url. Set '{field}' to {expected!r}, "
                f"or pass the model's handle ('{provider_name}/<model>') instead of a config."
            ),
        )


class KeyMustFollowOrigin(HTTPException):
    """A PATCH moves a provider with a stored key to another origin without sending the key (400)."""

    def __init__(self, provider_name: str, old: str | None, new: str | None):
        super().__init__(
            status_code=400,
            detail=(
                f"Provider '{provider_name}': the new base_url {new!r} is on another origin (scheme, host or port) than "
                f"{old!r}, and a stored key never follows a provider to a new origin by itself. Send 'api_key' again in "
                "the same PATCH (nothing was changed)."
            ),
        )


def provider_endpoint(provider_type: str | None, base_url: str | None) -> str | None:
    """The provider's base_url, or its type's default when none is stored."""
    if base_url:
        return base_url
    if not provider_type:
        return None
    from ketta.providers.classes import provider_class_for

    try:
        default = provider_class_for(provider_type).model_fields["base_url"].default
    except (ValueError, KeyError):
        return None
    return default if isinstance(default, str) and default else None


def endpoint_for_call(configured: str | None, provider_name: str, provider_type: str | None, base_url: str | None) -> str | None:
    """The endpoint a call with this provider's key goes to: the configured one if it is the
    provider's, else the provider's own (keeping a ``/v1`` suffix the config had and the
    base_url lacks, as Ollama/vLLM configs do)."""
    expected = provider_endpoint(provider_type, base_url)
    if expected is None or normalise(expected) is None or is_under(configured, expected):
        return configured
    rewritten = expected
    config_path = (normalise(configured) or Endpoint("", "", None, "")).path
    if config_path.endswith("/v1") and not normalise(expected).path.endswith("/v1"):
        rewritten = expected.rstrip("/") + "/v1"
    log.warning("Provider '%s': the agent's endpoint %r is not the provider's; calling %r instead.", provider_name, configured, rewritten)
    return rewritten


async def check_agent_configs(llm_config: Any, embedding_config: Any, organization_id: str) -> None:
    """400 if a config names a stored provider of the organization with another endpoint."""
    from ketta.providers.keys import provider_row_async

    checks = []
    if llm_config is not None and llm_config.provider_name and llm_config.model_endpoint:
        checks.append(("llm_config.model_endpoint", llm_config.provider_name, llm_config.model_endpoint))
    handle = getattr(embedding_config, "handle", None) or ""
    if embedding_config is not None and "/" in handle and embedding_config.embedding_endpoint:
        checks.append(("embedding_config.embedding_endpoint", handle.split("/", 1)[0], embedding_config.embedding_endpoint))
    for field, provider_name, endpoint in checks:
        row = await provider_row_async(provider_name, organization_id)
        if not row.found:
            continue  # not a stored provider: no stored key goes anywhere (a deleted one is reported when called)
        expected = provider_endpoint(row.provider_type, row.base_url)
        if expected is not None and normalise(expected) is not None and not is_under(endpoint, expected):
            raise EndpointNotOfProvider(field, provider_name, expected, endpoint)
