"""``/v1/ketta/tokens``: the server token's REST routes over per-user tokens (``ketta.security.user_tokens``).

Admin-only: the login middleware answers a user token 403 under ``/v1/ketta/``. The store (SQL,
hashing) lives in ``ketta.security.user_tokens``, shared with ``ketta token ...``; this module
only turns its answers and :class:`TokenError` statuses into HTTP.
"""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, HTTPException, Query

from ketta.security import user_tokens
from ketta.security.user_tokens import CreatedUserToken, TokenError, UserToken, UserTokenCreate


def router() -> APIRouter:
    api = APIRouter(prefix="/ketta/tokens", tags=["ketta tokens"])

    @api.post("/", response_model=CreatedUserToken, status_code=201, operation_id="ketta_create_user_token")
    async def create_user_token(request: UserTokenCreate) -> CreatedUserToken:
        """Make a token acting as one user; the response shows the token once (only its hash is kept)."""
        try:
            return await user_tokens.create(request.user_id, request.name)
        except TokenError as error:
            raise _http(error) from None

    @api.get("/", response_model=list[UserToken], operation_id="ketta_list_user_tokens")
    async def list_user_tokens(user_id: Optional[str] = Query(None, description="Only this user's tokens.")) -> list[UserToken]:
        """Every user token (revoked ones too), without values."""
        return await user_tokens.list_tokens(user_id)

    @api.delete("/{token_id}", response_model=UserToken, operation_id="ketta_revoke_user_token")
    async def revoke_user_token(token_id: str) -> UserToken:
        """Revoke a token: its next request answers 401. The row stays, with revoked_at."""
        try:
            return await user_tokens.revoke(token_id)
        except TokenError as error:
            raise _http(error) from None

    return api


def _http(error: TokenError) -> HTTPException:
    return HTTPException(status_code=error.status, detail=str(error))


def mount(app: Any) -> None:
    """Add the routes under /v1. FastAPI builds /openapi.json at its first request from every route
    then mounted (and again when routes change), so these are in it without merging anything."""
    app.include_router(router(), prefix="/v1")
