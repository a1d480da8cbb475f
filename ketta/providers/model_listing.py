"""``GET /v1/models/`` lists a provider's embedding models too, as stock Letta's listing does.

Klui's agent screen fills its embedding picker from ``GET /v1/models/?provider_name=NAME``
(the same list as its chat picker) and sends the picked entry's ``handle`` as ``embedding``.
Stock Letta offers embedding ids there only by accident (every id an OpenAI-compatible
``/models`` returns is stored as a chat model, so they come back as ``model_type: "llm"`` and
can be picked as a chat model too). Ketta stores them as embedding models only; this listing
adds them after the chat models, marked ``model_type: "embedding"`` with the fields of
``GET /v1/models/embedding`` (``handle``, ``name``, ``display_name``, ``provider_name``,
``provider_type``, ``embedding_*``), so Klui's pickers offer them and a chat handle never
resolves to one (``model: <embedding handle>`` is refused with a 4xx naming the field).

Letta's route object keeps the function it was declared with, so the app factory puts a route
of its own in front of it (``/v1`` and its ``/latest`` twin).
"""



import logging
from typing import Any

from fastapi import Depends, FastAPI, Query

log = logging.getLogger("ketta.providers")

LISTING_PATHS = ("/v1/models/", "/latest/models/")


def organization_providers_query(actor: Any, provider_name: str | None = None, provider_type: Any = None) -> Any:
    """The SELECT of an organization's live provider rows, optionally by name and type: the one query
    both model listings (chat and embedding) start from, so their scoping cannot drift apart."""
    from letta.orm.provider import Provider as ProviderRow
    from sqlalchemy import select

    query = select(ProviderRow).where(ProviderRow.organization_id == actor.organization_id, ProviderRow.is_deleted.is_(False))
    if provider_name:
        query = query.where(ProviderRow.name == provider_name)
    if provider_type:
        query = query.where(ProviderRow.provider_type == provider_type.value)
    return query


async def embedding_models(actor: Any, provider_category: list | None = None, provider_name: str | None = None,
                           provider_type: Any = None) -> list:
    """The organization's enabled embedding models as ``EmbeddingModel`` entries (filters as for chat models)."""
    from letta import constants
    from letta.orm.provider_model import ProviderModel as ProviderModelRow
    from letta.schemas.embedding_config import EmbeddingConfig
    from letta.schemas.enums import ProviderCategory
    from letta.schemas.model import EmbeddingModel
    from letta.server.db import db_registry
    from sqlalchemy import select

    if provider_category and ProviderCategory.byok not in provider_category:
        return []  # every Ketta provider is an organization's own
    async with db_registry.async_session() as session:
        query = organization_providers_query(actor, provider_name, provider_type)
        providers = {row.id: row.to_pydantic() for row in (await session.execute(query)).scalars()}
        if not providers:
            return []
        rows = (await session.execute(select(ProviderModelRow).where(
            ProviderModelRow.provider_id.in_(list(providers)),
            ProviderModelRow.model_type == "embedding",
            ProviderModelRow.enabled.is_(True),
            ProviderModelRow.is_deleted.is_(False),
        ).order_by(ProviderModelRow.name))).scalars().all()
    listed = []
    for row in rows:
        provider = providers[row.provider_id]
        try:
            endpoint = provider.cast_to_subtype().base_url
            model = EmbeddingModel.from_embedding_config(EmbeddingConfig(
                embedding_model=row.name,
                embedding_endpoint_type=row.model_endpoint_type,
                embedding_endpoint=endpoint,
                embedding_dim=row.embedding_dim or 1536,
                embedding_chunk_size=constants.DEFAULT_EMBEDDING_CHUNK_SIZE,
                handle=row.handle,
            ))
        except Exception as exc:  # noqa: BLE001 - one broken provider must not fail the listing
            log.warning("Provider '%s': its embedding models are left out of the listing (%s)", provider.name, type(exc).__name__)
            continue
        model.provider_name = provider.name
        model.provider_type = provider.provider_type
        listed.append(model)
    return listed


def _endpoint():
    from letta.schemas.enums import ProviderCategory, ProviderType
    from letta.schemas.model import Model
    from letta.server.rest_api.dependencies import (
        HeaderParams,
        get_headers,
        get_letta_server,
    )

    async def list_models(
        provider_category: list[ProviderCategory] | None = Query(None),
        provider_name: str | None = Query(None),
        provider_type: ProviderType | None = Query(None),
        server: Any = Depends(get_letta_server),
        headers: HeaderParams = Depends(get_headers),
    ) -> list:
        """List the chat models, then the embedding models (``model_type`` tells them apart)."""
        actor = await server.user_manager.get_actor_or_default_async(actor_id=headers.actor_id)
        chat = [Model.from_llm_config(config) for config in await server.list_llm_models_async(
            provider_category=provider_category, provider_name=provider_name, provider_type=provider_type, actor=actor)]
        chat_handles = {model.handle for model in chat}
        embeddings = await embedding_models(actor, provider_category, provider_name, provider_type)
        return chat + [model for model in embeddings if model.handle not in chat_handles]

    return list_models


def install(app: FastAPI) -> int:
    """Put :func:`list_models` in front of Letta's ``GET /v1/models/`` (and ``/latest``): the first
    matching route answers. FastAPI keeps included routers as branches, so Letta's route stays
    (and documents the endpoint in /openapi.json) but is never reached. Returns how many were added."""
    from fastapi.routing import APIRoute

    endpoint = _endpoint()
    for path in reversed(LISTING_PATHS):
        app.router.routes.insert(0, APIRoute(
            # no response_model: a Union of the two would run Model's dict-only validators on an
            # EmbeddingModel; each entry is already one of Letta's own schemas
            path, endpoint, methods=["GET"], response_model=None,
            operation_id=f"ketta_list_models_{path.strip('/').split('/')[0]}", name="list_models", include_in_schema=False,
        ))
    return len(LISTING_PATHS)
