"""Patches of ``letta/services/provider_manager.py``: one kind of provider, edited safely, real deletes.

Stock Letta keeps "base" providers (synced from env vars, organization NULL) beside "BYOK"
ones, soft-deletes, restores soft-deleted rows on re-create, swallows model-listing failures
and stores a PATCHed key or base_url unchecked. Here every provider is an org-scoped row
created over REST; create and PATCH are validated first (name, type, text fields, duplicate,
the upstream accepting key and base_url) so a refused request changes nothing. A provider's
models are written in one transaction that holds the provider row, so a concurrent delete
either waits for it or makes it a 404, never a half-written provider.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

from fastapi import HTTPException
from sqlalchemy import delete, select, update

from ketta.providers.key_binding import KeyMustFollowOrigin, same_origin
from ketta.core.patching import Patch
from ketta.providers.store import (
    ProviderGone,
    insert_provider_row,
    list_upstream_models,
    lock_provider,
    plain_key,
    store_models,
    typed_for_listing,
    UPSTREAM_TIMEOUT_S,
)
from ketta.providers.rules import (
    ProviderNameTaken,
    UpstreamUnavailable,
    check_limit,
    check_text,
    classify_upstream_error,
)
from ketta.providers.validation import validate_check, validate_create, validate_update, validate_update_fields
from letta.orm.errors import NoResultFound
from letta.orm.provider import Provider as ProviderRow
from letta.orm.provider_model import ProviderModel as ProviderModelRow
from letta.orm.step import Step as StepRow
from letta.orm.step_metrics import StepMetrics as StepMetricsRow
from letta.schemas.enums import ProviderCategory
from letta.schemas.providers import Provider, ProviderCheck, ProviderCreate, ProviderUpdate
from letta.schemas.secret import Secret
from letta.schemas.user import User
from letta.server.db import db_registry
from letta.services.provider_manager import ProviderManager

log = logging.getLogger("ketta.providers")

TARGET = "letta.services.provider_manager:ProviderManager"

async def sync_provider_models_async(
    self: ProviderManager, provider: Provider, llm_models: list, embedding_models: list, organization_id: str | None = None
) -> None:
    """Replace the provider's models in one transaction (404 if the provider is deleted meanwhile).
    If a PATCH moved the provider to another base_url since these models were listed, that PATCH's
    own listing stands and this one is dropped."""
    async with db_registry.async_session() as session:
        row = await lock_provider(session, provider.id, organization_id)
        if row.base_url != provider.base_url:
            log.info("Provider '%s' moved to another base_url while its models were listed; keeping the newer listing", provider.name)
            return
        await store_models(session, provider, organization_id, llm_models, embedding_models)
        await session.commit()


async def create_provider_async(self: ProviderManager, request: ProviderCreate, actor: User, is_byok: bool = True) -> Provider:
    """Create an org-scoped provider after checking its input and listing its models.

    An unreachable upstream stores the provider without models and with ``last_synced`` NULL,
    so the first model listing tries again."""
    name = await validate_create(request)
    async with db_registry.async_session() as session:
        taken = await session.execute(
            select(ProviderRow.id).where(ProviderRow.name == name, ProviderRow.organization_id == actor.organization_id)
        )
        if taken.first():
            raise ProviderNameTaken(name)

    fields = request.model_dump(exclude={"api_key", "access_key", "name"})
    provider = Provider(**fields, name=name, provider_category=ProviderCategory.byok, organization_id=actor.organization_id)
    if request.api_key is not None:  # "" is stored as an encrypted empty key, as stock does
        provider.api_key_enc = await Secret.from_plaintext_async(request.api_key)
    if request.access_key is not None:
        provider.access_key_enc = await Secret.from_plaintext_async(request.access_key)
    provider.resolve_identifier()
    typed = provider.cast_to_subtype()
    if provider.base_url is None and typed.base_url:
        provider.base_url = typed.base_url  # persist the type's default endpoint, as stock does

    try:
        models = await list_upstream_models(await typed_for_listing(provider), name)
    except UpstreamUnavailable as exc:
        log.warning("Provider '%s' stored without models (%s); the first model listing or "
                    "PATCH /v1/providers/{id}/refresh lists them.", name, exc.detail)
        models = None

    async with db_registry.async_session() as session:
        row = await insert_provider_row(session, provider, actor.id)
        if models is not None:
            await store_models(session, provider, actor.organization_id, *models)
        await session.refresh(row)
        stored = row.to_pydantic()
        await session.commit()
    # Not read again: a concurrent DELETE may already have removed it, and create must not 404.
    return stored


async def update_provider_async(self: ProviderManager, provider_id: str, provider_update: ProviderUpdate, actor: User) -> Provider:
    """PATCH like create: fields not sent keep their values; a new key or base_url is checked
    against the upstream first (refused: 400, unreachable: 502/504, nothing changed) and the
    models are listed again. A new key replaces one that cannot be decrypted any more."""
    sent = provider_update.model_dump(exclude_unset=True, exclude_none=True)
    sent.pop("api_key_enc", None), sent.pop("access_key_enc", None)
    validate_update_fields(sent)
    async with db_registry.async_session() as session:
        row = (await session.execute(
            select(ProviderRow).where(ProviderRow.id == provider_id, ProviderRow.organization_id == actor.organization_id,
                                      ProviderRow.is_deleted.is_(False))
        )).scalar_one_or_none()
        if row is None:
            raise NoResultFound(f"Provider not found with id='{provider_id}'")
        current = row.to_pydantic()
    await validate_update(current, sent)

    changed = current.model_copy()
    if "api_key" in sent:
        changed.api_key_enc = await Secret.from_plaintext_async(sent["api_key"])
    if "access_key" in sent:
        changed.access_key_enc = await Secret.from_plaintext_async(sent["access_key"])
    for field in ("base_url", "region", "api_version"):
        if field in sent:
            setattr(changed, field, sent[field] or None)
    if "base_url" in sent and not changed.base_url:
        changed.base_url = changed.cast_to_subtype().base_url  # "" means the type's default endpoint
    moved = changed.base_url != current.base_url and not same_origin(changed.base_url, current.base_url)
    if moved and "api_key" not in sent and await plain_key(current, current.name):
        raise KeyMustFollowOrigin(current.name, current.base_url, changed.base_url)
    relist = any(getattr(changed, f) != getattr(current, f) for f in ("base_url", "region", "api_version")) or (
        "api_key" in sent or "access_key" in sent
    )
    models = await list_upstream_models(await typed_for_listing(changed), current.name) if relist else None

    async with db_registry.async_session() as session:
        locked = await lock_provider(session, provider_id, actor.organization_id)
        if "api_key" in sent:
            locked.api_key_enc = changed.api_key_enc.get_encrypted()
        if "access_key" in sent:
            locked.access_key_enc = changed.access_key_enc.get_encrypted()
        for field in ("base_url", "region", "api_version"):
            setattr(locked, field, getattr(changed, field))
        locked.set_updated_at()
        locked._set_created_and_updated_by_fields(actor.id)
        await session.flush()
        if models is not None:
            await store_models(session, changed, actor.organization_id, *models)
        await session.refresh(locked)
        updated = locked.to_pydantic()
        await session.commit()
    return updated


async def check_provider_api_key(self: ProviderManager, provider_check: ProviderCheck) -> None:
    """Check a key against its upstream: 200, 400 (bad input or other 4xx), 401/403 (refused, the
    upstream's words), 502 (unreachable or 5xx), 504 (no answer in time); never a 500."""
    await validate_check(provider_check)
    if not provider_check.api_key:
        raise HTTPException(status_code=400, detail="'api_key' is required to check a provider.")
    provider = Provider(
        name=provider_check.provider_type.value,
        provider_type=provider_check.provider_type,
        provider_category=ProviderCategory.byok,
        api_key_enc=await Secret.from_plaintext_async(provider_check.api_key),
        access_key_enc=await Secret.from_plaintext_async(provider_check.access_key) if provider_check.access_key else None,
        region=provider_check.region,
        base_url=provider_check.base_url or None,
        api_version=provider_check.api_version,
    ).cast_to_subtype()
    try:
        async with asyncio.timeout(UPSTREAM_TIMEOUT_S):
            await provider.check_api_key()
    except HTTPException as exc:
        if exc.status_code in (400, 401, 403, 502, 504):
            raise
        raise HTTPException(status_code=502 if exc.status_code >= 500 else 400, detail=exc.detail) from None
    except Exception as exc:  # noqa: BLE001 - classified below
        status, message = classify_upstream_error(exc)
        if isinstance(exc, ValueError) and status == 502 and not exc.__cause__:
            status, message = 400, str(exc)  # the provider's own input check ("No API key provided", ...)
        where = f" at {provider.base_url}" if provider.base_url else ""
        raise HTTPException(status_code=status, detail=f"{provider_check.provider_type.value}{where}: {message}") from None


async def _sync_default_models_for_provider(self: ProviderManager, provider: Provider, actor: User) -> None:
    """Refresh a provider's models; a refused key (400) or an unreachable API (502/504) is reported."""
    models = await list_upstream_models(await typed_for_listing(provider), provider.name)
    await self.sync_provider_models_async(provider, *models, organization_id=actor.organization_id)


LIST_TARGET = f"{TARGET}.list_providers_async"


async def list_providers_async(self: ProviderManager, actor: User, *args, **kwargs) -> list[Provider]:
    """The organization's providers, after checking limit (>= 1) and the text filters (422, not a database 500)."""
    from ketta.core import patching

    bound = inspect.signature(patching.original(LIST_TARGET)).bind(self, actor, *args, **kwargs)
    bound.apply_defaults()
    check_limit(bound.arguments.get("limit"))
    for field in ("name", "before", "after"):
        check_text(bound.arguments.get(field), field)
    return await patching.original(LIST_TARGET)(*bound.args, **bound.kwargs)


async def _hard_delete(provider_id: str, actor: User) -> None:
    async with db_registry.async_session() as session:
        try:
            await lock_provider(session, provider_id, actor.organization_id)  # waits for a model sync in flight
        except ProviderGone:
            raise NoResultFound(f"Provider not found with id='{provider_id}'") from None
        # Steps keep their provider_name for history; their FK (ON DELETE RESTRICT) must let go.
        await session.execute(update(StepRow).where(StepRow.provider_id == provider_id).values(provider_id=None))
        await session.execute(update(StepMetricsRow).where(StepMetricsRow.provider_id == provider_id).values(provider_id=None))
        await session.execute(delete(ProviderModelRow).where(ProviderModelRow.provider_id == provider_id))
        await session.execute(delete(ProviderRow).where(ProviderRow.id == provider_id))
        await session.commit()


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
        why="Validate name (trim, 1-100, no '/', no control characters), type and fields; 409 on duplicate; list models "
        "first: a refused key stores nothing; an outage stores the provider unsynced so the first listing retries.",
    ),
    Patch(
        target=f"{TARGET}.update_provider_async",
        replacement=update_provider_async,
        fingerprint="f698ddbd4bed646e",
        setting="unified_providers",
        why="PATCH checks a new key or base_url against the upstream before storing, keeps unsent fields, replaces an "
        "undecryptable key, and re-lists the models.",
    ),
    Patch(
        target=f"{TARGET}.check_provider_api_key",
        replacement=check_provider_api_key,
        fingerprint="399a7f8e82f5ef33",
        setting="unified_providers",
        why="POST /v1/providers/check answers 200/400/401/403/502/504 (bounded in time), never 500.",
    ),
    Patch(
        target=f"{TARGET}.sync_provider_models_async",
        replacement=sync_provider_models_async,
        fingerprint="2f3276aaa1b69245",
        setting="unified_providers",
        why="A provider's models are replaced in one transaction holding the provider row (delete-safe); models that "
        "disappeared are deleted, not flagged; last_synced is set only with a successful listing; a model listed twice is "
        "stored once, and a handle another provider of the organization holds goes to the provider it names (never an "
        "IntegrityError).",
    ),
    Patch(
        target=LIST_TARGET,
        replacement=list_providers_async,
        fingerprint="45474e07d537f9f4",
        setting="unified_providers",
        why="GET /v1/providers/ checks limit (>= 1) and its text filters (422 instead of a database 500).",
    ),
    Patch(
        target=f"{TARGET}._sync_default_models_for_provider",
        replacement=_sync_default_models_for_provider,
        fingerprint="a058427e56fa6f53",
        setting="unified_providers",
        why="Refresh reports a refused key (4xx) or an unreachable API (502/504) instead of swallowing it, and lists with "
        "the env fallback key when none is stored.",
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
