"""Per-user tokens: a token acts as one user only (Letta 0.16.8 has no per-user API keys).

The table (migration 0006) keeps a SHA-256 of each token, never the token: it is printed once
when made. The same SQL serves the CLI (synchronous engine, ``ketta token create``) and the
server (Letta's async sessions: the middleware's lookup, and the admin REST routes of
``ketta.api.user_tokens`` under ``/v1/ketta/tokens``, which only the server token reaches).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime
from typing import Any, Optional

import sqlalchemy as sa
from pydantic import BaseModel, Field, computed_field

from ketta.security.auth import Principal

TOKEN_PREFIX = "kt_"  # tells a user token from a server token without a database round trip
LAST_USED_RESOLUTION_S = 60  # last_used_at is written at most once a minute per token

_COLUMNS = "id, user_id, organization_id, name, created_at, last_used_at, revoked_at"
_USER = sa.text("SELECT id, organization_id FROM users WHERE id = :user_id AND NOT is_deleted")
_INSERT = sa.text(
    f"INSERT INTO ketta_user_tokens (id, user_id, organization_id, name, token_hash) "
    f"VALUES (:id, :user_id, :organization_id, :name, :token_hash) RETURNING {_COLUMNS}"
)
_LIST = sa.text(
    f"SELECT {_COLUMNS} FROM ketta_user_tokens WHERE (CAST(:user_id AS varchar) IS NULL OR user_id = :user_id) "
    "ORDER BY created_at, id"
)
_REVOKE = sa.text(
    f"UPDATE ketta_user_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = :id RETURNING {_COLUMNS}"
)
_RESOLVE = sa.text(
    "SELECT t.id, t.user_id, u.organization_id, t.last_used_at < now() - make_interval(secs => :resolution) OR t.last_used_at IS NULL AS stale "
    "FROM ketta_user_tokens t JOIN users u ON u.id = t.user_id AND NOT u.is_deleted "
    "WHERE t.token_hash = :token_hash AND t.revoked_at IS NULL"
)
_TOUCH = sa.text("UPDATE ketta_user_tokens SET last_used_at = now() WHERE id = :id")


class TokenError(ValueError):
    """A request about tokens that cannot be done; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class UserToken(BaseModel):
    """A stored user token (never its value nor its hash)."""

    id: str
    user_id: str
    organization_id: str
    name: Optional[str] = None
    created_at: datetime
    last_used_at: Optional[datetime] = None
    revoked_at: Optional[datetime] = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class CreatedUserToken(UserToken):
    token: str = Field(..., description="The token, shown this once only: send it as 'Authorization: Bearer <token>'.")


class UserTokenCreate(BaseModel):
    user_id: str = Field(..., description="The user the token acts as (GET /v1/admin/users/ lists them).")
    name: Optional[str] = Field(None, max_length=100, description="A label, e.g. the device or app using it.")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _insert_params(user: Any, name: Optional[str], token: str) -> dict[str, Any]:
    if name is not None:
        name = name.strip() or None
    return {"id": f"ktok-{uuid.uuid4()}", "user_id": user.id, "organization_id": user.organization_id,
            "name": name, "token_hash": hash_token(token)}


def _unknown_user(user_id: str) -> TokenError:
    return TokenError(404, f"No user {user_id!r}; GET /v1/admin/users/ (server token) lists the users.")


def _unknown_token(token_id: str) -> TokenError:
    return TokenError(404, f"No token {token_id!r}; `ketta token list` or GET /v1/ketta/tokens lists them.")


# --- synchronous (CLI) ---------------------------------------------------------------------


def create_sync(conn: sa.Connection, user_id: str, name: Optional[str] = None) -> CreatedUserToken:
    user = conn.execute(_USER, {"user_id": user_id}).first()
    if user is None:
        raise _unknown_user(user_id)
    token = new_token()
    row = conn.execute(_INSERT, _insert_params(user, name, token)).mappings().one()
    return CreatedUserToken(**row, token=token)


def list_sync(conn: sa.Connection, user_id: Optional[str] = None) -> list[UserToken]:
    return [UserToken(**row) for row in conn.execute(_LIST, {"user_id": user_id}).mappings()]


def revoke_sync(conn: sa.Connection, token_id: str) -> UserToken:
    row = conn.execute(_REVOKE, {"id": token_id}).mappings().first()
    if row is None:
        raise _unknown_token(token_id)
    return UserToken(**row)


# --- asynchronous (server) -----------------------------------------------------------------


async def resolve(token: str) -> Optional[Principal]:
    """The user of a live token (not revoked, user not deleted), or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        row = (await session.execute(_RESOLVE, {"token_hash": hash_token(token), "resolution": LAST_USED_RESOLUTION_S})).first()
        if row is None:
            return None
        if row.stale:
            await session.execute(_TOUCH, {"id": row.id})
    return Principal(user_id=row.user_id, token_id=row.id, organization_id=row.organization_id)


async def create(user_id: str, name: Optional[str] = None) -> CreatedUserToken:
    """Make a token acting as ``user_id``; the result holds the token this once (only its hash is kept)."""
    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        user = (await session.execute(_USER, {"user_id": user_id})).first()
        if user is None:
            raise _unknown_user(user_id)
        token = new_token()
        row = (await session.execute(_INSERT, _insert_params(user, name, token))).mappings().one()
    return CreatedUserToken(**row, token=token)


async def list_tokens(user_id: Optional[str] = None) -> list[UserToken]:
    """Every user token (revoked ones too), or ``user_id``'s, without values."""
    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        rows = (await session.execute(_LIST, {"user_id": user_id})).mappings().all()
    return [UserToken(**row) for row in rows]


async def revoke(token_id: str) -> UserToken:
    """Revoke a token: its next request answers 401. The row stays, with revoked_at."""
    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        row = (await session.execute(_REVOKE, {"id": token_id})).mappings().first()
    if row is None:
        raise _unknown_token(token_id)
    return UserToken(**row)
