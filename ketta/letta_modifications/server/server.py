"""Patches of ``letta/server/server.py``: no start-up sync of env-configured providers, and a
model listing that reads the organization's providers and models in two queries.

Stock ``list_llm_models_async`` first walks every model looking for "base" providers (one
provider query per provider), then lists each BYOK provider's models again (two queries per
provider): with 50 providers that is ~150 queries for a list Ketta can read in two.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from typing import List, Optional

from fastapi import HTTPException
from sqlalchemy import select

from ketta.core import patching
from ketta.core.patching import Patch
from ketta.providers.model_listing import organization_providers_query
from ketta.providers.rules import check_text
from letta.orm.errors import NoResultFound
from letta import constants
from letta.orm.provider_model import ProviderModel as ProviderModelRow
from letta.schemas.enums import ProviderCategory, ProviderType
from letta.schemas.llm_config import LLMConfig
from letta.schemas.user import User
from letta.server.db import db_registry
from letta.server.server import SyncServer
from letta.settings import model_settings

log = logging.getLogger("ketta.providers")


async def _sync_provider_models_async(self: SyncServer) -> None:
    """Stock start-up refreshes the models of env-configured base providers; Ketta has none.
    Each provider's models are listed when it is created or refreshed over REST."""
    log.info("Ketta: no base provider models to sync at start-up")


LIST_TARGET = "letta.server.server:SyncServer.list_llm_models_async"


async def _first_sync(server: SyncServer, provider, actor: User) -> None:
    """List an unsynced provider's models once; on failure it stays unsynced (the next listing
    retries) and the listing goes on without them. A provider deleted meanwhile is skipped."""
    from ketta.providers.store import list_upstream_models, typed_for_listing

    try:
        models = await list_upstream_models(await typed_for_listing(provider), provider.name)
        await server.provider_manager.sync_provider_models_async(provider, *models, organization_id=actor.organization_id)
    except (HTTPException, NoResultFound) as exc:
        log.warning("Provider '%s': models not listed yet (%s)", provider.name, getattr(exc, "detail", exc))


# provider name -> provider type of the models listed by this request (GET /v1/models/ builds
# each Model from an LLMConfig, which has no field for the provider's type).
_listed_types: ContextVar[dict[str, str] | None] = ContextVar("ketta_listed_provider_types", default=None)


def listed_provider_types() -> dict[str, str]:
    types = _listed_types.get()
    if types is None:
        types = {}
        _listed_types.set(types)
    return types


def _llm_configs(provider, models: list) -> list[LLMConfig]:
    """The LLMConfigs of one provider's stored models (its type's class gives the endpoint and
    the default max tokens)."""
    typed = provider.cast_to_subtype()
    return [
        LLMConfig(
            model=model.name,
            model_endpoint_type=model.model_endpoint_type,
            model_endpoint=typed.base_url,
            context_window=model.max_context_window or constants.DEFAULT_CONTEXT_WINDOW,
            handle=model.handle,
            provider_name=provider.name,
            provider_category=ProviderCategory.byok,
            max_tokens=typed.get_default_max_output_tokens(model.name),
        )
        for model in models
    ]


async def list_llm_models_async(
    self: SyncServer,
    actor: User,
    provider_category: Optional[List[ProviderCategory]] = None,
    provider_name: Optional[str] = None,
    provider_type: Optional[ProviderType] = None,
) -> List[LLMConfig]:
    """The organization's LLM models from the database; stock code for the cases it special-cases."""
    if model_settings.auto_mode_enabled:
        return await patching.original(LIST_TARGET)(self, actor, provider_category, provider_name, provider_type)
    check_text(provider_name, "provider_name")
    if provider_category and ProviderCategory.byok not in provider_category:
        return []  # every Ketta provider is an organization's own ("byok"); there are no base providers
    async with db_registry.async_session() as session:
        query = organization_providers_query(actor, provider_name, provider_type)
        providers = [row.to_pydantic() for row in (await session.execute(query)).scalars()]
    if any(p.provider_type == ProviderType.chatgpt_oauth for p in providers):  # only migrated rows: backfills a fixed list
        return await patching.original(LIST_TARGET)(self, actor, provider_category, provider_name, provider_type)
    unsynced = [p for p in providers if p.last_synced is None]
    if unsynced:  # created during an outage (or before Ketta): list them now, each on its own
        await asyncio.gather(*(_first_sync(self, p, actor) for p in unsynced))
    if not providers:
        return []
    async with db_registry.async_session() as session:
        models_query = select(ProviderModelRow).where(
            ProviderModelRow.provider_id.in_([p.id for p in providers]),
            ProviderModelRow.model_type == "llm",
            ProviderModelRow.enabled.is_(True),
            ProviderModelRow.is_deleted.is_(False),
        )
        models = list((await session.execute(models_query)).scalars())
    models_of: dict[str, list] = {}
    for model in models:
        models_of.setdefault(model.provider_id, []).append(model)
    configs = []
    types = listed_provider_types()
    for provider in providers:
        if provider.id not in models_of:
            continue
        try:
            configs += _llm_configs(provider, models_of[provider.id])
        except Exception as exc:  # noqa: BLE001 - one broken provider must not fail every provider's listing
            log.warning("Provider '%s': its models are left out of the listing (%s: %s)", provider.name, type(exc).__name__, exc)
            continue
        types[provider.name] = provider.provider_type.value
    configs.sort(key=self._get_provider_sort_key)
    return configs


