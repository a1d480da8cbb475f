"""Provider rules shared by the patches: names, upstream rejections, key lookup.

Kept apart from the patch modules so the rules read in one place and tests can use them.
"""

from __future__ import annotations

import os
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
    cleaned = (name or "").strip()
    if not cleaned:
        raise ProviderInputError("Provider 'name' must not be empty.")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise ProviderInputError(f"Provider 'name' must be at most {MAX_NAME_LENGTH} characters (got {len(cleaned)}).")
    if "/" in cleaned:
        raise ProviderInputError(f"Provider 'name' must not contain '/' (handles are '{{provider name}}/{{model}}'): '{cleaned}'.")
    return cleaned


def env_key_name(provider_name: str) -> str:
    """The env var consulted when a provider has no stored key: 'My Kimi' -> MY_KIMI_API_KEY."""
    return re.sub(r"[^A-Za-z0-9]", "_", provider_name).upper() + "_API_KEY"


def env_fallback_key(provider_name: str) -> str | None:
    return os.environ.get(env_key_name(provider_name)) or None


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
