"""No API key leaves the server: not in a provider response, an error, or a log line.

Stock Letta returns ``api_key_enc`` in every provider response: the plaintext key when no
encryption key is set, the ciphertext otherwise. Letta's route functions are bound when
its app is built, so the filter sits in front of them as ASGI middleware.

Errors and logs can carry a key too: an upstream that echoes the request, a header value
httpx refuses (``Illegal header value b'Bearer sk-...'``), a traceback. Every key Ketta
handles (stored keys when decrypted or received, ``*_API_KEY`` env vars) is remembered in
this process, and :func:`scrub` replaces them and anything shaped like a credential
(``Bearer ...``, ``sk-...``, ``x-api-key: ...``, ``?key=...``) with ``[redacted]``. Scrubbed:
every log record (message, arguments, traceback, extras) of every logger, every error
response body (status >= 400, also Letta's catch-all 500 handler), and remembered keys in any
response, streamed ones included.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import traceback
from collections import OrderedDict
from typing import Any, Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECRET_FIELDS = ("api_key", "api_key_enc", "access_key", "access_key_enc")
# Letta mounts every route under /v1 and again under /latest: both are filtered.
PROVIDERS_PREFIXES = ("/v1/providers", "/latest/providers")


def strip_secrets(payload: Any) -> Any:
    """Null every secret field of a provider (or a list of them)."""
    if isinstance(payload, list):
        return [strip_secrets(item) for item in payload]
    if isinstance(payload, dict):
        return {k: (None if k in SECRET_FIELDS else v) for k, v in payload.items()}
    return payload


class ProviderSecretsFilter:
    """Rewrites JSON responses under /v1/providers (and /latest/providers) so they never contain key material."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROVIDERS_PREFIXES):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def buffer(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            if dict(start["headers"]).get(b"content-type", b"").startswith(b"application/json") and body:
                try:
                    body = json.dumps(strip_secrets(json.loads(body))).encode()
                except ValueError:
                    pass
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffer)


# --- scrubbing keys out of text --------------------------------------------------------------

REDACTED = "[redacted]"
MIN_KEY_LENGTH = 8  # shorter values would redact ordinary words
MAX_REMEMBERED = 4096

# Credential-shaped text, whoever's key it is. After "Authorization:" the scheme word (Bearer,
# Basic) is kept and the credential after it redacted, so "Authorization: Bearer <token>" in
# Ketta's own hints stays readable.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)(\s+|\\x20|%20)[A-Za-z0-9._~+/=\\\-]{4,}"), r"\1\2" + REDACTED),
    (re.compile(r"(?i)\b(password)(\s+)[A-Za-z0-9._~+/=\-]{4,}"), r"\1\2" + REDACTED),  # X-BARE-PASSWORD: password <token>
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), "sk-" + REDACTED),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"), REDACTED),
    (re.compile(r"(?i)((?:x-api-key|x-goog-api-key|api[_-]?key|access[_-]?key|authorization)['\"]?\s*[:=]\s*(?!(?:bearer|basic)\b)b?['\"]?)([^\s'\",}{)\]]{4,})"),
     r"\1" + REDACTED),
    (re.compile(r"(?i)([?&](?:key|api_key|apikey|access_token|token)=)[^&\s'\"]+"), r"\1" + REDACTED),
)

# Stricter still, for text that is stored and shown again (provider health's last errors): any
# ``xx-`` key prefix, ``token``/``secret``/``password`` assignments, credentials in a URL.
_STRICT_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\b(sk|pk|rk|ak)-[A-Za-z0-9_-]{6,}"),
    re.compile(r"(?i)((?:api[_-]?key|token|secret|password|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{4,}"),
    re.compile(r"(?i)(://[^:/@\s]+:)[^@\s]+@"),
)

_lock = threading.Lock()
_known: "OrderedDict[str, None]" = OrderedDict()
_known_pattern: re.Pattern[str] | None = None


def remember_secret(value: object) -> None:
    """Redact ``value`` (a key this process handles) wherever it appears from now on."""
    global _known_pattern
    if not isinstance(value, str) or len(value.strip()) < MIN_KEY_LENGTH:
        return
    escaped = value.encode("unicode_escape").decode("ascii")  # as it shows in a bytes repr
    variants = {value, value.strip(), escaped} | {part for part in re.split(r"[\x00-\x1f\x7f\s]+", value) if len(part) >= MIN_KEY_LENGTH}
    with _lock:
        changed = False
        for variant in variants:
            if variant not in _known:
                _known[variant] = None
                changed = True
            _known.move_to_end(variant)
        while len(_known) > MAX_REMEMBERED:
            _known.popitem(last=False)
            changed = True
        if changed:
            ordered = sorted(_known, key=len, reverse=True)
            _known_pattern = re.compile("|".join(re.escape(k) for k in ordered)) if ordered else None


def remember_env_keys() -> None:
    """Keys from the environment (``OPENAI_API_KEY``, a provider's env fallback, ...)."""
    from ketta.security import server_secrets

    for name, value in {**server_secrets.taken(), **os.environ}.items():
        if name.upper().endswith(("_API_KEY", "_ACCESS_KEY", "_SECRET_KEY")):
            remember_secret(value)


def scrub_known(text: str) -> str:
    """``text`` without any remembered key."""
    pattern = _known_pattern
    return pattern.sub(REDACTED, text) if pattern is not None and text else text


