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
from datetime import datetime, timezone

from fastapi import HTTPException
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError

from ketta.key_binding import KeyMustFollowOrigin, same_origin
from ketta.patching import Patch
from ketta.providers import (
    ProviderInputError,
    ProviderNameTaken,
    UpstreamRejectedKey,
    UpstreamUnavailable,
    check_creatable_type,
    check_limit,
    check_provider_fields,
    check_text,
    classify_upstream_error,
    clean_provider_name,
    env_key_for,
)
from ketta.settings import get_settings
from ketta.redaction import remember_secret
from ketta.url_guard import check_url_async
from letta.orm.errors import NoResultFound
from letta.orm.provider import Provider as ProviderRow
from letta.orm.provider_model import ProviderModel as ProviderModelRow
from letta.orm.step import Step as StepRow
from letta.orm.step_metrics import StepMetrics as StepMetricsRow
from letta.schemas.embedding_config import EmbeddingConfig
from letta.schemas.enums import ProviderCategory
from letta.schemas.llm_config import LLMConfig
from letta.schemas.provider_model import ProviderModel as ProviderModelSchema
from letta.schemas.providers import Provider, ProviderCheck, ProviderCreate, ProviderUpdate
from letta.schemas.secret import Secret
from letta.schemas.user import User
from letta.server.db import db_registry
from letta.services.provider_manager import ProviderManager

log = logging.getLogger("ketta.providers")

TARGET = "letta.services.provider_manager:ProviderManager"

# An upstream that neither answers nor fails must not hold a REST call (create, PATCH, check,
# a first listing) for the SDKs' default 600 s.
UPSTREAM_TIMEOUT_S = 20.0


class ProviderGone(NoResultFound):
    """The provider was deleted while this request worked on it (404)."""

    def __init__(self, provider_id: str):
        super().__init__(f"Provider not found with id='{provider_id}' (it was deleted)")


async def _plain_key(provider: Provider, name: str) -> str | None:
    """The stored key in plaintext; 400 if it cannot be decrypted (the encryption key changed)."""
    if not provider.api_key_enc:
        return None
    try:
        key = await provider.api_key_enc.get_plaintext_async()
    except Exception:  # noqa: BLE001 - any decryption failure means the same to the user
        raise HTTPException(
            status_code=400,
            detail=f"Provider '{name}': the stored API key cannot be decrypted (the encryption key changed). "
            "Send a new 'api_key' with PATCH /v1/providers/{id}.",
        ) from None
    remember_secret(key)  # redacted from errors and logs from now on
    return key


async def typed_for_listing(provider: Provider) -> Provider:
    """The provider as its type's class, with the env fallback key when none is stored
    (the key messages would use, so listing and calls agree)."""
    key = await _plain_key(provider, provider.name)
    typed = provider.cast_to_subtype()
    if not key:
        fallback = env_key_for(provider.name, provider.provider_type, typed.base_url)
        if fallback:
            typed.api_key_enc = await Secret.from_plaintext_async(fallback)
    return typed


async def list_upstream_models(typed: Provider, name: str) -> tuple[list[LLMConfig], list[EmbeddingConfig]]:
    """Ask the upstream for its models. Raises UpstreamRejectedKey (400) for a refused key,
    UpstreamUnavailable (502/504) for an outage, and lets a provider's own HTTPException through."""
    try:
        async with asyncio.timeout(UPSTREAM_TIMEOUT_S):
            # Both listings at once (most types ask the same /models endpoint twice): create and refresh wait once.
            llm_models, embedding_models = await asyncio.gather(typed.list_llm_models_async(), typed.list_embedding_models_async())
            return llm_models, embedding_models
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below
        status, message = classify_upstream_error(exc)
        if status in (401, 403):
            raise UpstreamRejectedKey(name, status, message) from None
        raise UpstreamUnavailable(name, 504 if status == 504 else 502, f"{message} (base_url {typed.base_url})") from None


def _model_rows(provider: Provider, organization_id: str | None, llm_models: list, embedding_models: list) -> dict[tuple[str, str], dict]:
    """(handle, model_type) -> the columns of its provider_models row.

    A listing may name one model twice (an upstream's /models with a repeated id, or two
    handles for one model name): the first entry of each handle and of each model name is kept,
    as the table allows one row per (handle, organization, type) and per (name, provider, type)."""
    rows: dict[tuple[str, str], dict] = {}
    names: set[tuple[str, str]] = set()

    def keep(handle: str, model_type: str, values: dict) -> None:
        if (handle, model_type) in rows or (values["name"], model_type) in names:
            log.info("Provider '%s': %s model '%s' (handle %s) listed twice; keeping the first", provider.name,
                     model_type, values["name"], handle)
            return
        rows[(handle, model_type)] = values
        names.add((values["name"], model_type))

    for config in llm_models:
        keep(config.handle, "llm", dict(
            name=config.model, display_name=config.model, model_endpoint_type=config.model_endpoint_type,
            max_context_window=config.context_window, embedding_dim=None,
            supports_token_streaming=config.model_endpoint_type in ("openai", "anthropic", "deepseek", "openrouter"),
        ))
    for config in embedding_models:
        keep(config.handle, "embedding", dict(
            name=config.embedding_model, display_name=config.embedding_model, model_endpoint_type=config.embedding_endpoint_type,
            max_context_window=None, embedding_dim=getattr(config, "embedding_dim", None), supports_token_streaming=None,
        ))
    return rows


