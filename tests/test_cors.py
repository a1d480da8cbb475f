"""Browser origins: a real preflight and credentialed requests, from allowed and refused origins.

Default (no ACCEPTABLE_ORIGINS): Klui's web build on port 8080 of the same host is allowed,
other sites are not. With ACCEPTABLE_ORIGINS, those origins; preflights pass without the token
while login is on.
"""

from __future__ import annotations

from typing import Callable

import httpx
import pytest

from conftest import KettaProcess

PREFLIGHT_HEADERS = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}


def preflight(server: KettaProcess, origin: str, path: str = "/v1/providers/") -> httpx.Response:
    """What a browser sends before a cross-origin POST with a token: no token of its own."""
    return httpx.options(f"{server.url}{path}", headers={"Origin": origin, **PREFLIGHT_HEADERS})


def assert_allowed(response: httpx.Response, origin: str) -> None:
    assert response.headers.get("access-control-allow-origin") == origin, dict(response.headers)
    assert response.headers.get("access-control-allow-credentials") == "true"


def assert_refused(response: httpx.Response) -> None:
    assert "access-control-allow-origin" not in response.headers, dict(response.headers)


@pytest.mark.parametrize("origin", ["http://localhost:8080", "http://127.0.0.1:8080"])
def test_default_allows_klui_on_port_8080_of_this_host(shared_server: KettaProcess, origin: str) -> None:
    answer = preflight(shared_server, origin)
    assert answer.status_code == 200, answer.text
    assert_allowed(answer, origin)
    assert {"authorization", "content-type"} <= set(answer.headers["access-control-allow-headers"].split(","))
    assert "POST" in answer.headers["access-control-allow-methods"]
    with shared_server.client() as api:
        listed = api.get("/v1/providers/", headers={"Origin": origin})
    assert listed.status_code == 200
    assert_allowed(listed, origin)


@pytest.mark.parametrize("origin", ["http://localhost:8081", "https://evil.example", "null"])
def test_default_refuses_other_sites(shared_server: KettaProcess, origin: str) -> None:
    answer = preflight(shared_server, origin)
    assert answer.status_code == 400
    assert_refused(answer)
    with shared_server.client() as api:
        listed = api.get("/v1/providers/", headers={"Origin": origin})
    assert_refused(listed)  # served (no browser here) but unreadable by a page of that origin


@pytest.mark.slow
def test_acceptable_origins_with_login_on(start_ketta: Callable[..., KettaProcess], database_uri: str) -> None:
    klui = "https://klui.example.org"
    server = start_ketta(env={
        "LETTA_PG_URI": database_uri,
        "ACCEPTABLE_ORIGINS": f" {klui}/ , http://localhost:9000",  # spaces and a trailing '/' are forgiven
        "LETTA_SERVER_SECURE": "true",  # login on (Letta's own check, token = LETTA_SERVER_PASSWORD)
    })
    for origin in (klui, "http://localhost:9000"):
        answer = preflight(server, origin)
        assert answer.status_code == 200, f"the preflight carries no token and still passes: {answer.text}"
        assert_allowed(answer, origin)
    assert preflight(server, "http://localhost:8080").status_code == 400, "ACCEPTABLE_ORIGINS replaces the default"

    with server.client() as api:
        allowed = api.get("/v1/providers/", headers={"Origin": klui})
        assert allowed.status_code == 200 and allowed.json() == []
        assert_allowed(allowed, klui)
        refused = api.get("/v1/providers/", headers={"Origin": "https://evil.example"})
        assert refused.status_code == 200
        assert_refused(refused)
    no_token = httpx.get(f"{server.url}/v1/providers/", headers={"Origin": klui})
    assert no_token.status_code == 401, "login is on"
    assert_allowed(no_token, klui)  # the page can read why


# Klui's calls, as its web build preflights them: every request carries Content-Type: application/json.
KLUI_CALLS = [("GET", "/v1/models/?provider_name=x"), ("POST", "/v1/agents/"), ("DELETE", "/v1/providers/provider-1"),
              ("PATCH", "/v1/providers/provider-1"), ("POST", "/v1/agents/agent-1/messages/stream")]


@pytest.mark.parametrize("method,path", KLUI_CALLS)
def test_klui_preflights_are_cached_and_need_no_token(shared_server: KettaProcess, method: str, path: str) -> None:
    """A preflight carries no token (login is on here) and its answer is cached by the browser."""
    origin = "http://localhost:8080"
    for requested in ("content-type", "authorization,content-type"):  # a Klui build without and with a token
        answer = httpx.options(f"{shared_server.url}{path}", headers={
            "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": requested})
        assert answer.status_code == 200, answer.text
        assert_allowed(answer, origin)
        assert answer.headers.get("access-control-max-age") == "7200", dict(answer.headers)
        assert method in answer.headers["access-control-allow-methods"]
    refused = httpx.options(f"{shared_server.url}{path}", headers={"Origin": "https://evil.example", **PREFLIGHT_HEADERS})
    assert refused.status_code == 400
    assert_refused(refused)
