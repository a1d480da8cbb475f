"""Browser origins allowed to call the API: Letta's ``ACCEPTABLE_ORIGINS``, with a default for Klui.

Letta reads ``ACCEPTABLE_ORIGINS`` (comma list) once, when ``letta.settings`` is imported, and
adds them to its own list (localhost ports of Letta's tools, plus ``https://app.letta.com``).
Klui's web build is served on port 8080 of the same host: when ``ACCEPTABLE_ORIGINS`` is
unset, Ketta allows exactly ``http://localhost:8080`` and ``http://127.0.0.1:8080``, so it works
out of the box while other sites stay refused (never ``*``: requests carry credentials).

Letta's CORS middleware must see a preflight before any login check does (a browser sends
``OPTIONS`` without the token), so the app factory moves it to the outside of the stack.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

DEFAULT_ORIGINS: tuple[str, ...] = ("http://localhost:8080", "http://127.0.0.1:8080")
# Klui sends Content-Type: application/json on every call, so its web build preflights each one;
# browsers keep a preflight answer at most 2 h (Chromium's cap), Starlette's default is 10 min.
PREFLIGHT_MAX_AGE = 7200


def settle_origins() -> list[str]:
    """Normalise ACCEPTABLE_ORIGINS (spaces, trailing '/') or set Klui's default; before Letta is imported."""
    raw = os.environ.get("ACCEPTABLE_ORIGINS", "")
    origins = [o.strip().rstrip("/") for o in raw.split(",") if o.strip()] or list(DEFAULT_ORIGINS)
    os.environ["ACCEPTABLE_ORIGINS"] = ",".join(origins)
    return origins


def outermost(app: FastAPI) -> None:
    """Move the CORS middleware to the outside, so preflights never meet a login check; preflight
    answers are cached by the browser for :data:`PREFLIGHT_MAX_AGE` seconds."""
    cors = [m for m in app.user_middleware if m.cls is CORSMiddleware]
    if not cors:
        return
    cors[-1].kwargs["max_age"] = PREFLIGHT_MAX_AGE
    app.user_middleware[:] = cors[-1:] + [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    app.middleware_stack = None  # rebuilt from user_middleware on the first request


def allowed_origins(app: FastAPI) -> list[str]:
    """The origins the app's CORS middleware allows (for the start-up block)."""
    for middleware in app.user_middleware:
        if middleware.cls is CORSMiddleware:
            return list(dict.fromkeys(middleware.kwargs.get("allow_origins", [])))
    return []
