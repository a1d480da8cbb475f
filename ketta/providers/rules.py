"""Provider rules: names, field checks, the env fallback key, how an upstream's refusal is classified.

Kept apart from the patch modules so the rules read in one place and tests can use them; the
key lookup of a call is :mod:`ketta.providers.keys`.
"""

from __future__ import annotations

import re

from fastapi import HTTPException

MAX_NAME_LENGTH = 100


class ProviderInputError(HTTPException):
    """A provider request that cannot be stored as given (422, message says what to fix)."""

    def __init__(self, message: str):
        super().__init__(status_code=422, detail=message)


class ProviderNameTaken(HTTPException):
    def __init__(self, name: str):
        super().__init__(status_code=409, detail=f"A provider named '{name}' already exists. Choose another name or delete that provider first.")


class UpstreamRejectedKey(HTTPException):
    """The provider's API refused the key: nothing is stored, the caller sees the upstream's words."""

    def __init__(self, name: str, status: int, message: str):
        super().__init__(
            status_code=400,
            detail=f"Provider '{name}': the API rejected the key (HTTP {status}): {message}. Nothing was stored; check the key and base_url.",
        )


class ProviderMissing(HTTPException):
    """An agent's model points at a provider that no longer exists."""

    def __init__(self, provider_name: str, handle: str | None):
        model = f" for model '{handle}'" if handle else ""
        super().__init__(
            status_code=400,
            detail=(
                f"Provider '{provider_name}'{model} does not exist (it was deleted). "
                f"Create a provider named '{provider_name}' again, or change the agent's model."
            ),
        )


def clean_provider_name(name: str | None) -> str:
    """Trimmed name, 1–100 characters, no '/' (a handle is '{provider name}/{model}')."""
    if name is not None and not isinstance(name, str):
        raise ProviderInputError("Provider 'name' must be a string.")
    cleaned = (name or "").strip()
    if not cleaned:
        raise ProviderInputError("Provider 'name' must not be empty.")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise ProviderInputError(f"Provider 'name' must be at most {MAX_NAME_LENGTH} characters (got {len(cleaned)}).")
    bad = bad_character(cleaned)
    if bad:
        raise ProviderInputError(f"Provider 'name' must not contain {bad}; remove it.")
    if "/" in cleaned:
        raise ProviderInputError(f"Provider 'name' must not contain '/' (handles are '{{provider name}}/{{model}}'): '{cleaned}'.")
    return cleaned


def check_secret_text(value: str | None, field: str) -> None:
    """422 unless a key is printable ASCII without spaces: a control character (CR, LF, NUL...)
    makes an invalid header whose error message would carry the key. Never echoes the value."""
    if value is None:
        return
    for position, char in enumerate(value):
        if not ("!" <= char <= "~"):
            kind = "a control character" if ord(char) < 32 or ord(char) == 127 else "a space" if char.isspace() else "a non-ASCII character"
            raise ProviderInputError(
                f"'{field}' contains {kind} at position {position + 1}; keys are printable ASCII without spaces. "
                "Copy the key again without line breaks or spaces."
            )


def env_key_name(provider_name: str) -> str:
    """The env var consulted when a provider has no stored key: 'My Kimi' -> MY_KIMI_API_KEY."""
    return re.sub(r"[^A-Za-z0-9]", "_", provider_name).upper() + "_API_KEY"


def env_fallback_key(provider_name: str) -> str | None:
    from ketta.security import server_secrets

    return server_secrets.get(env_key_name(provider_name)) or None


# Sent instead of an operator's env key where Letta would have used one for a call without a
# stored key (Letta falls back to OPENAI_API_KEY, ANTHROPIC_API_KEY, ... for any keyless call).
from ketta.security.operator_keys import NO_KEY  # noqa: E402,F401 - defined below the providers, used by both