def scrub(text: str, *, strict: bool = False) -> str:
    """``text`` without remembered keys or credential-shaped tokens; ``strict`` also removes any
    token/secret/password assignment and URL credentials (text stored to be shown again)."""
    if not text:
        return text
    text = scrub_known(text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    if strict:
        for strict_pattern in _STRICT_PATTERNS:
            text = strict_pattern.sub(lambda m: (m.group(1) if m.lastindex else "") + REDACTED, text)
    return text


def scrub_bytes(data: bytes, *, patterns: bool = True) -> bytes:
    if not data:
        return data
    text = data.decode("utf-8", errors="surrogateescape")
    cleaned = scrub(text) if patterns else scrub_known(text)
    return data if cleaned == text else cleaned.encode("utf-8", errors="surrogateescape")


# --- logs ------------------------------------------------------------------------------------

_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """Scrub a log record in place: message with its arguments, traceback, string extras."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is the formatter's to report
        message = None
    if message is not None:
        cleaned = scrub(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
    if record.exc_info and record.exc_info[1] is not None:
        rendered = "".join(traceback.format_exception(*record.exc_info))
        cleaned = scrub(rendered)
        if cleaned != rendered:  # formatters that render exc_info themselves would show the key
            record.exc_info, record.exc_text = None, cleaned.rstrip("\n")
    elif record.exc_text:
        record.exc_text = scrub(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
    for name, value in list(vars(record).items()):
        if name not in _RECORD_FIELDS:
            if isinstance(value, str):
                setattr(record, name, scrub(value))
            elif isinstance(value, (dict, list, tuple)):
                dumped = json.dumps(value, default=str)
                if scrub(dumped) != dumped:
                    setattr(record, name, json.loads(scrub(dumped)))
    return record


class KeyScrubbingFilter(logging.Filter):
    """A handler filter: whatever reaches the handler is scrubbed (extras set after the record was made included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


_SCRUBBER = KeyScrubbingFilter()
_installed = False


def install_log_scrubbing() -> None:
    """Scrub every log record when it is made, and again in every handler known now.

    The record factory covers every logger, and handlers configured later; the handler filter
    also covers ``extra`` fields, which are set after the factory ran.
    """
    global _installed
    remember_env_keys()
    if not _installed:
        make_record = logging.getLogRecordFactory()

        def scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return scrub_record(make_record(*args, **kwargs))

        logging.setLogRecordFactory(scrubbed_record)
        _installed = True
    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if _SCRUBBER not in handler.filters:
                handler.addFilter(_SCRUBBER)


# --- responses -------------------------------------------------------------------------------


MAX_BUFFERED = 8 * 1024 * 1024  # a sized body larger than this (a file) passes untouched
TEXT_TYPES = (b"application/json", b"text/", b"application/problem+json", b"application/x-ndjson")


class ErrorScrubber:
    """ASGI middleware: error bodies (status >= 400) lose keys and credential-shaped tokens;
    every other text body loses remembered keys. A sized body (content-length; also what
    Starlette's BaseHTTPMiddleware re-streams in parts) is buffered, scrubbed and re-sized;
    an unsized one (server-sent events) is scrubbed chunk by chunk. Binary bodies pass."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        status = 200
        mode = "first"  # then "buffer", "stream" (scrub each chunk) or "raw" (pass through)
        chunks: list[bytes] = []

        async def flush_buffered(final: Message) -> None:
            body = scrub_bytes(b"".join(chunks), patterns=status >= 400)
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
            await send({**final, "body": body, "more_body": False})

        async def scrubbing(message: Message) -> None:
            nonlocal start, status, mode
            if message["type"] == "http.response.start":
                start, status = message, message["status"]
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body = message.get("body", b"")
            if mode == "first":
                headers = dict((k.lower(), v) for k, v in start["headers"])
                content_type = headers.get(b"content-type", b"")
                length = headers.get(b"content-length")
                if content_type and not content_type.startswith(TEXT_TYPES):
                    mode = "raw"
                elif length is not None:
                    mode = "buffer" if int(length) <= MAX_BUFFERED else "raw"
                else:
                    mode = "stream"
                if mode != "buffer":
                    await send(start)
            if mode == "raw":
                await send(message)
            elif mode == "stream":
                await send({**message, "body": scrub_bytes(body, patterns=status >= 400)})
            else:
                chunks.append(body)
                if not message.get("more_body"):
                    await flush_buffered(message)

        await self.app(scope, receive, scrubbing)


def scrubbing_handler(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wrap an exception handler (Letta's catch-all runs outside the middleware stack)."""

    async def handle(request: Any, exc: Exception) -> Any:
        response = await handler(request, exc)
        body = getattr(response, "body", None)
        if isinstance(body, bytes):
            cleaned = scrub_bytes(body)
            if cleaned != body:
                response.body = cleaned
                response.headers["content-length"] = str(len(cleaned))
        return response

    return handle


def install_response_scrubbing(app: Any) -> None:
    """The middleware, and Letta's catch-all exception handlers wrapped."""
    app.add_middleware(ErrorScrubber)
    for key in (Exception, 500):
        if key in app.exception_handlers:
            app.exception_handlers[key] = scrubbing_handler(app.exception_handlers[key])
