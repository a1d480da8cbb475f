"""Patches for ``letta/server/rest_api/app.py``: its start-up must not reach the internet.

Letta's lifespan calls ``nltk.download("punkt_tab")`` on every start. Ketta never downloads
data at run time; the patch replaces that call target (looked up at call time) with a no-op
that logs what was skipped.

Fix of letta-ai/letta#3304: the app's rate-limit handler (a closure inside
``create_application``) tells the caller the provider's own error text instead of one fixed
sentence (:mod:`ketta.llm.errors`).
"""

from __future__ import annotations

import logging
from typing import Any

from ketta.llm.errors import rate_limit_message
from ketta.core.patching import Patch

log = logging.getLogger("ketta")

RATE_LIMIT_HANDLER = "letta.server.rest_api.app:create_application.<locals>.llm_rate_limit_error_handler"
LLM_ERROR_HANDLER = "letta.server.rest_api.app:create_application.<locals>.llm_error_handler"


async def llm_rate_limit_error_handler(request: Any, exc: Any) -> Any:
    """429 with Letta's error shape; ``message`` is what the provider said, ``detail`` as before."""
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=429, content={"error": {"type": "llm_rate_limit", "message": rate_limit_message(exc),
                                                            "detail": str(exc)}})


async def llm_error_handler(request: Any, exc: Any) -> Any:
    """An LLM error without a handler of its own: 502/503/504 naming the provider (:mod:`ketta.llm.upstream_errors`)."""
    from ketta.llm.upstream_errors import gateway_answer

    return await gateway_answer(request, exc)


VALIDATION_HANDLER = "letta.server.rest_api.app:create_application.<locals>.custom_request_validation_handler"


async def custom_request_validation_handler(request: Any, exc: Any) -> Any:
    """An unknown ``provider_type`` is a 422 in one sentence listing the types that can be created;
    any other validation error is answered by Letta's handler, as before."""
    from fastapi.responses import JSONResponse

    from ketta.core import patching
    from ketta.providers.rules import creatable_types

    for error in exc.errors():
        if error.get("type") == "enum" and tuple(error.get("loc", ()))[-1:] == ("provider_type",):
            where = "query parameter" if error["loc"][0] == "query" else "field"
            return JSONResponse(status_code=422, content={"detail": (
                f"provider_type {error.get('input')!r} is not a provider type ({where} 'provider_type'); use one of: "
                f"{', '.join(creatable_types())} ('openai' for any OpenAI-compatible API).")})
    return await patching.original_handler(VALIDATION_HANDLER, request.app)(request, exc)


def download(info_or_id: str | None = None, *args: object, **kwargs: object) -> bool:
    log.info("Ketta: skipped NLTK download of %r (no downloads at run time)", info_or_id)
    return False


PATCHES = [
    Patch(
        target=VALIDATION_HANDLER,
        replacement=custom_request_validation_handler,
        fingerprint="b86ac0a393e72789",  # of create_application, which defines and registers the handler
        setting="unified_providers",
        mode="exception_handler",
        why="An unknown provider_type answers 422 in one sentence listing the types that can be created, not a Python repr "
            "of pydantic's errors listing types that cannot (letta, chatgpt_oauth, pool, fireworks, hugging-face).",
    ),
    Patch(
        target="nltk:download",
        replacement=download,
        fingerprint="7b73f6a208a00db2",
        setting="offline",
        why="Letta's lifespan downloads NLTK data at every start; Ketta never leaves the machine at run time.",
    ),
    Patch(
        target=RATE_LIMIT_HANDLER,
        replacement=llm_rate_limit_error_handler,
        fingerprint="b86ac0a393e72789",  # of create_application, which defines and registers the handler
        setting="letta_fixes",
        mode="exception_handler",
        kind="fix",
        upstream="letta-ai/letta#3304",
        why="A 429 from the LLM provider answers with the provider's own text in 'message' (e.g. 'Insufficient balance'), "
            "not Letta's fixed 'Rate limit exceeded ... Please wait' (blocking message endpoints).",
    ),
    Patch(
        target=LLM_ERROR_HANDLER,
        replacement=llm_error_handler,
        fingerprint="b86ac0a393e72789",  # of create_application, which defines and registers the handler
        setting="gateway_errors",
        mode="exception_handler",
        why="An LLM provider's failure (its 5xx, a refused connection, a model it no longer serves) answers 502/503/504 "
            "naming the provider, with its Retry-After, instead of 500 'llm_error' that clients retry as a server fault.",
    ),
]
