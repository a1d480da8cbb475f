"""Letta's Anthropic and Z.ai proxy routes are not served (ketta/api/closed_routes.py).

They forward the caller's headers (Ketta's own token in X-BARE-PASSWORD) to a public host and fall
back to the operator's ANTHROPIC_API_KEY. Tested in-process on an app that includes Letta's own
routers the way Letta does (under /v1 and /latest), with Letta's server dependency replaced by one
that answers 418: a route still served would answer 418 instead of 404, and nothing can leave the
machine.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from ketta.api.closed_routes import drop_letta_proxy_routes


def _letta_like_app() -> FastAPI:
    from letta.server.rest_api.routers.v1.anthropic import router as anthropic_router
    from letta.server.rest_api.routers.v1.zai import router as zai_router
    from letta.server.rest_api.dependencies import get_letta_server

    app = FastAPI()

    @app.get("/v1/health/")
    async def health() -> dict:
        return {"status": "ok"}

    for prefix in ("/v1", "/latest"):
        app.include_router(anthropic_router, prefix=prefix)
        app.include_router(zai_router, prefix=prefix)

    def refuse() -> None:
        raise HTTPException(status_code=418, detail="the proxy route was reached")

    app.dependency_overrides[get_letta_server] = refuse
    return app


def test_the_proxy_routes_answer_404_and_others_stay():
    app = _letta_like_app()
    with TestClient(app) as client:
        assert client.post("/v1/anthropic/v1/messages", json={}).status_code == 418  # served before the drop
    assert drop_letta_proxy_routes(app) == 4
    with TestClient(app) as client:
        for prefix in ("/v1", "/latest"):
            for path in ("/anthropic/v1/messages", "/zai/v1/messages", "/anthropic/v1/models", "/zai/v1/models"):
                for method in ("GET", "POST"):
                    response = client.request(method, prefix + path, headers={"X-BARE-PASSWORD": "password kt_secret"})
                    assert response.status_code == 404, (method, prefix + path, response.status_code, response.text)
        assert client.get("/v1/health/").json() == {"status": "ok"}
