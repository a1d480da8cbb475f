"""Patches of ``letta/services/provider_manager.py``: one kind of provider, real deletes.

Stock Letta keeps "base" providers (synced from env vars, organization NULL) beside "BYOK"
ones, soft-deletes, restores soft-deleted rows on re-create and swallows model-listing
failures. Here every provider is an org-scoped row created over REST, validated first
(name, duplicate, key accepted by the upstream) so a refused request stores nothing.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException
from sqlalchemy import delete, select, update

from ketta.patching import Patch
from ketta.providers import ProviderNameTaken, UpstreamRejectedKey, clean_provider_name, upstream_rejection
from letta.orm.errors import NoResultFound
from letta.orm.provider import Provider as ProviderRow
from letta.orm.provider_model import ProviderModel as ProviderModelRow
from letta.orm.step import Step as StepRow
from letta.orm.step_metrics import StepMetrics as StepMetricsRow
from letta.schemas.enums import ProviderCategory
from letta.schemas.providers import Provider, ProviderCreate
from letta.schemas.secret import Secret
from letta.schemas.user import User
from letta.server.db import db_registry
from letta.services.provider_manager import ProviderManager

log = logging.getLogger("ketta.providers")

TARGET = "letta.services.provider_manager:ProviderManager"


async def _list_models_or_reject(typed_provider: Provider, name: str, *, unreachable_ok: bool) -> tuple[list, list]:
    """Ask the upstream for its models; a refused key is the caller's error, an outage is not fatal
    when creating (the provider can be refreshed later)."""
    try:
        return await typed_provider.list_llm_models_async(), await typed_provider.list_embedding_models_async()
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below
        rejection = upstream_rejection(exc)
        if rejection:
            raise UpstreamRejectedKey(name, *rejection) from None
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        if not unreachable_ok:
            raise HTTPException(status_code=502, detail=f"Provider '{name}': could not list models from {typed_provider.base_url}: {reason}") from None
        log.warning("Provider '%s' stored without models: could not list them from %s (%s). "
                    "Refresh later with PATCH /v1/providers/{id}/refresh.", name, typed_provider.base_url, reason)
        return [], []


async def create_provider_async(self: ProviderManager, request: ProviderCreate, actor: User, is_byok: bool = True) -> Provider:
    """Create an org-scoped provider after checking its name and listing its models."""
    name = clean_provider_name(request.name)
    async with db_registry.async_session() as session:
        taken = await session.execute(
            select(ProviderRow.id).where(ProviderRow.name == name, ProviderRow.organization_id == actor.organization_id)
        )
        if taken.first():
            raise ProviderNameTaken(name)

    fields = request.model_dump(exclude={"api_key", "access_key", "name"})
    provider = Provider(**fields, name=name, provider_category=ProviderCategory.byok, organization_id=actor.organization_id)
    if request.api_key:
        provider.api_key_enc = await Secret.from_plaintext_async(request.api_key)
    if request.access_key:
        provider.access_key_enc = await Secret.from_plaintext_async(request.access_key)
    provider.resolve_identifier()
    typed = provider.cast_to_subtype()
    if provider.base_url is None and typed.base_url:
        provider.base_url = typed.base_url  # persist the type's default endpoint, as stock does

    llm_models, embedding_models = await _list_models_or_reject(typed, name, unreachable_ok=True)

    async with db_registry.async_session() as session:
        row = ProviderRow(**provider.model_dump(to_orm=True, exclude_unset=True))
        await row.create_async(session, actor=actor)
        stored = row.to_pydantic()
    try:
        await self.sync_provider_models_async(
            provider=stored, llm_models=llm_models, embedding_models=embedding_models, organization_id=actor.organization_id
        )
        await self.update_provider_last_synced_async(stored.id, actor=actor)
    except BaseException:
        await _hard_delete(stored.id, actor)  # nothing half-stored
        raise
    return await self.get_provider_async(stored.id, actor)


async def _sync_default_models_for_provider(self: ProviderManager, provider: Provider, actor: User) -> None:
    """Refresh a provider's models; a refused key or an unreachable API is reported, not swallowed."""
    llm_models, embedding_models = await _list_models_or_reject(provider.cast_to_subtype(), provider.name, unreachable_ok=False)
    await self.sync_provider_models_async(
        provider=provider, llm_models=llm_models, embedding_models=embedding_models, organization_id=actor.organization_id
    )
    await self.update_provider_last_synced_async(provider.id, actor=actor)


async def _hard_delete(provider_id: str, actor: User) -> None:
    async with db_registry.async_session() as session:
        found = await session.execute(
            select(ProviderRow.id).where(ProviderRow.id == provider_id, ProviderRow.organization_id == actor.organization_id)
        )
        if not found.first():
            raise NoResultFound(f"Provider not found with id='{provider_id}'")
        # Steps keep their provider_name for history; their FK (ON DELETE RESTRICT) must let go.
        await session.execute(update(StepRow).where(StepRow.provider_id == provider_id).values(provider_id=None))
        await session.execute(update(StepMetricsRow).where(StepMetricsRow.provider_id == provider_id).values(provider_id=None))
        await session.execute(delete(ProviderModelRow).where(ProviderModelRow.provider_id == provider_id))
        await session.execute(delete(ProviderRow).where(ProviderRow.id == provider_id))


async def delete_provider_by_id_async(self: ProviderManager, provider_id: str, actor: User) -> None:
    """Delete the provider and its models in one transaction; the name is free at once."""
    await _hard_delete(provider_id, actor)
    log.info("Deleted provider %s and its models", provider_id)


async def sync_base_providers(self: ProviderManager, base_providers: list, actor: User) -> None:
    """Nothing is synced from environment variables: providers are created over REST
    (or once with ``ketta providers import-env``)."""
    log.info("Ketta: not syncing %d env-configured base providers (unified providers)", len(base_providers))


PATCHES = [
    Patch(
        target=f"{TARGET}.create_provider_async",
        replacement=create_provider_async,
        fingerprint="77d57f92b44e7da4",
        setting="unified_providers",
        why="Validate name (trim, 1-100, no '/'), 409 on duplicate, list models first: a refused key stores nothing.",
    ),
    Patch(
        target=f"{TARGET}._sync_default_models_for_provider",
        replacement=_sync_default_models_for_provider,
        fingerprint="a058427e56fa6f53",
        setting="unified_providers",
        why="Refresh reports a refused key (4xx) or an unreachable API (502) instead of swallowing it.",
    ),
    Patch(
        target=f"{TARGET}.sync_base_providers",
        replacement=sync_base_providers,
        fingerprint="2cc5193f1cb571fd",
        setting="unified_providers",
        why="No base providers synced from env vars at start-up.",
    ),
    Patch(
        target=f"{TARGET}.delete_provider_by_id_async",
        replacement=delete_provider_by_id_async,
        fingerprint="18f66c2718d03fcc",
        setting="hard_delete",
        why="Hard delete of the provider and its provider_models rows in one transaction; 404 for unknown ids.",
    ),
]
