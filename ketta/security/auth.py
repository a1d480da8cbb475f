"""Login on by default: every request but the health check carries a token.

Why it looks like this:

- Stock Letta is open unless ``LETTA_SERVER_SECURE=true``; then one password (random per
  process when unset, so each worker of ``--workers 2`` gets its own) is printed to stdout, and
  the actor is whatever ``user_id`` header the caller sends. Ketta stores every LLM key of its
  users, so it refuses anonymous requests unless the operator opts out by a setting whose name
  says it is insecure (``KETTA_INSECURE_NO_LOGIN``).
- The server token comes from ``LETTA_SERVER_PASSWORD`` (Letta's deployments keep working), else
  it is made once into ``KETTA_HOME/server_token`` (0600) by :func:`load_server_token`, which
  ``prepare()`` calls before workers start, so every worker reads the same file.
- It acts as any user through the ``user_id`` header (Letta's model). Per-user tokens
  (:mod:`ketta.security.user_tokens`) act as their user only: the middleware sets ``user_id`` from the
  token, answers 403 to another ``user_id`` and to admin routes.
- Letta also takes an identity from places other than that header: ``POST /v1/chat/completions``
  acts as the body's ``user``; other routes have ``user_id``/``organization_id`` query or body
  fields. For a user token every such field (:data:`IDENTITY_FIELDS`, top-level JSON or form
  body, query string) must name the token's own user (or organization), else 403: one identity
  per request. The server token may name anyone, as in Letta.
- Letta mounts every route twice (``/v1`` and ``/latest``): every prefix check here covers both.
- The middleware sits innermost (right before the router): CORS, outside it, answers
  preflights and adds its headers to a 401, so a browser sees the 401 rather than a CORS error.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Iterable, Optional
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ketta.security import tool_code
from ketta.core.settings import KettaSettings

log = logging.getLogger("ketta.auth")

TOKEN_FILE = "server_token"
# Open without a token: load balancers' health checks (GET/HEAD only).
PUBLIC_PATHS = frozenset({"/v1/health", "/v1/health/", "/latest/health", "/latest/health/"})
# Only the server token may call these (a user token gets 403).
ADMIN_PREFIXES = ("/v1/admin/", "/v1/ketta/", "/latest/admin/", "/latest/ketta/")
ADMIN_PATHS = frozenset({"/v1/admin", "/v1/ketta", "/latest/admin", "/latest/ketta"})
USER_ID_HEADER = b"user_id"
PRINCIPAL = "ketta.principal"  # scope key: who the request's token belongs to (routes that scope by caller read it)
SESSION_PRINCIPAL = "ketta.session_principal"  # scope key ketta.api.web_login sets for a valid same-origin session cookie
# Fields through which a Letta route may take whom it acts as (found by walking /openapi.json,
# see tests/test_identity_and_env_keys.py): field name -> what it names.
IDENTITY_FIELDS = {"user": "user", "user_id": "user", "actor_id": "user", "organization_id": "organization", "org_id": "organization"}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

UNAUTHORIZED_DETAIL = (
    "Missing or invalid token. Send 'Authorization: Bearer <token>' (or Letta's "
    "'X-BARE-PASSWORD: password <token>'); the server token is printed by `ketta token` on the "
    "server (or is LETTA_SERVER_PASSWORD), a user's token is made by `ketta token create --user USER_ID`."
)


class AuthConfigError(RuntimeError):
    """Contradictory login settings; the message says what to change."""


@dataclass(frozen=True)
class Principal:
    """Who a token belongs to: the server (admin, any user) or one user."""

    user_id: Optional[str] = None  # None: the server token
    token_id: Optional[str] = None
    organization_id: Optional[str] = None  # the user's organization

    @property
    def is_admin(self) -> bool:
        return self.user_id is None


# Resolves a presented token that is not the server token to its user (or None). Set by
# ketta.security.user_tokens when the app is built; a coroutine so it can ask the database.
UserTokenResolver = Callable[[str], Awaitable[Optional[Principal]]]


def login_required(settings: KettaSettings) -> bool:
    """False only when the operator turned login off; refuses contradictory settings."""
    if settings.insecure_no_login and os.environ.get("LETTA_SERVER_SECURE", "").lower() == "true":
        raise AuthConfigError(
            "LETTA_SERVER_SECURE=true asks for login but KETTA_INSECURE_NO_LOGIN/--insecure-no-login turns it off; "
            "unset one of them (Ketta's login is on by default, LETTA_SERVER_SECURE is not needed)."
        )
    return not settings.insecure_no_login


def neutralise_letta_secure_mode() -> None:
    """Letta's own password middleware must not run too (it prints its password to stdout)."""
    os.environ.pop("LETTA_SERVER_SECURE", None)


def _ensure_home(home: Path) -> None:
    """A new KETTA_HOME is private; an existing one is narrowed by ketta.core.home.secure_files at start."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)


def load_server_token(settings: KettaSettings) -> str:
    """LETTA_SERVER_PASSWORD if set; else KETTA_HOME/server_token, made once (0600) by whoever comes first."""
    from ketta.security import server_secrets

    from_env = server_secrets.get("LETTA_SERVER_PASSWORD")
    if from_env:
        return from_env
    home = settings.home_dir
    _ensure_home(home)
    path = home / TOKEN_FILE
    if not path.exists():
        # Written whole to a private temp file, then linked into place: a worker or a second
        # replica reading concurrently sees either no file or the complete token, and the
        # first link wins.
        tmp = home / f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    path.chmod(0o600)
    token = path.read_text().strip()
    if not token:
        raise AuthConfigError(f"{path} is empty: delete it to have a new server token made, or set LETTA_SERVER_PASSWORD.")
    return token


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def presented_token(headers: list[tuple[bytes, bytes]]) -> Optional[str]:
    """The token of ``Authorization: Bearer <t>`` or ``X-BARE-PASSWORD: password <t>``."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif lowered == b"x-bare-password":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "password" and token.strip():
                return token.strip()
    return None


