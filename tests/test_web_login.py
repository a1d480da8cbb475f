"""Klui's web login: a built web app served on the API's origin behind a login page; its calls
carry a same-origin session cookie (ketta/api/web_login.py).

The browser part runs Debian's Chromium headless against tests/data/klui_web/index.html, a page
that calls the API the way Klui's web build does (fetch, JSON bodies, Content-Type: application/json,
the SSE stream), from the server's origin and from another port of the same host.
"""

from __future__ import annotations

import functools
import json
import threading
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import KettaProcess, server_of_its_own
from headless_chromium import Chromium, chromium_path
from mock_openai import MockOpenAI

WEB_APP = Path(__file__).parent / "data" / "klui_web"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def other_origin() -> Iterator[str]:
    """The same test page served from another port of this host (another origin, same site)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(WEB_APP)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def web_server(pg_uri: str, tmp_path_factory: pytest.TempPathFactory, other_origin: str) -> Iterator[KettaProcess]:
    # the other origin may call the API (CORS), so only the cookie check can refuse it
    with server_of_its_own(pg_uri, tmp_path_factory.mktemp("web-home"), "web", KETTA_WEB_APP_DIR=str(WEB_APP),
                           ACCEPTABLE_ORIGINS=other_origin) as proc:
        yield proc


@pytest.fixture
def llm() -> Iterator[MockOpenAI]:
    with MockOpenAI(api_key="sk-web-key") as mock:
        yield mock


def _login(server: KettaProcess, token: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/login", data={"token": token}, headers={"Sec-Fetch-Site": "same-origin", **headers})


def _session(response: httpx.Response) -> str:
    cookie = response.headers["set-cookie"]
    return cookie.split(";", 1)[0].split("=", 1)[1]


def _user_token(server: KettaProcess) -> tuple[str, str]:
    with server.client() as admin:
        org = admin.post("/v1/admin/orgs/", json={"name": f"web-org-{uuid.uuid4().hex[:6]}"}).json()
        user = admin.post("/v1/admin/users/", json={"name": "web user", "organization_id": org["id"]}).json()
        made = admin.post("/v1/ketta/tokens/", json={"user_id": user["id"], "name": "browser"})
    assert made.status_code == 201, made.text
    return made.json()["token"], made.json()["id"]


def _revoke(server: KettaProcess, token_id: str) -> None:
    with server.client() as admin:
        assert admin.delete(f"/v1/ketta/tokens/{token_id}").status_code == 200


def test_cookie_rules_over_http(web_server: KettaProcess, other_origin: str) -> None:
    """What a browser relies on, checked header by header (runs without Chromium too)."""
    url = web_server.url
    assert httpx.get(f"{url}/").status_code == 303 and httpx.get(f"{url}/").headers["location"] == "/login"
    page = httpx.get(f"{url}/login")
    assert page.status_code == 200 and '<form method="post" action="/login">' in page.text
    assert httpx.get(f"{url}/v1/providers/").status_code == 401

    assert _login(web_server, "wrong-token").status_code == 401
    cross = httpx.post(f"{url}/login", data={"token": web_server.token}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and "set-cookie" not in cross.headers  # CSRF: another site cannot log a browser in
    assert httpx.post(f"{url}/login", data={"token": web_server.token}).status_code == 403  # says nothing about its origin

    good = _login(web_server, web_server.token, Origin=url)
    assert good.status_code == 303 and good.headers["location"] == "/"
    attributes = [a.strip() for a in good.headers["set-cookie"].split(";")]
    assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"} <= set(attributes) and "Secure" not in attributes
    assert web_server.token not in good.headers["set-cookie"]
    behind_https = _login(web_server, web_server.token, **{"X-Forwarded-Proto": "https"})
    assert "Secure" in [a.strip() for a in behind_https.headers["set-cookie"].split(";")]

    cookies = {"ketta_session": _session(good)}
    same = httpx.get(f"{url}/v1/providers/", cookies=cookies, headers={"Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200, same.text
    posted = httpx.post(f"{url}/v1/agents/search", cookies=cookies, json={},
                        headers={"Origin": url, "Sec-Fetch-Site": "same-origin"})
    assert posted.status_code != 401
    for refused in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site", "Origin": other_origin},
                    {"Origin": other_origin}, {"Origin": "null"}):
        answer = httpx.get(f"{url}/v1/providers/", cookies=cookies, headers=refused)
        assert answer.status_code == 401, (refused, answer.text)
    assert httpx.post(f"{url}/v1/agents/search", cookies=cookies, json={}).status_code == 401  # POST without Origin
    forged = _session(good).rsplit(".", 1)[0] + "." + "0" * 64
    assert httpx.get(f"{url}/v1/providers/", cookies={"ketta_session": forged},
                     headers={"Sec-Fetch-Site": "same-origin"}).status_code == 401
    assert httpx.get(f"{url}/", cookies=cookies, headers={"Sec-Fetch-Site": "same-origin"}).text.startswith("<!doctype html>")

    # a user token's sessions end with the token
    token, token_id = _user_token(web_server)
    user_cookie = {"ketta_session": _session(_login(web_server, token))}
    assert httpx.get(f"{url}/v1/providers/", cookies=user_cookie, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert httpx.get(f"{url}/v1/ketta/tokens/", cookies=user_cookie, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 403
    _revoke(web_server, token_id)
    assert httpx.get(f"{url}/v1/providers/", cookies=user_cookie, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 401
    # Bearer keeps working beside it
    assert httpx.get(f"{url}/v1/providers/", headers=web_server.headers).status_code == 200


@pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (apt-get install chromium; .ci/run installs it)")
def test_klui_page_in_headless_chromium(web_server: KettaProcess, other_origin: str, llm: MockOpenAI) -> None:
    browser = Chromium(chromium_path())
    try:
        url = web_server.url
        # logged out: the app sends the browser to the login page
        assert browser.open(f"{url}/").endswith("/login")
        assert browser.evaluate("document.querySelector('form input[name=token]') !== null")

        # log in with the form
        browser.mark()
        browser.evaluate(f"document.querySelector('input[name=token]').value = {json.dumps(web_server.token)};"
                         "document.querySelector('form').submit()")
        assert browser.wait_loaded() == f"{url}/"
        assert browser.evaluate("document.title") == "Klui test page"
        assert "ketta_session" not in browser.evaluate("document.cookie")  # HttpOnly

        # Klui's calls from its own origin: providers, models, agent, SSE stream
        name = f"web {uuid.uuid4().hex[:6]}"
        flow = browser.evaluate(f"kluiFlow('', {json.dumps(name)}, {json.dumps(llm.base_url)})")
        assert flow["step"] == "done", flow
        assert flow["status"] == 200 and flow["type"].startswith("text/event-stream")
        assert "Hello from the mock LLM." in flow["text"]
        assert flow["embedding"].startswith(f"{name}/text-embedding-")  # offered by /v1/models/?provider_name=
        assert llm.chat_requests()

        # a page of another origin (another port of this host, allowed by CORS, sent the cookie) gets 401
        browser.open(f"{other_origin}/index.html")
        cross = browser.evaluate(f"call({json.dumps(url)}, 'GET', '/v1/providers/')")
        assert cross["status"] == 401, cross
        cross_post = browser.evaluate(f"call({json.dumps(url)}, 'POST', '/v1/providers/', "
                                      f"{{name: 'x', provider_type: 'openai', api_key: 'k', base_url: {json.dumps(llm.base_url)}}})")
        assert cross_post["status"] == 401, cross_post

        # logout ends the session
        browser.open(f"{url}/")
        assert browser.evaluate("call('', 'GET', '/v1/providers/').then(r => r.status)") == 200
        browser.evaluate("fetch('/logout', {method: 'POST'}).then(r => r.status)")
        assert browser.evaluate("call('', 'GET', '/v1/providers/').then(r => r.status)") == 401
        assert browser.open(f"{url}/").endswith("/login")

        # a user token's session ends when the token is revoked
        token, token_id = _user_token(web_server)
        browser.mark()
        browser.evaluate(f"document.querySelector('input[name=token]').value = {json.dumps(token)};"
                         "document.querySelector('form').submit()")
        assert browser.wait_loaded() == f"{url}/"
        assert browser.evaluate("call('', 'GET', '/v1/providers/').then(r => r.status)") == 200
        _revoke(web_server, token_id)
        assert browser.evaluate("call('', 'GET', '/v1/providers/').then(r => r.status)") == 401
        assert browser.open(f"{url}/").endswith("/login")
    finally:
        browser.stop()
