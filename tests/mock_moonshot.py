"""A local mock of Moonshot's API (Kimi) for tests, on 127.0.0.1, in Moonshot's wire format.

- ``GET /v1/models``: ``{"object": "list", "data": [{id, object, created, owned_by,
  context_length, supports_image_in, supports_video_in, supports_reasoning}]}``;
- ``GET /v1/users/me/balance``: the balance answer Moonshot uses as a key check;
- ``POST /v1/chat/completions``: non-streaming or SSE; thinking models answer with
  ``reasoning_content`` beside ``content``. The reply follows the conversation like an agent
  would: a memory tool call on a new user message, then ``send_message`` (when offered) or
  plain text after a tool result; ``script`` queues replies for a test to choose.
- Failures on demand: ``fail_next`` (status, Moonshot error type, message) for the next
  requests; ``down`` answers 503 to everything; ``delay_s`` answers late.

Every request is recorded. Every chat request is VALIDATED against Moonshot's rules (temperature
in [0, 1] and fixed values, no ``tool_choice="required"``, no named tool choice with thinking,
``reasoning_content`` on every earlier assistant tool-call message of a thinking model); a
violation is recorded in ``violations`` and answered with Moonshot's 400, so tests fail.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODELS: dict[str, dict[str, Any]] = {
    "moonshot-v1-8k": {"context_length": 8192, "supports_reasoning": False},
    "moonshot-v1-128k": {"context_length": 131072, "supports_reasoning": False},
    "kimi-k2-0905-preview": {"context_length": 262144, "supports_reasoning": False},
    "kimi-k2-turbo-preview": {"context_length": 262144, "supports_reasoning": False},
    "kimi-k2-thinking": {"context_length": 262144, "supports_reasoning": True},
    "kimi-k2.5": {"context_length": 262144, "supports_reasoning": True},
    "kimi-latest": {"supports_reasoning": False},  # no context_length: the table gives it
}
NOT_KIMI = "some-proxy-model"  # a proxy's other model, which a Kimi provider must not list
FIXED_TEMPERATURE = {"kimi-k2.5": 1.0, "kimi-k2.6": 1.0, "kimi-k2.7-code": 1.0, "kimi-k3": 1.0}
INVALID_AUTH = {"error": {"message": "Invalid Authentication", "type": "invalid_authentication_error"}}


class _QuietServer(ThreadingHTTPServer):
    """A client that gave up (timeout tests) is not an error of the mock."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def _is_letta_event(content: Any) -> bool:
    """Letta's heartbeat/login notes come as user messages holding JSON; they are not the user talking."""
    text = content if isinstance(content, str) else json.dumps(content)
    return text.lstrip().startswith("{") and '"type"' in text


def is_thinking(model: str) -> bool:
    return "thinking" in model or model.startswith(("kimi-k2.5", "kimi-k2.6", "kimi-k3"))


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None


@dataclass
class Reply:
    """A scripted chat answer: plain ``content`` and/or one tool call."""

    content: str | None = None
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)