def _is_admin_path(path: str) -> bool:
    return path in ADMIN_PATHS or path.startswith(ADMIN_PREFIXES)


def _is_cors_preflight(scope: Scope) -> bool:
    if scope["method"] != "OPTIONS":
        return False
    names = {name.lower() for name, _ in scope["headers"]}
    return b"origin" in names and b"access-control-request-method" in names


class TokenAuth:
    """ASGI middleware: 401 without a valid token; a user token acts as its user only."""

    def __init__(self, app: ASGIApp, server_token: str, resolve_user_token: Optional[UserTokenResolver] = None):
        self.app = app
        self._server_token = server_token.encode()
        self._resolve_user_token = resolve_user_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http" and (
            (scope["method"] in ("GET", "HEAD") and scope["path"] in PUBLIC_PATHS) or _is_cors_preflight(scope)
        ):
            await self.app(scope, receive, send)
            return
        principal = await self._authenticate(scope["headers"])
        if principal is None and presented_token(scope["headers"]) is None:
            principal = scope.get(SESSION_PRINCIPAL)  # a same-origin web session (ketta.api.web_login), set by no client
        if principal is None:
            await _deny(scope, send, 401, UNAUTHORIZED_DETAIL, {b"www-authenticate": b'Bearer realm="ketta"'})
            return
        scope[PRINCIPAL] = principal
        if principal.is_admin:
            await self.app(scope, receive, send)
            return
        if _is_admin_path(scope["path"]):
            await _deny(scope, send, 403, "This route needs the server token; a user token cannot call it.")
            return
        code_refusal = tool_code.user_refusal(scope.get("method", "GET"), scope["path"])
        if code_refusal is not None:
            await _deny(scope, send, 403, code_refusal)
            return
        claimed = {value.decode("latin-1") for name, value in scope["headers"] if name.lower() == USER_ID_HEADER}
        if claimed - {principal.user_id}:
            await _deny(scope, send, 403, f"This token acts as {principal.user_id} only; drop the user_id header or send that id.")
            return
        headers = [(n, v) for n, v in scope["headers"] if n.lower() != USER_ID_HEADER]
        headers.append((USER_ID_HEADER, principal.user_id.encode()))
        foreign = _foreign_identity(principal, parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        if foreign is None and scope["type"] == "http" and scope["method"] in BODY_METHODS:
            received = await _read_request(receive)
            foreign = _foreign_identity(principal, _body_fields(scope["headers"], received))
            receive = _replaying(received, receive)
        if foreign is not None:
            await _deny(scope, send, 403, f"This token acts as user {principal.user_id} (organization {principal.organization_id}) only; "
                        f"'{foreign}' names another identity: drop it or send that id.")
            return
        await self.app({**scope, "headers": headers}, receive, send)

    async def _authenticate(self, headers: list[tuple[bytes, bytes]]) -> Optional[Principal]:
        token = presented_token(headers)
        if token is None:
            return None
        if hmac.compare_digest(token.encode(), self._server_token):
            return Principal()
        if self._resolve_user_token is not None:
            return await self._resolve_user_token(token)
        return None


def _foreign_identity(principal: Principal, fields: Iterable[tuple[str, object]]) -> Optional[str]:
    """The first identity field that names someone other than the principal (its name), or None."""
    own = {"user": principal.user_id, "organization": principal.organization_id}
    for name, value in fields:
        kind = IDENTITY_FIELDS.get(name)
        if kind is not None and value not in (None, "") and value != own[kind]:
            return name
    return None


async def _read_request(receive: Receive) -> list[Message]:
    """Every message of the request body (up to a disconnect), to be replayed to the app."""
    received: list[Message] = []
    while True:
        message = await receive()
        received.append(message)
        if message["type"] != "http.request" or not message.get("more_body"):
            return received


def _replaying(received: list[Message], receive: Receive) -> Receive:
    pending = list(received)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def _body_fields(headers: list[tuple[bytes, bytes]], received: list[Message]) -> list[tuple[str, object]]:
    """Top-level fields of a JSON or form body, as FastAPI would read them (JSON also without a
    content type); nothing for multipart uploads and other bodies."""
    body = b"".join(m.get("body", b"") for m in received if m["type"] == "http.request")
    if not body:
        return []
    content_type = next((v.decode("latin-1").lower() for n, v in headers if n.lower() == b"content-type"), "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        return parse_qsl(body.decode("latin-1"), keep_blank_values=True)
    if content_type.startswith("multipart/"):
        return []
    try:
        payload = json.loads(body)
    except ValueError:
        return []
    return list(payload.items()) if isinstance(payload, dict) else []


async def _deny(scope: Scope, send: Send, status: int, detail: str, extra: dict[bytes, bytes] | None = None) -> None:
    if scope["type"] == "websocket":
        # Before accept, a close is answered with HTTP 403 by the ASGI server.
        await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
        return
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += list((extra or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install(app: "object", server_token: str, resolve_user_token: Optional[UserTokenResolver] = None) -> None:
    """Put :class:`TokenAuth` innermost in ``app``'s middleware (inside CORS, before the router)."""
    from starlette.middleware import Middleware

    if getattr(app, "middleware_stack", None) is not None:
        raise RuntimeError("TokenAuth must be installed before the app serves its first request")
    app.user_middleware.append(Middleware(TokenAuth, server_token=server_token, resolve_user_token=resolve_user_token))
