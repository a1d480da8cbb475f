"""A built Klui web app served on the API's own origin, behind a login page and a session cookie.

Klui's web build sends no token (its ``ApiClient()`` is built without one). With
``KETTA_WEB_APP_DIR`` (or ``ketta server --web-app DIR``) Ketta serves that directory at ``/``;
a visitor without a session gets ``/login``, a form taking the server token or a user token.
A good token sets ``ketta_session``: HttpOnly, SameSite=Strict, Secure behind https, expiring
after ``KETTA_WEB_SESSION_HOURS``. Klui's unchanged calls to its own origin then carry it.

Why the cookie is safe to accept:

- Only same-origin requests use it: ``Sec-Fetch-Site`` must be ``same-origin`` (``none``, a typed
  address, for GET/HEAD), and ``Origin``, when sent, must be this server's own. A page of
  another origin, even another port of this host, gets 401 (the cookie alone is no login).
  The login and logout forms check the same, so no other site can post them (CSRF).
- The cookie holds no token: ``v1.<kind>.<token id>.<expiry>.<signature>``, signed with a key
  derived from the server token and, for a user token, from that token's stored hash. Each
  request reads the user token's row: revoking the token (or deleting its user) ends every
  session made with it; a new server token ends the server token's sessions.
- Bearer tokens (SDKs, curl, a Klui build given a token) work as before; a request carrying
  one is judged by it alone.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import mimetypes
import time
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from ketta.security.auth import SESSION_PRINCIPAL as SESSION_SCOPE_KEY, Principal, presented_token

log = logging.getLogger("ketta.auth")

COOKIE = "ketta_session"
LOGIN_PATH, LOGOUT_PATH = "/login", "/logout"
# Never served from the web app directory: the API and its documents.
API_PREFIXES = ("/v1/", "/latest/", "/openapi.json", "/docs", "/redoc")
API_PATHS = frozenset({"/v1", "/latest"})
MAX_FORM_BYTES = 8192

_USER_TOKEN_HASH = (
    "SELECT t.token_hash, t.user_id FROM ketta_user_tokens t JOIN users u ON u.id = t.user_id AND NOT u.is_deleted "
    "WHERE t.id = :id AND t.revoked_at IS NULL"
)


def _key(server_token: str, binding: str) -> bytes:
    """The signing key of one token's sessions: changes when the server token or that token changes."""
    return hmac.new(server_token.encode(), f"ketta-web-session:{binding}".encode(), hashlib.sha256).digest()


