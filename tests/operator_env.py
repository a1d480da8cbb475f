"""The operator's env keys (one per variable Letta reads into ``model_settings``) and an endpoint that
records what reaches it: for the suite's operator-keys server (``operator_keys_server`` in
tests/conftest.py) and the tests that use it (tests/test_operator_keys.py,
tests/test_identity_and_env_keys.py)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# One operator key per env variable Letta reads into model_settings (values unique to this test).
OPERATOR_KEYS = {
    name: f"opkey-{name.lower().replace('_', '-')}-5c1d"
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_API_KEY", "DEEPSEEK_API_KEY", "GROQ_API_KEY", "XAI_API_KEY",
                 "TOGETHER_API_KEY", "FIREWORKS_API_KEY", "BASETEN_API_KEY", "ZAI_API_KEY", "MINIMAX_API_KEY", "GEMINI_API_KEY",
                 "OPENROUTER_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "EXA_API_KEY", "TAVILY_API_KEY")
}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class RecordingEndpoint:
    """An LLM endpoint on 127.0.0.1 answering OpenAI-, Azure- and Anthropic-shaped requests on any
    path prefix, recording every request's method, path (query included) and headers."""

    def __init__(self, port: int | None = None) -> None:
        self.seen: list[Seen] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                endpoint.seen.append(Seen(method, self.path, {k.lower(): v for k, v in self.headers.items()}))
                path = self.path.split("?", 1)[0].rstrip("/")
                model = body.get("model", "mock-chat-1") if isinstance(body, dict) else "mock-chat-1"
                if method == "GET" and (path.endswith("/deployments") or path.endswith("/models")):
                    payload: Any = {"object": "list", "data": [{"id": "mock-chat-1", "object": "model", "created": 1, "created_at": 1,
                                                                  "owned_by": "mock", "capabilities": {"chat_completion": True}}]}
                elif path.endswith("/chat/completions"):
                    payload = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                elif path.endswith("/embeddings"):
                    inputs = body.get("input") or [""]
                    inputs = inputs if isinstance(inputs, list) else [inputs]
                    payload = {"object": "list", "model": model, "usage": {"prompt_tokens": 1, "total_tokens": 1},
                               "data": [{"object": "embedding", "index": i, "embedding": [0.1] * 1536} for i in range(len(inputs))]}
                elif path.endswith("/messages"):
                    payload = {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "stop_reason": "end_turn",
                               "content": [{"type": "text", "text": "ok"}], "usage": {"input_tokens": 1, "output_tokens": 1}}
                else:
                    self.send_response(404)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "not here"}}')
                    return
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                self._answer("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", port or 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def under(self, prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(f"/{prefix}/")]

    def leaked(self) -> list[tuple[str, str]]:
        """(env name, where) of every operator key that reached this endpoint."""
        found = []
        for seen in self.seen:
            text = seen.path + "\n" + "\n".join(f"{k}: {v}" for k, v in seen.headers.items())
            found += [(name, seen.path) for name, key in OPERATOR_KEYS.items() if key in text]
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def message_through_a_providerless_agent(api: Any, endpoint: str) -> None:
    """An agent whose ``llm_config`` and ``embedding_config`` name no provider, only ``endpoint``; then a
    message and a passage (an embedding), the calls where Letta would fall back to the operator's key."""
    agent = api.post("/v1/agents/", json={
        "name": "configured-thief", "include_base_tools": False,
        "llm_config": {"model": "mock-chat-1", "model_endpoint_type": "openai", "model_endpoint": endpoint,
                       "context_window": 8000},
        "embedding_config": {"embedding_model": "text-embedding-3-small", "embedding_endpoint_type": "openai",
                             "embedding_endpoint": endpoint, "embedding_dim": 1536},
    })
    assert agent.status_code == 200, agent.text
    api.post(f"/v1/agents/{agent.json()['id']}/messages", json={"messages": [{"role": "user", "content": "hi"}]})
    api.post(f"/v1/agents/{agent.json()['id']}/archival-memory", json={"text": "remember this"})


def keys_seen(mock: Any) -> set[str | None]:
    """Every API key the mock LLM was sent."""
    return {request.api_key for request in mock.requests}


def message_through(api: Any, provider: str, mock: Any, agent_name: str) -> None:
    """An agent on ``provider``'s mock-chat-1, then one message; the mock's earlier requests cleared first."""
    agent = api.post("/v1/agents/", json={"name": agent_name, "model": f"{provider}/mock-chat-1",
                                           "embedding": f"{provider}/text-embedding-3-small", "include_base_tools": False})
    assert agent.status_code == 200, agent.text
    mock.clear()
    api.post(f"/v1/agents/{agent.json()['id']}/messages", json={"messages": [{"role": "user", "content": "hi"}]})
