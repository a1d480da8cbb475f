"""The provider row behind an LLM call: its key and type, read at call time.

One indexed query (providers has UNIQUE (name, organization_id)) when a message starts: the
agent loop checks its provider, and the LLM calls of that request reuse the row (a context
variable). So a key changed over REST is used by the next message, in every worker, and a
deleted provider is noticed at once. Letta 0.16.8 has no synchronous session any more, yet
some of its clients ask for keys synchronously: those use a small psycopg2 engine of their own.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import lru_cache

import sqlalchemy as sa

from ketta.providers.rules import ProviderMissing, env_key_for

_ROW_QUERY = sa.text(
    "SELECT api_key_enc, provider_type, base_url FROM providers "
    "WHERE name = :name AND organization_id = :org AND NOT is_deleted LIMIT 1"
)


@dataclass(frozen=True)
class ProviderRow:
    """What an LLM call needs of its provider; ``found`` is False once it was deleted."""

    found: bool
    encrypted_key: str | None = None
    provider_type: str | None = None
    base_url: str | None = None
    decrypted: bool = False  # ``key`` holds the decrypted stored key (None: none stored)
    key: str | None = None


_MISSING = ProviderRow(found=False)

# (organization, provider name) -> row, for the rest of the current request.
_request_rows: ContextVar[dict[tuple[str, str], ProviderRow] | None] = ContextVar("ketta_provider_rows", default=None)


def _remember(provider_name: str, organization_id: str, row: ProviderRow) -> ProviderRow:
    rows = _request_rows.get()
    if rows is None:
        rows = {}
        _request_rows.set(rows)
    rows[(organization_id, provider_name)] = row
    return row


def _remembered(provider_name: str, organization_id: str) -> ProviderRow | None:
    rows = _request_rows.get()
    return rows.get((organization_id, provider_name)) if rows else None


def _as_row(result: sa.Row | None) -> ProviderRow:
    return ProviderRow(True, result[0], result[1], result[2]) if result is not None else _MISSING


@lru_cache(maxsize=1)
def _sync_engine(uri: str) -> sa.Engine:
    from ketta.db.database import sync_url

    return sa.create_engine(sync_url(uri), pool_size=2, max_overflow=4, pool_recycle=300)


def _database_uri() -> str:
    """This server's database (taken out of the environment once Letta has read it)."""
    from letta.settings import settings as letta_settings

    return letta_settings.letta_pg_uri_no_default or os.environ["LETTA_PG_URI"]


def _read_row_sync(provider_name: str, organization_id: str) -> ProviderRow:
    with _sync_engine(_database_uri()).connect() as conn:
        return _as_row(conn.execute(_ROW_QUERY, {"name": provider_name, "org": organization_id}).first())


async def provider_row_async(provider_name: str, organization_id: str) -> ProviderRow:
    """The provider's row, as read earlier in this request or now (then kept for the request)."""
    from letta.server.db import db_registry

    remembered = _remembered(provider_name, organization_id)
    if remembered is not None:
        return remembered
    async with db_registry.async_session() as session:
        row = _as_row((await session.execute(_ROW_QUERY, {"name": provider_name, "org": organization_id})).first())
    return _remember(provider_name, organization_id, row)


def remembered_row(provider_name: str, organization_id: str) -> ProviderRow | None:
    """The row read earlier in this request, None if it was not read yet (no I/O)."""
    return _remembered(provider_name, organization_id)


def _with_fallback(key: str | None, provider_name: str, row: ProviderRow) -> str | None:
    """The key to use (the operator's env key only as :func:`ketta.providers.rules.env_key_for` allows);
    remembered so it is redacted from errors and logs."""
    from ketta.security.redaction import remember_secret

    if not key:
        key = env_key_for(provider_name, row.provider_type, row.base_url)
    remember_secret(key)
    return key or None


async def lookup_async(provider_name: str, organization_id: str, handle: str | None = None) -> tuple[str | None, ProviderRow]:
    """(the provider's stored key (env fallback if none stored), its row); ProviderMissing if it
    was deleted. Decryption (100k PBKDF2 rounds the first time for a key) runs off the event loop."""
    from letta.schemas.secret import Secret

    row = await provider_row_async(provider_name, organization_id)
    if not row.found:
        raise ProviderMissing(provider_name, handle)
    if not row.decrypted:
        key = await Secret.from_encrypted(row.encrypted_key).get_plaintext_async() if row.encrypted_key else None
        row = _remember(provider_name, organization_id, replace(row, decrypted=True, key=key))
    return _with_fallback(row.key, provider_name, row), row


def lookup(provider_name: str, organization_id: str, handle: str | None = None) -> tuple[str | None, ProviderRow]:
    """Synchronous twin of :func:`lookup_async`, for Letta's synchronous client code."""
    from letta.schemas.secret import Secret

    row = _remembered(provider_name, organization_id) or _read_row_sync(provider_name, organization_id)
    if not row.found:
        raise ProviderMissing(provider_name, handle)
    if row.decrypted:  # looked up asynchronously earlier in this request: no decryption on the loop
        return _with_fallback(row.key, provider_name, row), row
    return _with_fallback(Secret.from_encrypted(row.encrypted_key).get_plaintext() if row.encrypted_key else None, provider_name, row), row


async def lookup_key_async(provider_name: str, organization_id: str, handle: str | None = None) -> str | None:
    """The provider's stored key (env fallback if none stored); ProviderMissing if it was deleted."""
    return (await lookup_async(provider_name, organization_id, handle))[0]


async def base_url_async(provider_name: str, organization_id: str) -> str | None:
    """The provider's base_url as stored now (a PATCHed base_url is used by the next call)."""
    return (await provider_row_async(provider_name, organization_id)).base_url


def base_url(provider_name: str, organization_id: str) -> str | None:
    """Synchronous twin of :func:`base_url_async`."""
    row = _remembered(provider_name, organization_id) or _read_row_sync(provider_name, organization_id)
    return row.base_url


def current_model_endpoint(provider_name: str, organization_id: str) -> str | None:
    """The endpoint an agent on this provider calls, from the base_url stored now (as Letta derives
    it when the agent is created: Ollama-style types add their OpenAI-compatible path)."""
    row = _remembered(provider_name, organization_id)
    if row is None or not row.found or not row.base_url or not row.provider_type:
        return None
    try:
        from letta.schemas.providers import Provider

        typed = Provider(name=provider_name, provider_type=row.provider_type, provider_category="byok", base_url=row.base_url).cast_to_subtype()
        return getattr(typed, "openai_compat_base_url", None) or typed.base_url
    except Exception:  # noqa: BLE001 - an unknown type keeps the endpoint the agent stored
        return None


async def provider_type_async(provider_name: str, organization_id: str) -> str | None:
    """The provider's type (e.g. "kimi"), None if no such provider."""
    return (await provider_row_async(provider_name, organization_id)).provider_type


async def require_provider_async(provider_name: str, organization_id: str, handle: str | None = None) -> None:
    """ProviderMissing (400) unless the organization has a provider of that name; the row is
    kept for the rest of this request's LLM calls."""
    if not (await provider_row_async(provider_name, organization_id)).found:
        raise ProviderMissing(provider_name, handle)