class MockMoonshot:
    """``with MockMoonshot(api_key="sk-good") as moon: ... moon.base_url``"""

    def __init__(self, api_key: str = "sk-moonshot-test"):
        self.api_key = api_key
        self.requests: list[Recorded] = []
        self.violations: list[str] = []
        self.script: list[Reply] = []
        self.fail_next: list[tuple[int, str, str]] = []
        self.down = False
        self.delay_s = 0.0
        # The usage every chat answer reports (Moonshot counts cache hits in a top-level ``cached_tokens``);
        # streamed: in the last chunk, or inside its choice (``usage_in_choice``) as Moonshot's docs show.
        self.usage: dict[str, Any] = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
        self.usage_in_choice = False
        self.reasoning_by_call: dict[str, str] = {}  # tool call id -> reasoning we sent with it
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "MockMoonshot":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # ----- rules -----
    def validate(self, body: dict) -> list[str]:
        """Moonshot's rules (DESIGN.md facts table) that this request breaks."""
        problems: list[str] = []
        model = str(body.get("model"))
        thinking = is_thinking(model) and (body.get("thinking") or {}).get("type") != "disabled"
        temperature = body.get("temperature")
        if temperature is not None:
            if not 0 <= float(temperature) <= 1:
                problems.append(f"temperature {temperature} outside [0, 1]")
            fixed = FIXED_TEMPERATURE.get(model) if thinking or model.startswith(("kimi-k2.7", "kimi-k3")) else 0.6 if model in ("kimi-k2.5", "kimi-k2.6") else None
            if fixed is not None and float(temperature) != fixed:
                problems.append(f"invalid temperature: only {fixed} is allowed for this model")
        choice = body.get("tool_choice")
        if choice == "required":
            problems.append("tool_choice 'required' is not supported")
        if isinstance(choice, dict) and thinking:
            problems.append("tool_choice of a specified function is incompatible with thinking enabled")
        if thinking:
            for index, message in enumerate(body.get("messages") or []):
                if message.get("role") == "assistant" and message.get("tool_calls"):
                    sent = message.get("reasoning_content")
                    if not sent:
                        problems.append(f"thinking is enabled but reasoning_content is missing in assistant tool call message at index {index}")
                        continue
                    for call in message["tool_calls"]:
                        expected = self.reasoning_by_call.get(call.get("id"))
                        if expected is not None and expected not in sent:
                            problems.append(f"reasoning_content of message {index} is not the one returned with tool call {call.get('id')}")
        return problems

    # ----- answers -----
    def _next_reply(self, body: dict) -> Reply:
        if self.script:
            return self.script.pop(0)
        tools = {t["function"]["name"]: t["function"] for t in body.get("tools") or []}
        messages = body.get("messages") or []
        real_user = [i for i, m in enumerate(messages) if m.get("role") == "user" and not _is_letta_event(m.get("content"))]
        since_user = messages[real_user[-1] + 1:] if real_user else []
        if any(m.get("role") == "tool" for m in since_user):
            if "send_message" in tools:
                return Reply(tool="send_message", arguments={"message": "Noted, thank you!"})
            return Reply(content="Noted, thank you!")
        for name, arguments in (("core_memory_append", {"label": "human", "content": "Likes tea."}),
                                ("memory_insert", {"label": "human", "new_string": "Likes tea."})):
            if name in tools:
                return Reply(tool=name, arguments=arguments)
        if "send_message" in tools:
            return Reply(tool="send_message", arguments={"message": "Hello!"})
        return Reply(content="Hello!")

    def _completion(self, body: dict) -> tuple[dict, str | None]:
        """(the assistant message, reasoning) for this request."""
        reply = self._next_reply(body)
        model = str(body.get("model"))
        thinking = is_thinking(model) and (body.get("thinking") or {}).get("type") != "disabled"
        reasoning = f"Thinking step {uuid.uuid4().hex[:8]}: the user wrote something." if thinking else None
        message: dict[str, Any] = {"role": "assistant", "content": reply.content or ""}
        if reply.tool:
            tools = {t["function"]["name"]: t["function"] for t in body.get("tools") or []}
            arguments = dict(reply.arguments)
            properties = (tools.get(reply.tool, {}).get("parameters") or {}).get("properties", {})
            if "thinking" in properties:
                arguments.setdefault("thinking", "Inner thoughts.")
            if "request_heartbeat" in properties and reply.tool != "send_message":
                arguments["request_heartbeat"] = True
            # a model writes the arguments in the order the schema lists them (Letta puts its inner thoughts first)
            arguments = {**{k: arguments[k] for k in properties if k in arguments}, **arguments}
            call_id = f"call_{uuid.uuid4().hex[:20]}"
            message["tool_calls"] = [{"id": call_id, "type": "function", "function": {"name": reply.tool, "arguments": json.dumps(arguments)}}]
            if reasoning:
                self.reasoning_by_call[call_id] = reasoning
        if reasoning:
            message["reasoning_content"] = reasoning
        return message, reasoning

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                with mock._lock:
                    mock.requests.append(Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                return body

            def _precheck(self) -> bool:
                """Outage, scripted failure and key check; True when an answer was already sent.

                The answer is decided when the request arrives, before any delay: a late request
                must not take a failure scripted afterwards for the next one."""
                with mock._lock:
                    down = mock.down
                    failure = mock.fail_next.pop(0) if mock.fail_next and not down else None
                if mock.delay_s:
                    time.sleep(mock.delay_s)
                if down:
                    self._json(503, {"error": {"message": "The engine is currently overloaded", "type": "server_error"}})
                    return True
                if failure:
                    status, kind, message = failure
                    self._json(status, {"error": {"message": message, "type": kind}})
                    return True
                if self.headers.get("Authorization", "") != f"Bearer {mock.api_key}":
                    self._json(401, INVALID_AUTH)
                    return True
                return False

            def do_GET(self) -> None:
                self._record()
                if self._precheck():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    data = [
                        {"id": mid, "object": "model", "created": 1730000000, "owned_by": "moonshot", "supports_image_in": False,
                         "supports_video_in": False, **info}
                        for mid, info in MODELS.items()
                    ] + [{"id": NOT_KIMI, "object": "model", "created": 1, "owned_by": "proxy"}]
                    self._json(200, {"object": "list", "data": data})
                elif self.path == "/v1/users/me/balance":
                    self._json(200, {"code": 0, "data": {"available_balance": 49.5, "voucher_balance": 0, "cash_balance": 49.5},
                                     "scode": "0x0", "status": True})
                else:
                    self._json(404, {"error": {"message": f"Not found: {self.path}", "type": "resource_not_found_error"}})

            def do_POST(self) -> None:
                body = self._record() or {}
                if self.path == "/v1/embeddings":
                    self._json(403, {"error": {"message": "permission denied", "type": "permission_denied_error"}})
                    return
                if self.path != "/v1/chat/completions":
                    self._json(404, {"error": {"message": f"Not found: {self.path}", "type": "resource_not_found_error"}})
                    return
                if self._precheck():
                    return
                problems = mock.validate(body)
                if problems:
                    with mock._lock:
                        mock.violations.extend(problems)
                    self._json(400, {"error": {"message": "; ".join(problems), "type": "invalid_request_error"}})
                    return
                message, reasoning = mock._completion(body)
                finish = "tool_calls" if message.get("tool_calls") else "stop"
                created, cid, model = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:16]}", body.get("model")
                usage = json.loads(json.dumps(mock.usage))
                if not body.get("stream"):
                    self._json(200, {"id": cid, "object": "chat.completion", "created": created, "model": model,
                                     "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()

                def chunk(delta: dict, finish_reason: str | None = None, **extra: Any) -> None:
                    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
                    if mock.usage_in_choice and "usage" in extra:
                        choice["usage"] = extra.pop("usage")
                    payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                               "choices": [choice], **extra}
                    self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                    self.wfile.flush()

                chunk({"role": "assistant", "content": ""})
                if reasoning:
                    half = len(reasoning) // 2
                    chunk({"reasoning_content": reasoning[:half]})
                    chunk({"reasoning_content": reasoning[half:]})
                if message.get("content"):
                    chunk({"content": message["content"]})
                for index, call in enumerate(message.get("tool_calls") or []):
                    # the arguments come in small pieces, like the tokens a model streams
                    arguments, step = call["function"]["arguments"], 6
                    chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                           "function": {"name": call["function"]["name"], "arguments": arguments[:step]}}]})
                    for start in range(step, len(arguments), step):
                        chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[start:start + step]}}]})
                chunk({}, finish, usage=usage)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        return Handler