CREATE_AGENT = "letta.server.server:SyncServer.create_agent_async"
UPDATE_AGENT = "letta.server.server:SyncServer.update_agent_async"


async def create_agent_async(self: SyncServer, request, actor: User):
    """Letta's agent creation, after checking the agent's fallback handles (400 naming a bad one)."""
    from ketta.providers import fallback as provider_fallback

    if request.metadata and provider_fallback.METADATA_KEY in request.metadata:
        primary = request.llm_config
        if primary is None and request.model:
            primary = await provider_fallback.resolve(request.model, actor)
        await provider_fallback.validate(request.metadata, actor, getattr(primary, "handle", None) or request.model,
                                         getattr(primary, "model_endpoint_type", None))
    return await patching.original(CREATE_AGENT)(self, request, actor)


async def update_agent_async(self: SyncServer, agent_id: str, request, actor: User):
    """Letta's agent update, after checking fallback handles sent in ``metadata``."""
    from ketta.providers import fallback as provider_fallback

    if request.metadata and provider_fallback.METADATA_KEY in request.metadata:
        primary = request.llm_config
        if primary is None and request.model:
            primary = await provider_fallback.resolve(request.model, actor)
        if primary is None:
            primary = (await self.agent_manager.get_agent_by_id_async(agent_id=agent_id, actor=actor)).llm_config
        await provider_fallback.validate(request.metadata, actor, primary.handle, primary.model_endpoint_type)
    return await patching.original(UPDATE_AGENT)(self, agent_id, request, actor)


LLM_HANDLE = "letta.server.server:SyncServer.get_llm_config_from_handle_async"
EMBEDDING_HANDLE = "letta.server.server:SyncServer.get_embedding_config_from_handle_async"


async def get_llm_config_from_handle_async(self: SyncServer, actor: User, handle: str, context_window_limit: Optional[int] = None,
                                           max_tokens: Optional[int] = None, max_reasoning_tokens: Optional[int] = None,
                                           enable_reasoner: Optional[bool] = None) -> LLMConfig:
    """Letta's lookup; an unknown handle is a 404 naming it with close handles the actor can use."""
    from letta.errors import HandleNotFoundError

    from ketta.providers import handle_suggestions

    try:
        return await patching.original(LLM_HANDLE)(self, actor, handle, context_window_limit, max_tokens, max_reasoning_tokens,
                                                   enable_reasoner)
    except HandleNotFoundError:
        usable = await handle_suggestions.usable_handles(self, actor, "llm")
        raise handle_suggestions.not_found(handle, "llm", usable) from None


async def get_embedding_config_from_handle_async(self: SyncServer, actor: User, handle: str,
                                                 embedding_chunk_size: int = constants.DEFAULT_EMBEDDING_CHUNK_SIZE):
    """Letta's lookup; an unknown handle is a 404 (stock: 400) naming it with close handles the actor can use."""
    from letta.errors import LettaInvalidArgumentError

    from ketta.providers import handle_suggestions

    try:
        return await patching.original(EMBEDDING_HANDLE)(self, actor, handle, embedding_chunk_size)
    except LettaInvalidArgumentError as exc:
        if (exc.details or {}).get("argument_name") != "handle":
            raise
        usable = await handle_suggestions.usable_handles(self, actor, "embedding")
        raise handle_suggestions.not_found(handle, "embedding", usable) from None


PATCHES = [
    Patch(
        target=LIST_TARGET,
        replacement=list_llm_models_async,
        fingerprint="4af0d9465004f7fb",
        setting="unified_providers",
        why="GET /v1/models/ reads the organization's providers and models in two queries instead of ~3 per provider; "
        "a provider whose stored models cannot be listed is left out with a warning, as stock leaves out a BYOK provider.",
    ),
    Patch(
        target="letta.server.server:SyncServer._sync_provider_models_async",
        replacement=_sync_provider_models_async,
        fingerprint="e0fef70dabe394ab",
        setting="unified_providers",
        why="Start-up makes no calls to env-configured providers' APIs.",
    ),
    Patch(
        target=CREATE_AGENT,
        replacement=create_agent_async,
        fingerprint="36d02e286dbc24c7",
        setting="provider_fallback",
        why="metadata.ketta_fallback_handles must name existing handles of the agent's API format (400 otherwise).",
    ),
    Patch(
        target=UPDATE_AGENT,
        replacement=update_agent_async,
        fingerprint="60d8e08e9739ab5a",
        setting="provider_fallback",
        why="metadata.ketta_fallback_handles must name existing handles of the agent's API format (400 otherwise).",
    ),
    Patch(
        target=LLM_HANDLE,
        replacement=get_llm_config_from_handle_async,
        fingerprint="12a4e6cb9c9fde72",
        setting="unified_providers",
        why="A mistyped chat handle answers 404 naming it and the closest handles the caller can use (stock: 'must be one of []').",
    ),
    Patch(
        target=EMBEDDING_HANDLE,
        replacement=get_embedding_config_from_handle_async,
        fingerprint="4c10e262f1d0a389",
        setting="unified_providers",
        why="A mistyped embedding handle answers 404 (stock: 400) naming it and the closest handles the caller can use.",
    ),
]
