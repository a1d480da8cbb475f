"""What the blocking message endpoints answer when the LLM provider failed: 502/503/504, never 500.

Letta 0.16.8 answers any LLM error without a handler of its own (the provider's 5xx, a refused
connection, a model the provider no longer serves) with ``500 llm_error``. A 500 says "this
server is broken"; clients such as Klui retry it three times. The fault is upstream, so the
answer is a gateway status naming the provider: 503 when the provider said 503 (with its
``Retry-After``), 504 when it said 504, else 502. The body keeps Letta's error shape
(``error.type`` ``llm_error``, ``message``, ``detail``) and adds ``detail`` at the top (Klui
reads a top-level ``detail``) and ``error.provider``.

A failed step stores nothing: the user message is written with the step's results only, so
re-sending after such an answer stores it once (tests/test_klui_contract.py).
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("ketta")

_AGENT_MESSAGES = re.compile(r"^/(?:v1|latest)/agents/(agent-[0-9a-f-]{36})/")


def upstream_status(exc: BaseException) -> int | None:
    """The HTTP status the provider answered, from the error's details or its cause chain."""
    details = getattr(exc, "details", None)
    if isinstance(details, dict) and isinstance(details.get("status_code"), int):
        return details["status_code"]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = getattr(current, "status_code", None)
        if isinstance(status, int):
            return status
        current = current.__cause__ or current.__context__
    return None


def retry_after(exc: BaseException) -> str | None:
    """The provider's ``Retry-After`` header, from the first error in the chain that carries its response."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        headers = getattr(getattr(current, "response", None), "headers", None)
        value = headers.get("retry-after") if headers is not None else None
        if value and re.fullmatch(r"[0-9]{1,6}|[A-Za-z0-9 ,:]{1,40}", str(value).strip()):
            return str(value).strip()
        current = current.__cause__ or current.__context__
    return None


def gateway_status(exc: BaseException) -> int:
    """503 for a provider's 503, 504 for its 504 (or a timeout), else 502."""
    from letta.errors import LLMTimeoutError

    if isinstance(exc, LLMTimeoutError):
        return 504
    status = upstream_status(exc)
    return status if status in (503, 504) else 502


async def provider_of_request(path: str) -> str | None:
    """The provider of the agent a message endpoint addressed (its chat handle's provider name)."""
    match = _AGENT_MESSAGES.match(path)
    if not match:
        return None
    try:
        from letta.orm.agent import Agent as AgentRow
        from letta.server.db import db_registry
        from sqlalchemy import select

        async with db_registry.async_session() as session:
            config = (await session.execute(select(AgentRow.llm_config).where(AgentRow.id == match.group(1)))).scalar_one_or_none()
    except Exception as exc:  # noqa: BLE001 - naming the provider must never turn the answer into a 500
        log.debug("provider of %s not found: %s", path, exc)
        return None
    if config is None:
        return None
    name = getattr(config, "provider_name", None) or (config.get("provider_name") if isinstance(config, dict) else None)
    handle = getattr(config, "handle", None) or (config.get("handle") if isinstance(config, dict) else None) or ""
    return name or (handle.split("/", 1)[0] if "/" in handle else None)


async def gateway_answer(request: Any, exc: BaseException) -> Any:
    """The JSON answer for an LLM error that has no handler of its own in Letta."""
    from fastapi.responses import JSONResponse

    status = gateway_status(exc)
    provider = await provider_of_request(request.url.path)
    upstream = upstream_status(exc)
    said = f" answered {upstream}" if upstream else " failed"
    message = f"The LLM provider '{provider}'{said}" if provider else f"The LLM provider{said}"
    message += "; nothing was stored, the request can be sent again." if status in (503, 504) else "; nothing was stored."
    headers = {}
    wait = retry_after(exc) if status == 503 else None
    if wait:
        headers["Retry-After"] = wait
    return JSONResponse(status_code=status, headers=headers, content={
        "detail": message,
        "error": {"type": "llm_error", "message": message, "provider": provider, "upstream_status": upstream, "detail": str(exc)},
    })
