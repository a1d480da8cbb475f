"""Letta routes Ketta does not serve: its Anthropic and Z.ai pass-through proxies.

``/v1/anthropic/...`` and ``/v1/zai/...`` (and their ``/latest`` twins) forward the caller's
headers upstream, ``X-BARE-PASSWORD`` included (Ketta's own token when a client logs in that
way), to a public host fixed in Letta's code, and fall back to the operator's
``ANTHROPIC_API_KEY`` when the caller sends none: any user token could spend the operator's key.
Ketta's providers do the same job with keys their organization stores, so the routes are taken
out of the router and answer 404 like any unknown path. No setting brings them back.
"""

from __future__ import annotations

from typing import Any

CLOSED_PREFIXES = ("/v1/anthropic", "/latest/anthropic", "/v1/zai", "/latest/zai")


def is_closed(path: str) -> bool:
    """Whether ``path`` is one of the proxy routes Ketta does not serve."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in CLOSED_PREFIXES)


def _proxy_routers() -> tuple[Any, ...]:
    from letta.server.rest_api.routers.v1.anthropic import router as anthropic_router
    from letta.server.rest_api.routers.v1.zai import router as zai_router

    return anthropic_router, zai_router


def _serves_a_proxy(route: Any, proxies: tuple[Any, ...]) -> bool:
    """A route of the proxy paths, or (FastAPI >= 0.14x includes routers lazily) an included
    proxy router, under any prefix."""
    return is_closed(getattr(route, "path", None) or "") or any(getattr(route, "original_router", None) is proxy for proxy in proxies)


def drop_letta_proxy_routes(app: Any) -> int:
    """Remove the proxy routes from ``app``'s router; returns how many entries were removed."""
    proxies = _proxy_routers()
    kept = [route for route in app.router.routes if not _serves_a_proxy(route, proxies)]
    removed = len(app.router.routes) - len(kept)
    app.router.routes[:] = kept
    return removed
