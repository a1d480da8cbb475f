"""Letta's built-in tools cannot be turned against the server by whoever runs an agent's LLM.

``fetch_webpage``'s URL is chosen by the LLM, i.e. by the owner of the agent's provider (any user
with a provider of their own). Stock Letta fetches it from the server with redirects followed to
any address; under Ketta every hop passes the URL guard. ``web_search``/``fetch_webpage`` do not
spend the operator's EXA_API_KEY/TAVILY_API_KEY (``KETTA_SHARE_SEARCH_KEYS`` off by default).
Local pages on 127.0.0.1 (allowed by the suite's KETTA_ALLOW_PRIVATE_HOSTS) and 127.0.0.2 (not
allowed: "internal").
"""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import httpx
import pytest

from conftest import KettaProcess
from mock_openai import MockOpenAI

SECRET = "INTERNAL-PAGE-5c1f"


class Page:
    """A web server recording the paths it was asked for; a page, or a redirect to ``redirect_to``."""

    def __init__(self, host: str, redirect_to: str | None = None) -> None:
        self.seen: list[str] = []
        page = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                page.seen.append(self.path)
                if redirect_to:
                    self.send_response(302)
                    self.send_header("Location", redirect_to + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = f"<html><head><title>t</title></head><body><article><h1>Page</h1><p>{SECRET} is the text of this page, " \
                       f"long enough to be the main content.</p></article></body></html>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def pages() -> Iterator[tuple[Page, Page, Page]]:
    internal = Page("127.0.0.2")
    redirector = Page("127.0.0.1", redirect_to=internal.url)
    allowed = Page("127.0.0.1")
    yield internal, redirector, allowed
    for p in (internal, redirector, allowed):
        p.close()


async def test_fetch_webpage_refuses_internal_addresses_and_redirects_to_them(pages):
    from ketta.letta_modifications.services.tool_executor.builtin_tool_executor import fetch_webpage

    internal, redirector, allowed = pages
    for url in (f"{internal.url}/latest/meta-data", f"{redirector.url}/latest/meta-data"):
        with pytest.raises(ValueError, match="127.0.0.2"):
            await fetch_webpage(None, None, url)
    assert internal.seen == [], "the refused address was never contacted"
    assert redirector.seen == ["/latest/meta-data"]
    assert SECRET in await fetch_webpage(None, None, f"{allowed.url}/article")


@pytest.fixture(scope="module")
def user_b(shared_server: KettaProcess) -> Iterator[httpx.Client]:
    """A user token of an organization of its own, on the shared server."""
    with shared_server.client() as admin:
        org = admin.post("/v1/admin/orgs/", json={"name": f"tools-{uuid.uuid4().hex[:6]}"}).json()
        user = admin.post("/v1/admin/users/", json={"name": "tools-b", "organization_id": org["id"]}).json()
        token = admin.post("/v1/ketta/tokens/", json={"user_id": user["id"]}).json()["token"]
    with httpx.Client(base_url=shared_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=180) as client:
        added = client.post("/v1/tools/add-base-tools")  # Letta's own tools, no user code: a user token may add them
        assert added.status_code == 200, added.text
        yield client


def test_a_user_s_llm_cannot_make_the_server_fetch_an_internal_page(user_b, pages):
    """B's own provider (an LLM B runs) calls fetch_webpage on an internal address, directly and
    through a redirect: nothing internal is contacted, nothing of it enters B's agent history."""
    internal, redirector, _ = pages
    for target in (f"{internal.url}/latest/meta-data", f"{redirector.url}/latest/meta-data"):
        name = f"fetcher {uuid.uuid4().hex[:6]}"
        with MockOpenAI(force_tool="fetch_webpage", reply=target) as llm:
            created = user_b.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "sk-b", "base_url": llm.base_url})
            assert created.status_code == 200, created.text
            agent = user_b.post("/v1/agents/", json={"name": "fetcher", "model": f"{name}/mock-chat-1", "include_base_tools": False,
                                                      "embedding": f"{name}/text-embedding-3-small", "tools": ["fetch_webpage"]})
            assert agent.status_code == 200, agent.text
            sent = user_b.post(f"/v1/agents/{agent.json()['id']}/messages", json={"messages": [{"role": "user", "content": "fetch it"}]})
            assert sent.status_code == 200, sent.text
            returns = [m for m in sent.json()["messages"] if m.get("message_type") == "tool_return_message"]
            assert returns and returns[0]["status"] == "error" and "127.0.0.2" in returns[0]["tool_return"], returns
            assert SECRET not in sent.text
    assert internal.seen == []
