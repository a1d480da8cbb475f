"""A redirect is not an answer about a key, and a key never follows one (issue 18 items 6 and 11).

A server on 127.0.0.1 answers 302 to everything, pointing at a second one on 127.0.0.2 (an
address the URL guard refuses: only 127.0.0.1 and localhost are allowed in tests). Nothing may
reach the second one, and a key check against the first is not 200.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest


class _Recorder(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("authorization") or self.headers.get("api-key")))  # type: ignore[attr-defined]
        target = self.server.redirect_to  # type: ignore[attr-defined]
        if target:
            self.send_response(302)
            self.send_header("Location", target + self.path)
            self.send_header("Content-Type", "application/json")
            body = b"{}"
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            body = b'{"data": [], "models": []}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


def _serve(host: str, redirect_to: str | None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, 0), _Recorder)
    server.seen = []  # type: ignore[attr-defined]
    server.redirect_to = redirect_to  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def redirector() -> Iterator[tuple[str, ThreadingHTTPServer]]:
    """(base URL of the 302-answering server on 127.0.0.1, the refused server on 127.0.0.2)."""
    refused = _serve("127.0.0.2", None)
    hop = _serve("127.0.0.1", f"http://127.0.0.2:{refused.server_address[1]}")
    yield f"http://127.0.0.1:{hop.server_address[1]}", refused
    for server in (hop, refused):
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("provider_type, extra", [("kimi", {}), ("azure", {"api_version": "2024-09-01-preview"})])
def test_a_key_check_answered_by_a_redirect_is_not_a_valid_key(api, redirector, provider_type, extra):
    base_url, refused = redirector
    response = api.post("/v1/providers/check", json={"provider_type": provider_type, "api_key": "sk-redirected-0123456789",
                                                      "base_url": base_url, **extra})
    assert response.status_code != 200, response.text
    assert response.status_code in (400, 401, 502), response.text
    assert "Valid api key" not in response.text
    assert refused.seen == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("provider_type", ["ollama", "mistral"])
def test_a_listing_never_follows_a_redirect(api, redirector, provider_type):
    base_url, refused = redirector
    response = api.post("/v1/providers/", json={"name": f"redirected {provider_type}", "provider_type": provider_type,
                                                 "api_key": "sk-redirected-0123456789", "base_url": base_url})
    try:
        assert response.status_code < 500 or response.status_code in (502, 504), response.text
        assert refused.seen == [], refused.seen  # type: ignore[attr-defined]
    finally:
        if response.status_code == 200:
            api.delete(f"/v1/providers/{response.json()['id']}")
