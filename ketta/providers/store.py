"""Where a provider's models come from and how its rows are written: the upstream listing, the
``provider_models`` rows, the new provider row, in the caller's transaction.

Used by the provider-manager patch (create, PATCH, refresh) and by pools (:mod:`ketta.providers.pools`),
so it lives in the domain, not in the patch module.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from fastapi import HTTPException
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from letta.orm.errors import NoResultFound
from letta.orm.provider import Provider as ProviderRow
from letta.orm.provider_model import ProviderModel as ProviderModelRow
from letta.schemas.embedding_config import EmbeddingConfig
from letta.schemas.llm_config import LLMConfig
from letta.schemas.provider_model import ProviderModel as ProviderModelSchema
from letta.schemas.providers import Provider
from letta.schemas.secret import Secret

from ketta.providers.rules import (
    ProviderNameTaken,
    UpstreamRejectedKey,
    UpstreamUnavailable,
    classify_upstream_error,
    env_key_for,
)
from ketta.security.redaction import remember_secret

log = logging.getLogger("ketta.providers")

# An upstream that neither answers nor fails must not hold a REST call (create, PATCH, check,
# a first listing) for the SDKs' default 600 s.
UPSTREAM_TIMEOUT_S = 20.0


class ProviderGone(NoResultFound):
    """The provider was deleted while this request worked on it (404)."""

    def __init__(self, provider_id: str):
        super().__init__(f"Provider not found with id='{provider_id}' (it was deleted)")


async def plain_key(provider: Provider, name: str) -> str | None:
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
    key = await plain_key(provider, provider.name)
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


async def lock_provider(session, provider_id: str, organization_id: str | None) -> ProviderRow:
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
    row = await lock_provider(session, provider.id, organization_id)
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
