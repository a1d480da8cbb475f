"""Image URLs in message content (CVE-2026-4964) and ``eval`` in ``resolve_type`` (CVE-2026-4965).

Test servers allow ``127.0.0.1,localhost`` (KETTA_ALLOW_PRIVATE_HOSTS). 127.0.0.2 is another
loopback address, not allowed: an image there must not be fetched, neither named directly nor
reached through a redirect from an allowed host, and the client gets a 400 saying why.
"""

from __future__ import annotations

import base64
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import unique
from mock_openai import MockOpenAI

KEY = "sk-image-test-key"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


class ImageHost:
    """An HTTP server on one loopback address: /img.png answers a PNG, /to?url=X redirects to X.
    Records every path it was asked for."""

    def __init__(self, host: str) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                hits.append(self.path)
                if self.path.startswith("/to?url="):
                    self.send_response(302)
                    self.send_header("Location", self.path.split("=", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[ImageHost, ImageHost]]:
    allowed, refused = ImageHost("127.0.0.1"), ImageHost("127.0.0.2")
    yield allowed, refused
    allowed.close()
    refused.close()


@pytest.fixture(scope="module")
def agent(shared_server) -> Iterator[tuple[httpx.Client, str, MockOpenAI]]:
    with MockOpenAI(api_key=KEY, reply="I see it.") as llm, shared_server.client() as api:
        name = unique("images")
        provider = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": KEY,
                                                    "base_url": llm.base_url})
        assert provider.status_code == 200, provider.text
        made = api.post("/v1/agents/", json={"name": f"img-{uuid.uuid4().hex[:6]}", "model": f"{name}/mock-chat-1",
                                             "embedding": f"{name}/text-embedding-3-small"})
        assert made.status_code == 200, made.text
        yield api, made.json()["id"], llm


def send_image(api: httpx.Client, agent_id: str, url: str) -> httpx.Response:
    content = [{"type": "text", "text": "what is this?"}, {"type": "image", "source": {"type": "url", "url": url}}]
    return api.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": content}]})


def test_an_image_on_an_allowed_host_is_fetched_and_sent_to_the_llm(agent, hosts) -> None:
    api, agent_id, llm = agent
    allowed, _ = hosts
    answer = send_image(api, agent_id, f"{allowed.url}/img.png")
    assert answer.status_code == 200, answer.text
    assert "/img.png" in allowed.hits
    assert base64.b64encode(PNG).decode() in str(llm.chat_requests()[-1].body)


@pytest.mark.parametrize("how", ["directly", "through a redirect"])
def test_an_image_on_a_refused_address_is_not_fetched_and_the_client_gets_400(agent, hosts, how: str) -> None:
    api, agent_id, llm = agent
    allowed, refused = hosts
    target = f"{refused.url}/secret.png"
    url = target if how == "directly" else f"{allowed.url}/to?url={target}"
    before = len(llm.chat_requests())
    answer = send_image(api, agent_id, url)
    assert answer.status_code == 400, answer.text
    assert "127.0.0.2" in answer.text and "KETTA_ALLOW_PRIVATE_HOSTS" in answer.text, answer.text
    assert refused.hits == []  # not one request reached the refused address
    assert len(llm.chat_requests()) == before  # and nothing went on to the LLM


def test_resolve_type_never_evals_in_the_server() -> None:
    """CVE-2026-4965: ``resolve_type`` evals an annotation only with ``allow_unsafe_eval=True``.
    Every place Letta passes it is code that runs in the tool's own (isolated) process: the
    script generated for the sandbox, the Modal wrapper. This walks Letta's source, so a new
    caller in the server fails here; and without the flag an annotation is never evaluated."""
    import letta
    from letta.functions.ast_parsers import coerce_dict_args_by_annotations, resolve_type

    root = Path(letta.__file__).parent
    callers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "allow_unsafe_eval=True" in p.read_text(errors="replace"))
    assert callers == ["services/tool_executor/tool_execution_sandbox.py", "services/tool_manager.py",
                       "services/tool_sandbox/base.py"], callers
    for path in ("services/tool_executor/tool_execution_sandbox.py", "services/tool_sandbox/base.py"):
        # There the flag is text of the script written for the tool process, not a call in the server.
        lines = [line for line in (root / path).read_text().splitlines() if "allow_unsafe_eval=True" in line]
        assert lines and all(re.search(r"['\"].*allow_unsafe_eval=True.*['\"]", line) for line in lines), lines
    manager = (root / "services/tool_manager.py").read_text()
    assert manager.index("allow_unsafe_eval=True") > manager.index("def modal_tool_wrapper")  # runs on Modal
    assert manager.index("allow_unsafe_eval=True") < manager.index("\nclass ToolManager")

    marker = Path("/tmp") / f"ketta-eval-{uuid.uuid4().hex}"
    payload = f"__import__('pathlib').Path('{marker}').touch() or int"
    with pytest.raises(ValueError):
        resolve_type(payload)
    with pytest.raises(ValueError):
        coerce_dict_args_by_annotations({"x": "1"}, {"x": payload})
    assert not marker.exists()
