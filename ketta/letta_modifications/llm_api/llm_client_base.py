"""Patches of ``letta/llm_api/llm_client_base.py``: every LLM call takes its provider's key from the database.

Stock Letta reads the stored key only when the agent's ``llm_config.provider_category`` is
"byok" and uses env vars otherwise. Ketta looks the provider up by name for every call, so
a key changed with PATCH /v1/providers/{id} is used by the next message, and an agent whose
provider was deleted gets a 4xx naming it. The key goes only to its provider: the config's
``model_endpoint`` is replaced by the provider's own when it is not (:mod:`ketta.providers.key_binding`);
Letta's clients read the endpoint after asking for the key.
"""

from __future__ import annotations

from typing import Optional, Tuple

from ketta.providers import routing
from ketta.core import patching
from ketta.core.patching import Patch
from ketta.providers.key_binding import endpoint_for_call
from ketta.providers.keys import ProviderRow, lookup, lookup_async
from ketta.providers.rules import NO_KEY
from letta.llm_api.llm_client_base import LLMClientBase
from letta.schemas.llm_config import LLMConfig

TARGET = "letta.llm_api.llm_client_base:LLMClientBase"
Overrides = Tuple[Optional[str], Optional[str], Optional[str]]


def get_byok_overrides(self: LLMClientBase, llm_config: LLMConfig) -> Overrides:
    if not llm_config.provider_name or self.actor is None:
        return _never_env_key(patching.original(f"{TARGET}.get_byok_overrides")(self, llm_config))
    key, row = lookup(llm_config.provider_name, self.actor.organization_id, llm_config.handle)
    _bind_endpoint(llm_config, row)
    return key or NO_KEY, None, None


async def get_byok_overrides_async(self: LLMClientBase, llm_config: LLMConfig) -> Overrides:
    if not llm_config.provider_name or self.actor is None:
        return _never_env_key(await patching.original(f"{TARGET}.get_byok_overrides_async")(self, llm_config))
    key, row = await lookup_async(llm_config.provider_name, self.actor.organization_id, llm_config.handle)
    _bind_endpoint(llm_config, row)
    return key or NO_KEY, None, None


def _never_env_key(overrides: Overrides) -> Overrides:
    """Letta's clients use the operator's env key (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...) when
    this returns no key, and send it to whatever endpoint the config names: a placeholder instead.
    Ketta's own fallback (:func:`ketta.providers.rules.env_key_for`) already gave a provider its env key
    where the operator allows it."""
    key, *rest = overrides
    return (key or NO_KEY, *rest)  # type: ignore[return-value]


def _bind_endpoint(llm_config: LLMConfig, row: ProviderRow) -> None:
    """The call goes to the provider's endpoint, whatever the (stored) config says."""
    llm_config.model_endpoint = endpoint_for_call(llm_config.model_endpoint, llm_config.provider_name, row.provider_type, row.base_url)


def __init__(self: LLMClientBase, *args, **kwargs) -> None:
    """Letta's constructor, then the client's sending methods go through the routing seam."""
    patching.original(f"{TARGET}.__init__")(self, *args, **kwargs)
    routing.instrument(self)


PATCHES = [
    Patch(
        target=f"{TARGET}.get_byok_overrides",
        replacement=get_byok_overrides,
        fingerprint="b7cc71d22e99c426",
        setting="unified_providers",
        why="The key of every LLM call comes from its provider's row, whatever provider_category the agent stored, "
        "and goes only to that provider's endpoint.",
    ),
    Patch(
        target=f"{TARGET}.get_byok_overrides_async",
        replacement=get_byok_overrides_async,
        fingerprint="bbf41787c2dc9065",
        setting="unified_providers",
        why="The key of every LLM call comes from its provider's row, whatever provider_category the agent stored, "
        "and goes only to that provider's endpoint.",
    ),
    Patch(
        target=f"{TARGET}.__init__",
        replacement=__init__,
        fingerprint="2c23bc4a96ba6da5",
        setting="llm_routing",
        why="Every LLM client is built here: its request/stream/embedding calls go through Ketta's routing seam "
        "(ketta.providers.routing): provider health (GET /v1/providers/{id}/health), fallback handles, pools.",
    ),
]
