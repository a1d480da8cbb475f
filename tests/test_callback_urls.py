"""A run's ``callback_url`` passes the URL guard (ketta/security/callback_urls.py).

Letta POSTs a run's status to the ``callback_url`` of ``POST /v1/agents/{id}/messages/async`` when
it ends and shows the answer's status code on ``GET /v1/runs/{id}``: a user token could make the
server call into its own network and learn what answers. The shared server allows
``127.0.0.1,localhost``; 127.0.0.2 is another loopback address, not allowed: a callback there is
not sent and the run says why; one to an allowed host is sent as in Letta.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import httpx
import pytest

from conftest import KettaProcess
from mock_openai import MockOpenAI

KEY = "sk-callback-test-key"


class CallbackHost:
    """An HTTP server on one loopback address recording every POST (path, JSON body)."""

    def __init__(self, host: str) -> None:
        self.posts: list[tuple[str, dict]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                posts.append((self.path, json.loads(body or b"{}")))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hosts() -> Iterator[tuple[CallbackHost, CallbackHost]]:
    allowed, internal = CallbackHost("127.0.0.1"), CallbackHost("127.0.0.2")
    yield allowed, internal
    allowed.close(), internal.close()


def _finished_run(client: httpx.Client, run_id: str, timeout_s: float = 180) -> dict:
    """The run once its callback was attempted (a run ends, then Letta dispatches the callback)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run.get("callback_sent_at") or time.monotonic() > deadline:
            return run
        time.sleep(0.3)


def test_a_callback_to_a_refused_address_is_not_sent(shared_server: KettaProcess, hosts) -> None:
    allowed, internal = hosts
    with shared_server.client() as admin:
        org = admin.post("/v1/admin/orgs/", json={"name": f"cb-{uuid.uuid4().hex[:6]}"}).json()
        user = admin.post("/v1/admin/users/", json={"name": "cb", "organization_id": org["id"]}).json()
        token = admin.post("/v1/ketta/tokens/", json={"user_id": user["id"]}).json()["token"]
    with MockOpenAI(api_key=KEY) as llm, \
            httpx.Client(base_url=shared_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
        name = f"cb-{uuid.uuid4().hex[:6]}"
        assert client.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": KEY, "base_url": llm.base_url}).status_code == 200
        agent = client.post("/v1/agents/", json={"name": name, "model": f"{name}/mock-chat-1", "embedding": f"{name}/text-embedding-3-small",
                                                 "include_base_tools": False})
        assert agent.status_code == 200, agent.text
        runs = {}
        for where, host in (("internal", internal), ("allowed", allowed)):
            started = client.post(f"/v1/agents/{agent.json()['id']}/messages/async",
                                  json={"messages": [{"role": "user", "content": "hi"}], "callback_url": f"{host.url}/hook"})
            assert started.status_code == 200, started.text
            runs[where] = _finished_run(client, started.json()["id"])

    assert runs["allowed"]["callback_status_code"] == 204 and [p for p, _ in allowed.posts] == ["/hook"], runs["allowed"]
    assert internal.posts == [], "the server POSTed to a refused address"
    refused = runs["internal"]
    assert refused["callback_status_code"] is None and "127.0.0.2" in refused["callback_error"], refused
    assert "KETTA_ALLOW_PRIVATE_HOSTS" in refused["callback_error"]