def _sign(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def make_cookie_value(server_token: str, kind: str, token_id: str, binding: str, lifetime_s: int, now: float | None = None) -> str:
    """``v1.<kind>.<token id>.<expiry>.<signature>``; kind ``s`` (server token) or ``u`` (user token)."""
    expires = int((now or time.time()) + lifetime_s)
    payload = f"v1.{kind}.{token_id}.{expires}"
    return f"{payload}.{_sign(_key(server_token, binding), payload)}"


async def _user_token_binding(token_id: str) -> Optional[tuple[str, str]]:
    """(stored hash, user id) of a live user token, or None (revoked, unknown, user deleted)."""
    import sqlalchemy as sa

    from letta.server.db import db_registry

    async with db_registry.async_session() as session:
        row = (await session.execute(sa.text(_USER_TOKEN_HASH), {"id": token_id})).first()
    return (row.token_hash, row.user_id) if row is not None else None


async def session_principal(server_token: str, value: str, now: float | None = None) -> Optional[Principal]:
    """Who a cookie value logs in, or None (malformed, expired, bad signature, token revoked)."""
    parts = value.split(".")
    if len(parts) != 5 or parts[0] != "v1" or parts[1] not in ("s", "u") or not parts[3].isdigit():
        return None
    _, kind, token_id, expires, signature = parts
    if int(expires) < (now or time.time()):
        return None
    payload = ".".join(parts[:4])
    if kind == "s":
        key = _key(server_token, "server")
        principal = Principal()
    else:
        bound = await _user_token_binding(token_id)
        if bound is None:
            return None
        key = _key(server_token, bound[0])
        principal = Principal(user_id=bound[1], token_id=token_id)
    return principal if hmac.compare_digest(signature, _sign(key, payload)) else None


def _header(scope: Scope, name: bytes) -> Optional[str]:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def cookie_of(scope: Scope) -> Optional[str]:
    for key, value in scope["headers"]:
        if key.lower() == b"cookie":
            for part in value.decode("latin-1").split(";"):
                name, _, val = part.strip().partition("=")
                if name == COOKIE and val:
                    return val
    return None


def _is_https(scope: Scope) -> bool:
    return scope.get("scheme") == "https" or (_header(scope, b"x-forwarded-proto") or "").lower() == "https"


def same_origin(scope: Scope) -> bool:
    """Whether a browser says this request comes from a page of this very origin (see module doc)."""
    site = _header(scope, b"sec-fetch-site")
    safe = scope["method"] in ("GET", "HEAD")
    if site is not None and site != "same-origin" and not (site == "none" and safe):
        return False
    origin = _header(scope, b"origin")
    if origin is not None:
        host = _header(scope, b"host") or ""
        parsed = urlsplit(origin)
        scheme = "https" if _is_https(scope) else "http"
        if origin == "null" or parsed.netloc.lower() != host.lower() or (parsed.scheme != scheme and not _is_https(scope)):
            return False
    elif site is None and not safe:
        return False  # a state-changing request that says nothing about where it comes from
    return True


def _is_api_path(path: str) -> bool:
    return path in API_PATHS or path.startswith(API_PREFIXES)


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ketta: log in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:26rem;margin:4rem auto;padding:0 1rem}}
input{{width:100%;padding:.5rem;margin:.5rem 0 1rem;box-sizing:border-box}}button{{padding:.5rem 1.5rem}}
.error{{color:#b00020}}</style></head>
<body><h1>Log in to Ketta</h1>{message}
<form method="post" action="/login">
<label for="token">Server token or user token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button></form>
<p><small>The server token is printed by <code>ketta token</code> on the server; a user's token is made by
<code>ketta token create --user USER_ID</code>.</small></p></body></html>
"""


class WebLogin:
    """ASGI middleware (outside :class:`ketta.security.auth.TokenAuth`): the login/logout routes, the web
    app's files, and the session cookie turned into a principal for same-origin API calls."""

    def __init__(self, app: ASGIApp, server_token: str, web_app_dir: Optional[str], resolve_user_token, lifetime_s: int):
        self.app = app
        self._server_token = server_token
        self._root = Path(web_app_dir).resolve() if web_app_dir else None
        self._resolve_user_token = resolve_user_token
        self._lifetime_s = lifetime_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == LOGIN_PATH:
            await self._login(scope, receive, send)
            return
        if path == LOGOUT_PATH:
            await self._logout(scope, send)
            return
        cookie = cookie_of(scope)
        principal = None
        if cookie and presented_token(scope["headers"]) is None and same_origin(scope):
            principal = await session_principal(self._server_token, cookie)
        if self._root is not None and not _is_api_path(path):
            if principal is None:
                await _redirect(send, LOGIN_PATH)
                return
            await self._file(path, send)
            return
        if principal is not None:
            scope = {**scope, SESSION_SCOPE_KEY: principal}
        await self.app(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in ("GET", "HEAD"):
            await _html(send, 200, LOGIN_PAGE.format(message=""))
            return
        if scope["method"] != "POST":
            await _html(send, 405, LOGIN_PAGE.format(message=""))
            return
        if not same_origin(scope):
            await _html(send, 403, LOGIN_PAGE.format(message='<p class="error">Log in from this page, not from another site.</p>'))
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_FORM_BYTES or not message.get("more_body"):
                break
        token = (parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace")).get("token") or [""])[0].strip()
        value = await self._cookie_for(token)
        if value is None:
            await _html(send, 401, LOGIN_PAGE.format(message='<p class="error">That token is not valid (or was revoked).</p>'))
            return
        secure = "; Secure" if _is_https(scope) else ""
        cookie = f"{COOKIE}={value}; Path=/; Max-Age={self._lifetime_s}; HttpOnly; SameSite=Strict{secure}"
        await _redirect(send, "/", [(b"set-cookie", cookie.encode())])

    async def _cookie_for(self, token: str) -> Optional[str]:
        if not token:
            return None
        if hmac.compare_digest(token.encode(), self._server_token.encode()):
            return make_cookie_value(self._server_token, "s", "server", "server", self._lifetime_s)
        principal = await self._resolve_user_token(token) if self._resolve_user_token else None
        if principal is None or principal.token_id is None:
            return None
        bound = await _user_token_binding(principal.token_id)
        if bound is None:
            return None
        return make_cookie_value(self._server_token, "u", principal.token_id, bound[0], self._lifetime_s)

    async def _logout(self, scope: Scope, send: Send) -> None:
        if scope["method"] != "POST" or not same_origin(scope):
            await _html(send, 405 if scope["method"] != "POST" else 403, LOGIN_PAGE.format(message=""))
            return
        secure = "; Secure" if _is_https(scope) else ""
        cookie = f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}"
        await _redirect(send, LOGIN_PATH, [(b"set-cookie", cookie.encode())])

    async def _file(self, path: str, send: Send) -> None:
        assert self._root is not None
        target = (self._root / path.lstrip("/")).resolve()
        if not target.is_relative_to(self._root) or not target.is_file():
            target = self._root / "index.html"  # a single-page app's own routes
        if not target.is_file():
            await _html(send, 404, "<p>Not found</p>")
            return
        body = target.read_bytes()
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", kind.encode()), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-cache"), (b"x-content-type-options", b"nosniff")]})
        await send({"type": "http.response.body", "body": body})


async def _html(send: Send, status: int, page: str) -> None:
    body = page.encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), (b"x-frame-options", b"DENY"),
        (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")]})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, location: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": 303, "headers": [
        (b"location", html.escape(location).encode()), (b"content-length", b"0"), (b"cache-control", b"no-store"), *(extra or [])]})
    await send({"type": "http.response.body", "body": b""})


def install(app: "object", server_token: str, web_app_dir: Optional[str], resolve_user_token, lifetime_s: int) -> None:
    """Add :class:`WebLogin` right outside TokenAuth (call just before :func:`ketta.security.auth.install`)."""
    from starlette.middleware import Middleware

    if web_app_dir and not (Path(web_app_dir) / "index.html").is_file():
        raise ValueError(f"KETTA_WEB_APP_DIR={web_app_dir}: no index.html there (point it at Klui's build/web)")
    app.user_middleware.append(Middleware(WebLogin, server_token=server_token, web_app_dir=web_app_dir,
                                          resolve_user_token=resolve_user_token, lifetime_s=lifetime_s))