def env_base_name(provider_name: str) -> str:
    """Where the operator names an env key's own endpoint: 'openai' -> OPENAI_API_BASE."""
    return env_key_name(provider_name)[: -len("_API_KEY")] + "_API_BASE"


def env_key_for(provider_name: str, provider_type: object, base_url: str | None) -> str | None:
    """The operator's ``{NAME}_API_KEY`` for a provider without a stored key, or None.

    Only when the operator turned the fallback on (KETTA_ENV_KEY_FALLBACK, off by default: with
    it any organization's keyless provider of that name spends the key), and only to the key's
    own endpoint: the provider type's default base URL or ``{NAME}_API_BASE``. A provider named
    'openai' pointing at someone else's server never receives OPENAI_API_KEY.
    """
    from ketta.providers.key_binding import is_under, provider_endpoint
    from ketta.core.settings import get_settings

    if not get_settings().env_key_fallback:
        return None
    key = env_fallback_key(provider_name)
    if not key:
        return None
    type_name = str(getattr(provider_type, "value", provider_type)) if provider_type else None
    from ketta.security import server_secrets

    own = [server_secrets.get(env_base_name(provider_name)), provider_endpoint(type_name, None)]
    return key if any(endpoint and is_under(base_url, endpoint) for endpoint in own) else None


def upstream_rejection(exc: BaseException) -> tuple[int, str] | None:
    """(status, message) if ``exc`` says the upstream refused the credentials (401/403), else None."""
    import httpx

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, httpx.HTTPStatusError) and current.response.status_code in (401, 403):
            return current.response.status_code, _upstream_message(current.response)
        status = getattr(current, "status_code", None)
        if status in (401, 403) and not isinstance(current, HTTPException):
            return status, str(getattr(current, "message", None) or current)
        name = type(current).__name__
        if name in ("LLMAuthenticationError", "LLMPermissionDeniedError"):
            return (401 if "Authentication" in name else 403), str(getattr(current, "message", None) or current)
        current = current.__cause__ or current.__context__
    return None


