"""A local server speaking Anthropic's Messages API, for tests (127.0.0.1 only).

The same design as :mod:`mock_openai`: a threaded HTTP server, every request recorded (method,
path, lower-cased headers, JSON body) so a test asserts what reached the endpoint. It speaks
the real wire format, so the ``anthropic`` SDK that Letta uses talks to it unchanged:

- the key is the ``x-api-key`` header (or ``Authorization: Bearer``, which the anthropic SDK 2.x
  sends); with ``api_key`` set any other key gets Anthropic's 401
  body (``{"type": "error", "error": {"type": "authentication_error", ...}}``);
- ``GET /v1/models``: ``{"data": [{"type": "model", "id", "display_name", "created_at"}], "has_more", "first_id", "last_id"}``;
- ``POST /v1/messages``: a ``message`` object, or with ``"stream": true`` server-sent events
  ``message_start``, ``content_block_start``, ``content_block_delta`` (``text_delta`` /
  ``input_json_delta``), ``content_block_stop``, ``message_delta``, ``message_stop``;
- ``POST /v1/messages/count_tokens``: ``{"input_tokens": n}``.

Replies: when the last user turn carries ``tool_result`` blocks, or no tool is offered, the
answer ends the exchange (a ``send_message`` call when that tool is offered, else text). Otherwise
the mock first calls ``first_tool`` when it is offered (a tool-call exchange: the agent runs it
and sends its result back), or ``send_message`` when the caller forces a tool.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_MODELS: tuple[str, ...] = ("claude-mock-1",)
DEFAULT_REPLY = "Hello from the mock Anthropic endpoint."


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def api_key(self) -> str | None:
        """The key as sent: ``x-api-key``, or ``Authorization: Bearer`` (the anthropic SDK 2.x sends that)."""
        auth = self.headers.get("authorization", "")
        return self.headers.get("x-api-key") or (auth[len("Bearer "):] if auth.startswith("Bearer ") else None)


@dataclass
class MockAnthropic:
    """``with MockAnthropic(api_key="sk-ant") as mock: ... mock.base_url``"""

    models: tuple[str, ...] = DEFAULT_MODELS
    api_key: str | None = None
    reply: str = DEFAULT_REPLY
    first_tool: str | None = "conversation_search"  # called before the answer when offered
    # The usage every message reports (input_tokens, output_tokens, cache_read_input_tokens,
    # cache_creation_input_tokens): blocking in ``usage``; streamed, the input side in
    # message_start and the output count in message_delta, as Anthropic sends them.
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 25, "output_tokens": 10})
    host: str = "127.0.0.1"
    port: int = 0
    _requests: list[RecordedRequest] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> "MockAnthropic":
        handler = type("Handler", (_Handler,), {"mock": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name=f"mock-anthropic:{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "MockAnthropic":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """What a provider stores as base_url (the SDK appends /v1/...)."""
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path_suffix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.split("?", 1)[0].rstrip("/").endswith(path_suffix)]

    def message_requests(self) -> list[RecordedRequest]:
        return self.requests_to("/v1/messages")

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)


def _tool_input(tool: dict[str, Any], text: str) -> dict[str, Any]:
    """Arguments for ``tool``: ``text`` for required strings, neutral values otherwise."""
    schema = tool.get("input_schema") or {}
    properties = schema.get("properties") or {}
    neutral = {"integer": 1, "number": 1, "boolean": False, "array": [], "object": {}}
    values = {}
    for name in schema.get("required") or []:
        kind = (properties.get(name) or {}).get("type", "string")
        values[name] = text if kind == "string" else neutral.get(kind, text)
    if "message" in properties:
        values["message"] = text
    return values


class _Handler(BaseHTTPRequestHandler):
    mock: MockAnthropic
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, kind: str, message: str) -> None:
        self._send_json(status, {"type": "error", "error": {"type": kind, "message": message}})

    def _handle(self, method: str) -> None:
        body = self._read_body() if method == "POST" else None
        request = RecordedRequest(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        self.mock._record(request)
        if self.mock.api_key is not None and request.api_key != self.mock.api_key:
            self._send_error(401, "authentication_error", "invalid x-api-key")
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        if method == "GET" and path == "/v1/models":
            data = [{"type": "model", "id": m, "display_name": m, "created_at": "2026-01-01T00:00:00Z"} for m in self.mock.models]
            self._send_json(200, {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None})
        elif method == "POST" and path == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
        elif method == "POST" and path == "/v1/messages":
            self._messages(body if isinstance(body, dict) else {})
        else:
            self._send_error(404, "not_found_error", f"Unknown request URL: {method} {path}")

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._handle("POST")

    def _answer_blocks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        tools = {t.get("name"): t for t in body.get("tools") or [] if isinstance(t, dict)}
        choice = (body.get("tool_choice") or {}).get("type")
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        content = last.get("content") if isinstance(last, dict) else None
        after_tool = isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
        first = self.mock.first_tool
        if not after_tool and first in tools:
            return [self._tool_use(tools[first], "what did we talk about")]
        if "send_message" in tools and (choice in ("any", "tool") or after_tool):
            return [self._tool_use(tools["send_message"], self.mock.reply)]
        if choice == "tool" and (body.get("tool_choice") or {}).get("name") in tools:
            return [self._tool_use(tools[body["tool_choice"]["name"]], self.mock.reply)]
        if choice == "any" and tools:
            return [self._tool_use(next(iter(tools.values())), self.mock.reply)]
        return [{"type": "text", "text": self.mock.reply}]

    @staticmethod
    def _tool_use(tool: dict[str, Any], text: str) -> dict[str, Any]:
        return {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": tool["name"], "input": _tool_input(tool, text)}

    def _messages(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model not in self.mock.models:
            self._send_error(404, "not_found_error", f"model: {model}")
            return
        blocks = self._answer_blocks(body)
        stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        message = {"id": f"msg_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant", "model": model,
                   "content": blocks, "stop_reason": stop, "stop_sequence": None,
                   "usage": dict(self.mock.usage)}
        if not body.get("stream"):
            self._send_json(200, message)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self._event("message_start", {"type": "message_start", "message": {**message, "content": [], "stop_reason": None,
                                                                           "usage": {**self.mock.usage, "output_tokens": 1}}})
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                self._event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
                for piece in _pieces(block["text"]):
                    self._event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}})
            else:
                start = {**block, "input": {}}
                self._event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
                for piece in _pieces(json.dumps(block["input"])):
                    self._event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                        "delta": {"type": "input_json_delta", "partial_json": piece}})
            self._event("content_block_stop", {"type": "content_block_stop", "index": index})
        self._event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                      "usage": {"output_tokens": self.mock.usage.get("output_tokens", 0)}})
        self._event("message_stop", {"type": "message_stop"})
        self.close_connection = True

    def _event(self, name: str, data: dict[str, Any]) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


def _pieces(text: str, size: int = 12) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]