# pg_advisory_xact_lock(MODELS_LOCK_SPACE, hashtext(organization)): model writes of one organization
# take turns, so two providers' syncs see each other's handles (the two-int key space is apart
# from the migration lock's bigint key).
MODELS_LOCK_SPACE = 0x6B6D6F64  # 'kmod'


async def _lock_organization_models(session, organization_id: str | None) -> None:
    await session.execute(text("SELECT pg_advisory_xact_lock(:space, hashtext(:org))"),
                          {"space": MODELS_LOCK_SPACE, "org": organization_id or ""})


async def _settle_taken_handles(session, provider: Provider, organization_id: str | None, wanted: dict[tuple[str, str], dict]) -> None:
    """Handles are unique per organization and model type. Ketta's are ``{provider name}/{model}``
    and names are unique per organization, so a wanted handle held by another provider's row is
    either this provider's by its name (that row was left from elsewhere, e.g. a database stock
    Letta wrote, or a listing that named another provider's model: it is deleted and the handle
    stored here) or another's (this listing names a model it does not own: the holder keeps it and
    it is not stored here). A row flagged deleted gives its handle up. Rows of no organization
    never collide (NULLs are distinct)."""
    if organization_id is None or not wanted:
        return
    taken = (await session.execute(select(ProviderModelRow).where(
        ProviderModelRow.organization_id == organization_id,
        ProviderModelRow.provider_id != provider.id,
        ProviderModelRow.handle.in_({handle for handle, _ in wanted}),
    ))).scalars()
    own = f"{provider.name}/"
    for row in taken:
        if (row.handle, row.model_type) not in wanted:
            continue
        if row.handle.startswith(own) or row.is_deleted:
            log.warning("Handle %s (%s) was held by provider %s; it is provider '%s''s by its name and moves to it",
                        row.handle, row.model_type, row.provider_id, provider.name)
            await session.delete(row)
        else:
            log.warning("Provider '%s' listed handle %s (%s), which provider %s holds; not stored for '%s'",
                        provider.name, row.handle, row.model_type, row.provider_id, provider.name)
            del wanted[(row.handle, row.model_type)]
    await session.flush()


async def _lock_provider(session, provider_id: str, organization_id: str | None) -> ProviderRow:
    """The provider row, locked until the transaction ends; ProviderGone if it no longer exists."""
    query = select(ProviderRow).where(ProviderRow.id == provider_id, ProviderRow.is_deleted.is_(False))
    if organization_id is not None:
        query = query.where(ProviderRow.organization_id == organization_id)
    row = (await session.execute(query.with_for_update())).scalar_one_or_none()
    if row is None:
        raise ProviderGone(provider_id)
    return row


async def store_models(session, provider: Provider, organization_id: str | None, llm_models: list, embedding_models: list) -> None:
    """Make the provider's provider_models rows exactly the listed models and set last_synced,
    inside ``session``'s transaction with the provider row locked. Models that disappeared are
    deleted, not flagged. A repeated model is stored once; a handle another provider of the
    organization holds is settled by the handle's name (see _settle_taken_handles), never an
    IntegrityError."""
    row = await _lock_provider(session, provider.id, organization_id)
    await _lock_organization_models(session, organization_id)
    wanted = _model_rows(provider, organization_id, llm_models, embedding_models)
    await _settle_taken_handles(session, provider, organization_id, wanted)
    existing = (await session.execute(select(ProviderModelRow).where(ProviderModelRow.provider_id == provider.id))).scalars()
    kept = []
    for model in existing:
        values = wanted.get((model.handle, model.model_type))
        if values is None or values["name"] != model.name or model.organization_id != organization_id:
            # a model renamed or moved to another organization scope is written anew (no name swaps)
            await session.delete(model)
        else:
            kept.append((model, wanted.pop((model.handle, model.model_type))))
    await session.flush()  # deletes first: a new row may take a deleted one's handle or name
    for model, values in kept:
        for column in ("display_name", "model_endpoint_type", "max_context_window", "embedding_dim"):
            setattr(model, column, values[column])
        model.is_deleted = False
    await session.flush()
    for (handle, model_type), values in wanted.items():
        schema = ProviderModelSchema(
            handle=handle, provider_id=provider.id, organization_id=organization_id, model_type=model_type,
            enabled=True, supports_tool_calling=True if model_type == "llm" else None, **values,
        )
        session.add(ProviderModelRow(**schema.model_dump(to_orm=True)))
    row.last_synced = datetime.now(timezone.utc)
    await session.flush()