def _upstream_message(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if body.get("message"):
            return str(body["message"])
    return str(body)[:300]


# --- Input checked at the edge: what would otherwise reach the database or an upstream as a 500 ---

MAX_KEY_LENGTH = 8192  # the longest real keys (JWT-style service tokens) are ~2 KB
MAX_TEXT_LENGTH = 2048  # base_url, region, api_version

# Types Letta knows but a user cannot create over REST (besides those without a provider class): `letta` is Letta Cloud's own hosted
# models (a base provider of Letta's, no user key), `chatgpt_oauth` needs an OAuth flow this
# API does not offer (its key field holds a JSON token bundle Letta writes itself).
REFUSED_PROVIDER_TYPES: dict[str, str] = {
    "letta": "'letta' is Letta Cloud's own hosted provider and cannot be created here",
    "chatgpt_oauth": "'chatgpt_oauth' needs an OAuth sign-in flow that this server does not offer",
    "pool": "'pool' is made from existing providers with POST /v1/pools/ (it has no key of its own)",
}


def bad_character(text: str, *, controls: bool = True) -> str | None:
    """A description of the first character that cannot be stored or sent, else None."""
    for char in text:
        code = ord(char)
        if code == 0:
            return "a NUL character (U+0000)"
        if 0xD800 <= code <= 0xDFFF:
            return f"an unpaired surrogate (U+{code:04X})"
        if controls and (code < 0x20 or 0x7F <= code < 0xA0):
            return f"a control character (U+{code:04X})"
    return None


def check_text(value: object, field: str, *, max_length: int = MAX_TEXT_LENGTH, controls: bool = True) -> None:
    """422 naming the field unless ``value`` is None or a storable string of bounded length."""
    if value is None:
        return
    if not isinstance(value, str):
        raise ProviderInputError(f"'{field}' must be a string.")
    if len(value) > max_length:
        raise ProviderInputError(f"'{field}' must be at most {max_length} characters (got {len(value)}).")
    bad = bad_character(value, controls=controls)
    if bad:
        raise ProviderInputError(f"'{field}' must not contain {bad}; remove it.")


def check_key(value: object, field: str = "api_key") -> None:
    """A key is bounded, printable ASCII without spaces or control characters (it is encrypted
    and sent in a header; a CR/LF made an invalid header whose error text carried the key), and
    is remembered so that it is redacted from errors and logs."""
    from ketta.security.redaction import remember_secret

    check_text(value, field, max_length=MAX_KEY_LENGTH, controls=False)
    if isinstance(value, str):
        if not value.isascii():
            raise ProviderInputError(f"'{field}' must contain only ASCII characters (it is sent in an HTTP header); check what was pasted.")
        check_secret_text(value, field)
        remember_secret(value)


def creatable_types() -> list[str]:
    """The provider types POST /v1/providers/ accepts, in Letta's order (for messages)."""
    from letta.schemas.enums import ProviderType

    from ketta.providers.classes import PROVIDER_CLASSES

    return [t.value for t in ProviderType if t.value not in REFUSED_PROVIDER_TYPES and t.value in PROVIDER_CLASSES]


def check_creatable_type(provider_type: object) -> None:
    """422 for the provider types that cannot be created over REST (see REFUSED_PROVIDER_TYPES)."""
    value = str(getattr(provider_type, "value", provider_type))
    reason = REFUSED_PROVIDER_TYPES.get(value)
    if reason is None:
        from ketta.providers.classes import PROVIDER_CLASSES

        if value not in PROVIDER_CLASSES:  # Letta lists it but has no provider class for it (fireworks, hugging-face)
            reason = f"'{value}' has no provider implementation in Letta 0.16.8"
    if reason:
        raise ProviderInputError(f"provider_type {reason}; choose one of: {', '.join(creatable_types())} "
                                 "('openai' for any OpenAI-compatible API).")


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ProviderInputError(f"'limit' must be at least 1 (got {limit}).")


def check_provider_fields(fields: dict) -> None:
    """Every user-supplied provider field: names, URLs, keys, region, api_version."""
    for field in ("base_url", "region", "api_version"):
        check_text(fields.get(field), field)
    for field in ("api_key", "access_key"):
        check_key(fields.get(field), field)


class UpstreamUnavailable(HTTPException):
    """The provider's API could not be used (502) or did not answer in time (504)."""

    def __init__(self, name: str, status: int, message: str):
        what = "did not answer in time" if status == 504 else "could not be used"
        super().__init__(status_code=status, detail=f"Provider '{name}': the API {what}: {message}")


def classify_upstream_error(exc: BaseException) -> tuple[int, str]:
    """(status to answer, the upstream's words) for an exception raised while calling a provider's API.

    401/403: the key was refused; 504: timeout; 502: unreachable, a 5xx, or an answer that is
    not the API's; 400: any other 4xx (e.g. a base_url without the API behind it).
    """
    import asyncio

    import httpx

    rejection = upstream_rejection(exc)
    if rejection:
        return rejection
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = type(current).__name__
        if isinstance(current, (httpx.TimeoutException, asyncio.TimeoutError, TimeoutError)) or "Timeout" in name:
            return 504, f"no answer in time ({name})"
        response = getattr(current, "response", None)
        status = getattr(current, "status_code", None) or getattr(response, "status_code", None)
        if isinstance(status, int) and 400 <= status and not isinstance(current, HTTPException):
            message = _upstream_message(response) if response is not None and hasattr(response, "json") else str(current)
            return (502 if status >= 500 else 400), f"HTTP {status}: {message[:300]}"
        if isinstance(current, (httpx.TransportError, ConnectionError, OSError)) or "Connection" in name:
            return 502, f"unreachable ({name})"
        current = current.__cause__ or current.__context__
    return 502, f"{type(exc).__name__}: {str(exc)[:300]}"
