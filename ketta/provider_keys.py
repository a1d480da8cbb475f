"""The API key of an LLM call, read from its provider's row at call time.

One indexed query per call (providers has UNIQUE (name, organization_id)), so a key
changed over REST is used by the next message, in every worker. Letta 0.16.8 has no
synchronous session any more, yet some clients ask for keys synchronously: those use a
small psycopg2 engine of their own.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from functools import lru_cache

import sqlalchemy as sa

from ketta.providers import ProviderMissing, env_fallback_key
from ketta.settings import get_settings

_KEY_QUERY = sa.text("SELECT api_key_enc FROM providers WHERE name = :name AND organization_id = :org LIMIT 1")

# (organization, provider name) -> (found, encrypted key), read once per request: the agent loop
# checks its provider when it is built, and the LLM calls of that request reuse the row.
_request_rows: ContextVar[dict[tuple[str, str], tuple[bool, str | None]] | None] = ContextVar("ketta_provider_rows", default=None)


def _remember(provider_name: str, organization_id: str, row: tuple[bool, str | None]) -> tuple[bool, str | None]:
    rows = _request_rows.get()
    if rows is None:
        rows = {}
        _request_rows.set(rows)
    rows[(organization_id, provider_name)] = row
    return row


def _remembered(provider_name: str, organization_id: str) -> tuple[bool, str | None] | None:
    rows = _request_rows.get()
    return rows.get((organization_id, provider_name)) if rows else None


def _with_fallback(key: str | None, provider_name: str) -> str | None:
    if not key and get_settings().env_key_fallback:
        key = env_fallback_key(provider_name)
    return key or None


def _resolve(found: bool, encrypted: str | None, provider_name: str, handle: str | None) -> str | None:
    from letta.schemas.secret import Secret

    if not found:
        raise ProviderMissing(provider_name, handle)
    return _with_fallback(Secret.from_encrypted(encrypted).get_plaintext() if encrypted else None, provider_name)


async def _resolve_async(found: bool, encrypted: str | None, provider_name: str, handle: str | None) -> str | None:
    """As :func:`_resolve`, with the (once per key, 100k-round PBKDF2) decryption off the event loop."""
    from letta.schemas.secret import Secret

    if not found:
        raise ProviderMissing(provider_name, handle)
    return _with_fallback(await Secret.from_encrypted(encrypted).get_plaintext_async() if encrypted else None, provider_name)


async def lookup_key_async(provider_name: str, organization_id: str, handle: str | None = None) -> str | None:
    """The provider's stored key (env fallback if none stored); ProviderMissing if it was deleted."""
    from letta.server.db import db_registry

    remembered = _remembered(provider_name, organization_id)
    if remembered is None:
        async with db_registry.async_session() as session:
            row = (await session.execute(_KEY_QUERY, {"name": provider_name, "org": organization_id})).first()
        remembered = (row is not None, row[0] if row else None)
    return await _resolve_async(*remembered, provider_name, handle)


@lru_cache(maxsize=1)
def _sync_engine(uri: str) -> sa.Engine:
    from ketta.database import sync_url

    return sa.create_engine(sync_url(uri), pool_size=2, max_overflow=4, pool_recycle=300)


def _stored_key_sync(provider_name: str, organization_id: str) -> tuple[bool, str | None]:
    with _sync_engine(os.environ["LETTA_PG_URI"]).connect() as conn:
        row = conn.execute(_KEY_QUERY, {"name": provider_name, "org": organization_id}).first()
    return row is not None, (row[0] if row else None)


def lookup_key(provider_name: str, organization_id: str, handle: str | None = None) -> str | None:
    """Synchronous twin of :func:`lookup_key_async`, for Letta's synchronous client code."""
    return _resolve(*_stored_key_sync(provider_name, organization_id), provider_name, handle)


def require_provider(provider_name: str, organization_id: str, handle: str | None = None) -> None:
    """ProviderMissing (400) unless the organization has a provider of that name; the row is
    kept for the rest of this request's LLM calls."""
    found, _ = _remember(provider_name, organization_id, _stored_key_sync(provider_name, organization_id))
    if not found:
        raise ProviderMissing(provider_name, handle)