async def sync_provider_models_async(
    self: ProviderManager, provider: Provider, llm_models: list, embedding_models: list, organization_id: str | None = None
) -> None:
    """Replace the provider's models in one transaction (404 if the provider is deleted meanwhile).
    If a PATCH moved the provider to another base_url since these models were listed, that PATCH's
    own listing stands and this one is dropped."""
    async with db_registry.async_session() as session:
        row = await _lock_provider(session, provider.id, organization_id)
        if row.base_url != provider.base_url:
            log.info("Provider '%s' moved to another base_url while its models were listed; keeping the newer listing", provider.name)
            return
        await store_models(session, provider, organization_id, llm_models, embedding_models)
        await session.commit()


# Types whose base_url is not a URL the server calls (Bedrock's is the literal "bedrock").
NON_URL_TYPES = ("bedrock",)


async def check_base_url(provider_type: object, base_url: str | None) -> None:
    """422 unless a given base_url is one the URL guard lets Ketta call with a key."""
    if not base_url or not get_settings().url_guard:
        return
    if getattr(provider_type, "value", provider_type) in NON_URL_TYPES:
        return
    await check_url_async(base_url, "base_url")


async def insert_provider_row(session, provider: Provider, actor_id: str) -> ProviderRow:
    """Add the provider's row in ``session``'s transaction; ProviderNameTaken (409) if the name
    was taken meanwhile (a concurrent create under the same name)."""
    row = ProviderRow(**provider.model_dump(to_orm=True, exclude_unset=True))
    row._set_created_and_updated_by_fields(actor_id)
    session.add(row)
    try:
        await session.flush()
    except IntegrityError:
        raise ProviderNameTaken(provider.name) from None
    return row


async def create_provider_async(self: ProviderManager, request: ProviderCreate, actor: User, is_byok: bool = True) -> Provider:
    """Create an org-scoped provider after checking its input and listing its models.

    An unreachable upstream stores the provider without models and with ``last_synced`` NULL,
    so the first model listing tries again."""
    name = clean_provider_name(request.name)
    check_creatable_type(request.provider_type)
    check_provider_fields(request.model_dump(include={"api_key", "access_key", "base_url", "region", "api_version"}))
    await check_base_url(request.provider_type, request.base_url)
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
    check_provider_fields(sent)
    async with db_registry.async_session() as session:
        row = (await session.execute(
            select(ProviderRow).where(ProviderRow.id == provider_id, ProviderRow.organization_id == actor.organization_id,
                                      ProviderRow.is_deleted.is_(False))
        )).scalar_one_or_none()
        if row is None:
            raise NoResultFound(f"Provider not found with id='{provider_id}'")
        current = row.to_pydantic()
    if str(getattr(current.provider_type, "value", current.provider_type)) == "pool":
        raise ProviderInputError(f"Provider '{current.name}' is a pool: it has no key or base_url of its own; "
                                 f"change its members with PATCH /v1/pools/{provider_id}.")
    await check_base_url(current.provider_type, sent.get("base_url"))

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
    if moved and "api_key" not in sent and await _plain_key(current, current.name):
        raise KeyMustFollowOrigin(current.name, current.base_url, changed.base_url)
    relist = any(getattr(changed, f) != getattr(current, f) for f in ("base_url", "region", "api_version")) or (
        "api_key" in sent or "access_key" in sent
    )
    models = await list_upstream_models(await typed_for_listing(changed), current.name) if relist else None

    async with db_registry.async_session() as session:
        locked = await _lock_provider(session, provider_id, actor.organization_id)
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
    check_creatable_type(provider_check.provider_type)
    check_provider_fields(provider_check.model_dump())
    await check_base_url(provider_check.provider_type, provider_check.base_url)
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
    from ketta import patching

    bound = inspect.signature(patching.original(LIST_TARGET)).bind(self, actor, *args, **kwargs)
    bound.apply_defaults()
    check_limit(bound.arguments.get("limit"))
    for field in ("name", "before", "after"):
        check_text(bound.arguments.get(field), field)
    return await patching.original(LIST_TARGET)(*bound.args, **bound.kwargs)


async def _hard_delete(provider_id: str, actor: User) -> None:
    async with db_registry.async_session() as session:
        try:
            await _lock_provider(session, provider_id, actor.organization_id)  # waits for a model sync in flight
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
