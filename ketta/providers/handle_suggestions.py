"""A mistyped model or embedding handle: 404 naming it, with the close handles the caller can use.

Stock Letta 0.16.8 answers a chat handle typo with ``Handle X not found, must be one of []``
(always an empty list: the caller's handles are never looked up) and an embedding handle typo
with a 400. Here both are a 404 (``HandleNotFoundError``, which Letta's handlers answer 404)
whose message names the handle and suggests the closest of the caller's organization's handles
(``difflib``), or lists a few of them when none is close, or says there are none yet.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable

SHOWN = 8  # handles listed when none is close


def message(handle: str, kind: str, usable: Iterable[str]) -> str:
    """The 404's text: the handle, then close matches, else some usable handles, else what to do."""
    usable = sorted(set(h for h in usable if h))
    what = "Embedding handle" if kind == "embedding" else "Model handle"
    by_lower = {h.lower(): h for h in usable}
    close = [by_lower[m] for m in difflib.get_close_matches(handle.lower(), list(by_lower), n=3, cutoff=0.6)]
    if close:
        hint = "did you mean " + " or ".join(f"'{h}'" for h in close) + "?"
    elif usable:
        more = f" and {len(usable) - SHOWN} more" if len(usable) > SHOWN else ""
        hint = "the handles you can use: " + ", ".join(f"'{h}'" for h in usable[:SHOWN]) + more
    else:
        hint = (f"you have no {'embedding' if kind == 'embedding' else 'chat'} model yet: create a provider "
                "(POST /v1/providers/) and use one of its handles")
    listing = "GET /v1/models/embedding" if kind == "embedding" else "GET /v1/models/"
    return f"{what} '{handle}' not found; {hint} ({listing} lists them)"


async def usable_handles(server: Any, actor: Any, kind: str) -> list[str]:
    """The handles this actor's organization can use: what GET /v1/models/ (or /embedding) lists."""
    if kind == "embedding":
        from ketta.providers.model_listing import embedding_models

        return [model.handle for model in await embedding_models(actor)]
    return [config.handle for config in await server.list_llm_models_async(actor=actor)]


def not_found(handle: str, kind: str, usable: Iterable[str]) -> Exception:
    """Letta's HandleNotFoundError (answered 404 by its handlers) carrying :func:`message`."""
    from letta.errors import ErrorCode, HandleNotFoundError, LettaError

    error = HandleNotFoundError.__new__(HandleNotFoundError)
    LettaError.__init__(error, message=message(handle, kind, usable), code=ErrorCode.NOT_FOUND)
    return error
