"""A local OpenAI-compatible LLM server for tests and the benchmark (127.0.0.1 only).

It speaks the real wire format, so Letta's own OpenAI client talks to it unchanged:

- ``GET  /v1/models`` and ``GET /v1/models/{id}``: the chat and embedding model ids;
- ``POST /v1/chat/completions``: non-streaming, or streaming as server-sent events
  (``data: {chunk}`` lines, then ``data: [DONE]``). When tools are offered and the caller forces
  a tool call (``tool_choice`` ``"required"`` or a named function, as Letta's memgpt-style agents
  do), the answer is a tool call (``send_message`` with the reply when offered); otherwise
  (``letta_v1_agent`` sends ``tool_choice="auto"``) it is plain assistant content; with
  ``force_tool`` set, that tool is called once per conversation whenever it is offered;
- ``POST /v1/responses``: the Responses API (non-streaming), a plain ``output_text`` message; with
  ``responses_refuse_user=True`` a request carrying ``user`` is answered 400
  ``{"detail": "Unsupported parameter: user"}``, as Codex-style Responses backends do;
- ``POST /openai/deployments/{deployment}/embeddings?api-version=...``: Azure OpenAI's embedding
  path (the deployment is the model; the key comes in the ``api-key`` header);
- ``GET /api/tags`` and ``POST /api/show``: Ollama's native model listing (what Letta's ``ollama``
  provider lists with before it chats over ``/v1``): the chat models with the ``tools``
  capability, the embedding models with ``embedding`` and their dimension;
- ``POST /v1/embeddings``: deterministic unit vectors of the requested (``dimensions``) or declared
  dimension, as floats or base64 float32 (the ``openai`` package asks for base64 by default).

Every request is recorded (method, path, headers, JSON body) so a test can assert what reached
the LLM endpoint. With ``api_key`` set, any other bearer token gets OpenAI's 401 body.

With ``hang=True`` a chat completion is read and never answered (an upstream that accepted the
request and went silent): the handler waits until the caller closes the connection, and
:attr:`MockOpenAI.hangs` says when each hanging request arrived and when its caller gave up.

Usage::

    with MockOpenAI(api_key="sk-test") as llm:
        ...  # point a provider at llm.base_url
        assert llm.chat_requests()[-1].api_key == "sk-test"
"""

from __future__ import annotations

import base64
import hashlib
import json
import select
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

DEFAULT_CHAT_MODELS: tuple[str, ...] = ("mock-chat-1",)
DEFAULT_EMBEDDING_MODELS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
DEFAULT_REPLY = "Hello from the mock LLM."

Reply = str | Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the mock received it."""

    method: str
    path: str
    headers: dict[str, str]  # keys lower-cased
    body: Any  # parsed JSON, or None when the body was empty or not JSON
    client_port: int = 0  # the caller's TCP port: equal ports = one kept-alive connection

    @property
    def api_key(self) -> str | None:
        """The bearer token of the ``Authorization`` header, if any."""
        auth = self.headers.get("authorization", "")
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None


@dataclass
class Hang:
    """A chat completion the mock never answered: when it arrived, when its caller closed the
    connection (None while it still waits), both ``time.monotonic()``."""

    arrived_at: float
    closed_at: float | None = None


@dataclass
class QueuedError:
    """An error the mock answers to the next matching request instead of its normal reply."""

    status: int
    message: str
    type: str = "server_error"
    path_suffix: str = "/chat/completions"
    retry_after: str | None = None  # sent as the Retry-After header


@dataclass
class StreamFailure:
    """A streamed chat completion that breaks after ``after`` content/tool-call deltas: ``error_event``
    sends OpenAI's mid-stream error (``data: {"error": {...}}``), ``drop`` closes the connection
    in the middle of the chunked body (the caller sees an incomplete response)."""

    after: int
    kind: str = "error_event"
    message: str = "The server had an error while processing your request."
    type: str = "server_error"


@dataclass
class MockOpenAI:
    """An OpenAI-compatible server in a background thread; ``start()``/``stop()`` or ``with``."""

    chat_models: tuple[str, ...] = DEFAULT_CHAT_MODELS
    embedding_models: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_EMBEDDING_MODELS))
    api_key: str | None = None  # when set, any other bearer token is answered 401
    reply: Reply = DEFAULT_REPLY
    fail_status: int | None = None  # every chat completion answers this error status (a provider that is down)
    host: str = "127.0.0.1"
    port: int = 0
    latency_s: float = 0.0  # added before each chat completion answer
    api_keys: tuple[str, ...] = ()  # more keys accepted besides api_key (one mock serving several accounts)
    rate_limit: int | None = None  # chat completions per key and window; more answer 429 with Retry-After
    rate_window_s: float = 60.0  # the rate limit's fixed window, from a key's first request in it
    hang: bool = False  # chat completions are never answered (see the module docstring)
    responses_refuse_user: bool = False  # POST /v1/responses with 'user' answers 400 (see the module docstring)
    force_tool: str | None = None  # call this tool (when offered) once per conversation, whatever tool_choice says
    # The usage object every chat completion reports (blocking: ``usage``; streamed: the last
    # chunk's, when the caller asks with stream_options.include_usage), e.g. with
    # prompt_tokens_details.cached_tokens / completion_tokens_details.reasoning_tokens; None: counted
    # from the text. ``usage_in_choice``: streamed the way Moonshot does, inside the final choice.
    usage: dict[str, Any] | None = None
    usage_in_choice: bool = False

    def __post_init__(self) -> None:
        self._hangs: list[Hang] = []
        self._hang_changed = threading.Condition()
        self._stopping = threading.Event()
        self._requests: list[RecordedRequest] = []
        self._errors: list[QueuedError] = []
        self._stream_failures: list[StreamFailure] = []
        self._windows: dict[str | None, tuple[float, int]] = {}  # key -> (window start, requests in it)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "MockOpenAI":
        """Listen on ``host:port`` (a free port when 0) and serve in a daemon thread."""
        if self._server is not None:
            return self
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("MockOpenAI only listens on the loopback interface")
        handler = type("BoundMockOpenAIHandler", (_Handler,), {"mock": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"mock-openai:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> "MockOpenAI":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """What an OpenAI client (or a Letta provider) takes as ``base_url``."""
        if self._server is None:
            raise RuntimeError("MockOpenAI is not started")
        return f"http://{self.host}:{self.port}/v1"

    # -- what reached the mock -------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path_suffix: str, method: str | None = None) -> list[RecordedRequest]:
        """The recorded requests whose path ends with ``path_suffix`` (query string ignored)."""
        return [
            r for r in self.requests
            if r.path.split("?", 1)[0].rstrip("/").endswith(path_suffix.rstrip("/")) and (method is None or r.method == method)
        ]

    def responses_requests(self) -> list[RecordedRequest]:
        """The ``POST /v1/responses`` requests received so far."""
        return self.requests_to("/responses", "POST")

    def chat_requests(self) -> list[RecordedRequest]:
        """The ``POST /v1/chat/completions`` requests received so far."""
        return self.requests_to("/chat/completions", "POST")

    @property
    def hangs(self) -> list["Hang"]:
        """The chat completions left hanging so far, oldest first."""
        with self._hang_changed:
            return list(self._hangs)

    def wait_for_hangs(self, count: int, timeout_s: float = 60, closed: bool = False) -> list["Hang"]:
        """Block until ``count`` requests are hanging (``closed``: and their callers went away)."""
        def ready() -> bool:
            return len([h for h in self._hangs if not closed or h.closed_at is not None]) >= count

        with self._hang_changed:
            if not self._hang_changed.wait_for(ready, timeout=timeout_s):
                raise TimeoutError(f"{count} hanging request(s) (closed={closed}) not seen within {timeout_s}s: {self._hangs}")
            return list(self._hangs)

    def _hang_until_caller_leaves(self, connection: Any) -> None:
        hang = Hang(arrived_at=time.monotonic())
        with self._hang_changed:
            self._hangs.append(hang)
            self._hang_changed.notify_all()
        while not self._stopping.is_set():
            readable, _, _ = select.select([connection], [], [], 0.1)
            if readable:
                try:
                    if not connection.recv(1, socket.MSG_PEEK):
                        break  # the caller closed its end
                except OSError:
                    break
        with self._hang_changed:
            hang.closed_at = time.monotonic()
            self._hang_changed.notify_all()

    def clear(self) -> None:
        """Forget the recorded requests (and any queued errors)."""
        with self._lock:
            self._requests.clear()
            self._errors.clear()

    def queue_error(self, status: int, message: str, type: str = "server_error", path_suffix: str = "/chat/completions",
                    retry_after: str | None = None) -> None:
        """Answer the next request to ``path_suffix`` with this error (OpenAI's error body)."""
        with self._lock:
            self._errors.append(QueuedError(status, message, type, path_suffix, retry_after))

    def queue_stream_failure(self, after: int, kind: str = "error_event", message: str = StreamFailure.message,
                             type: str = StreamFailure.type) -> None:
        """Break the next streamed chat completion after ``after`` deltas (0: before the first token)."""
        if kind not in ("error_event", "drop"):
            raise ValueError("kind is 'error_event' or 'drop'")
        with self._lock:
            self._stream_failures.append(StreamFailure(after, kind, message, type))

    def _over_rate_limit(self, key: str | None) -> float | None:
        """None if the key may send this chat completion, else the seconds until its window ends."""
        if self.rate_limit is None:
            return None
        now = time.monotonic()
        with self._lock:
            start, count = self._windows.get(key, (now, 0))
            if now - start >= self.rate_window_s:
                start, count = now, 0
            if count >= self.rate_limit:
                self._windows[key] = (start, count)
                return self.rate_window_s - (now - start)
            self._windows[key] = (start, count + 1)
            return None

    def _next_stream_failure(self) -> StreamFailure | None:
        with self._lock:
            return self._stream_failures.pop(0) if self._stream_failures else None

    # -- used by the handler ---------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> QueuedError | None:
        with self._lock:
            self._requests.append(request)
            for index, error in enumerate(self._errors):
                if request.path.split("?", 1)[0].rstrip("/").endswith(error.path_suffix):
                    return self._errors.pop(index)
        return None

    def _reply_text(self, body: dict[str, Any]) -> str:
        return self.reply(body) if callable(self.reply) else self.reply


def embedding_tokens(texts: list[Any]) -> int:
    """The ``usage.prompt_tokens`` (and ``total_tokens``) the mock reports for embedding ``texts``."""
    return sum(max(1, len(str(t)) // 4) for t in texts)


def embedding_vector(text: str, dimension: int) -> list[float]:
    """A deterministic unit vector for ``text``: same text, same vector; different texts differ."""
    values: list[float] = []
    counter = 0
    while len(values) < dimension:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((byte - 127.5) / 127.5 for byte in digest)
        counter += 1
    values = values[:dimension]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


def _tool_arguments(tool: dict[str, Any], reply: str) -> dict[str, Any]:
    """Arguments for a forced call of ``tool``: the reply for string parameters, neutral values else."""
    parameters = tool.get("function", {}).get("parameters", {}) or {}
    properties: dict[str, Any] = parameters.get("properties", {}) or {}
    neutral = {"integer": 0, "number": 0, "boolean": False, "array": [], "object": {}}
    arguments: dict[str, Any] = {}
    for name in parameters.get("required", []) or []:
        kind = (properties.get(name) or {}).get("type", "string")
        arguments[name] = reply if kind == "string" else neutral.get(kind, reply)
    if "message" in properties:
        arguments["message"] = reply
    return arguments


def _forced_tool(body: dict[str, Any], force_tool: str | None = None) -> dict[str, Any] | None:
    """The tool the caller forces (``required`` or named), preferring ``send_message``; else None.
    ``force_tool``: that tool, when offered and not yet called in this conversation."""
    tools: list[dict[str, Any]] = body.get("tools") or []
    choice = body.get("tool_choice")
    if force_tool is not None:
        called = {(c.get("function") or {}).get("name") for m in body.get("messages") or [] for c in m.get("tool_calls") or []}
        offered = [t for t in tools if t.get("function", {}).get("name") == force_tool]
        if offered and force_tool not in called:
            return offered[0]
    if not tools or choice in (None, "auto", "none"):
        return None
    by_name = {t.get("function", {}).get("name"): t for t in tools}
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name") or choice.get("name")
        if named in by_name:
            return by_name[named]
    return by_name.get("send_message") or tools[0]


class _Handler(BaseHTTPRequestHandler):
    """Routes one request; ``mock`` is bound on a per-server subclass."""

    mock: MockOpenAI
    protocol_version = "HTTP/1.1"
    server_version = "MockOpenAI/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: tests read ``mock.requests`` instead

    # -- plumbing --------------------------------------------------------------------------

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def _send_json(self, status: int, payload: Any, retry_after: str | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str, type: str, code: str | None = None, retry_after: str | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": type, "param": None, "code": code}}, retry_after)

    def _handle(self, method: str) -> None:
        body = self._read_body() if method == "POST" else None
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = RecordedRequest(method=method, path=self.path, headers=headers, body=body, client_port=self.client_address[1])
        queued = self.mock._record(request)
        path = self.path.split("?", 1)[0].rstrip("/")
        if method == "POST" and path.startswith("/openai/deployments/") and path.endswith("/embeddings"):
            self._azure_embeddings(path, headers, body if isinstance(body, dict) else {})
            return
        if self.mock.api_key is not None and request.api_key != self.mock.api_key and request.api_key not in self.mock.api_keys:
            self._send_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
            return
        if queued is not None:
            self._send_error(queued.status, queued.message, queued.type, retry_after=queued.retry_after)
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        if method == "GET" and path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [self._model(m) for m in self._all_models()]})
        elif method == "GET" and path.startswith("/v1/models/"):
            model_id = path[len("/v1/models/"):]
            if model_id in self._all_models():
                self._send_json(200, self._model(model_id))
            else:
                self._send_error(404, f"The model '{model_id}' does not exist", "invalid_request_error", "model_not_found")
        elif method == "POST" and path == "/v1/chat/completions" and self.mock.fail_status is not None:
            status = self.mock.fail_status
            self._send_error(status, "Rate limit reached for requests" if status == 429 else "The server is overloaded",
                             "requests" if status == 429 else "server_error", "rate_limit_exceeded" if status == 429 else None)
        elif method == "POST" and path == "/v1/chat/completions":
            wait = self.mock._over_rate_limit(request.api_key)
            if wait is not None:  # OpenAI's rate-limit answer
                self._send_error(429, f"Rate limit reached for requests: limit {self.mock.rate_limit} per {self.mock.rate_window_s:g}s. "
                                 f"Please try again in {wait:.0f}s.", "requests", "rate_limit_exceeded", retry_after=str(int(wait) + 1))
                return
            self._chat_completions(body if isinstance(body, dict) else {})
        elif method == "POST" and path == "/v1/embeddings":
            self._embeddings(body if isinstance(body, dict) else {})
        elif method == "GET" and path == "/api/tags":
            self._send_json(200, {"models": [{"name": m, "model": m, "size": 1, "digest": "0" * 12} for m in self._all_models()]})
        elif method == "POST" and path == "/api/show":
            self._ollama_show(body if isinstance(body, dict) else {})
        elif method == "POST" and path == "/v1/responses":
            self._responses(body if isinstance(body, dict) else {})
        else:
            self._send_error(404, f"Unknown request URL: {method} {path}", "invalid_request_error", "unknown_url")

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._handle("POST")

    # -- endpoints -------------------------------------------------------------------------

    def _all_models(self) -> list[str]:
        return [*self.mock.chat_models, *self.mock.embedding_models]

    @staticmethod
    def _model(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "mock"}

    def _ollama_show(self, body: dict[str, Any]) -> None:
        """Ollama's /api/show: capabilities and model_info (context length, embedding dimension)."""
        name = body.get("model") or body.get("name")
        if name in self.mock.chat_models:
            self._send_json(200, {"capabilities": ["completion", "tools"],
                                  "model_info": {"general.architecture": "llama", "llama.context_length": 8192}})
        elif name in self.mock.embedding_models:
            self._send_json(200, {"capabilities": ["embedding"], "model_info": {
                "general.architecture": "bert", "bert.embedding_length": self.mock.embedding_models[name]}})
        else:
            self._send_json(404, {"error": f"model '{name}' not found"})

    def _chat_completions(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model not in self.mock.chat_models:
            self._send_error(404, f"The model '{model}' does not exist", "invalid_request_error", "model_not_found")
            return
        if self.mock.hang:
            self.mock._hang_until_caller_leaves(self.connection)
            self.close_connection = True
            return
        if self.mock.latency_s:
            time.sleep(self.mock.latency_s)
        reply = self.mock._reply_text(body)
        tool = _forced_tool(body, self.mock.force_tool)
        tool_call = None
        if tool is not None:
            tool_call = {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": tool["function"]["name"], "arguments": json.dumps(_tool_arguments(tool, reply))},
            }
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        prompt_tokens = max(1, len(json.dumps(body.get("messages", []))) // 4)
        completion_tokens = max(1, len(reply) // 4)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        if self.mock.usage is not None:
            usage = json.loads(json.dumps(self.mock.usage))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(completion_id, model, reply, tool_call, usage if include_usage else None)
            return
        message: dict[str, Any] = {"role": "assistant", "content": None if tool_call else reply, "refusal": None}
        if tool_call:
            message["tool_calls"] = [tool_call]
        self._send_json(200, {
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if tool_call else "stop"}],
            "usage": usage, "system_fingerprint": "fp_mock",
        })

    def _stream(self, completion_id: str, model: str, reply: str, tool_call: dict[str, Any] | None,
                usage: dict[str, int] | None) -> None:
        failure = self.mock._next_stream_failure()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        if failure is not None:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": "fp_mock",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        events: list[dict[str, Any]] = []
        if tool_call is None:
            events.append(chunk({"role": "assistant", "content": ""}))
            events.extend(chunk({"content": piece}) for piece in _pieces(reply))
            events.append(chunk({}, "stop"))
        else:
            function = tool_call["function"]
            events.append(chunk({"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": tool_call["id"], "type": "function", "function": {"name": function["name"], "arguments": ""}}]}))
            events.extend(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                          for piece in _pieces(function["arguments"]))
            events.append(chunk({}, "tool_calls"))
        if self.mock.usage_in_choice and self.mock.usage is not None:
            events[-1]["choices"][0]["usage"] = json.loads(json.dumps(self.mock.usage))
        elif usage is not None:
            events.append({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [], "usage": usage})
        if failure is not None:
            self._broken_stream(events, failure)
            return
        try:
            for event in events:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _broken_stream(self, events: list[dict[str, Any]], failure: StreamFailure) -> None:
        """The events up to ``failure.after`` deltas (the opening role chunk comes first), then the
        failure; the body is chunked so that a dropped connection is an incomplete response."""

        def write_chunk(data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        opening, deltas = events[0], events[1:]
        try:
            for event in [opening, *deltas[:failure.after]]:
                write_chunk(f"data: {json.dumps(event)}\n\n".encode())
            if failure.kind == "error_event":
                error = {"error": {"message": failure.message, "type": failure.type, "param": None, "code": None}}
                write_chunk(f"data: {json.dumps(error)}\n\n".encode())
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            else:
                import socket

                self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass

    def _responses(self, body: dict[str, Any]) -> None:
        """OpenAI's Responses API, non-streaming: one assistant message with the reply."""
        model = body.get("model")
        if self.mock.responses_refuse_user and "user" in body:
            self._send_json(400, {"detail": "Unsupported parameter: user"})
            return
        if model not in self.mock.chat_models:
            self._send_error(404, f"The model '{model}' does not exist", "invalid_request_error", "model_not_found")
            return
        reply = self.mock._reply_text(body)
        input_tokens = max(1, len(json.dumps(body.get("input", []))) // 4)
        output_tokens = max(1, len(reply) // 4)
        self._send_json(200, {
            "id": f"resp_{uuid.uuid4().hex[:24]}", "object": "response", "created_at": int(time.time()), "model": model,
            "status": "completed", "parallel_tool_calls": False, "tool_choice": body.get("tool_choice") or "auto", "tools": [],
            "output": [{"type": "message", "id": f"msg_{uuid.uuid4().hex[:24]}", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": reply, "annotations": []}]}],
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens,
                      "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
        })

    def _azure_embeddings(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        """Azure OpenAI: the deployment in the path is the model, the key in ``api-key``."""
        if self.mock.api_key is not None and headers.get("api-key") not in (self.mock.api_key, *self.mock.api_keys):
            self._send_json(401, {"error": {"code": "401", "message": "Access denied due to invalid subscription key."}})
            return
        if "api-version=" not in self.path:
            self._send_json(404, {"error": {"code": "404", "message": "Resource not found"}})
            return
        deployment = path[len("/openai/deployments/"):-len("/embeddings")]
        self._embeddings({**body, "model": deployment})

    def _embeddings(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model not in self.mock.embedding_models:
            self._send_error(404, f"The model '{model}' does not exist", "invalid_request_error", "model_not_found")
            return
        texts = body.get("input")
        texts = [texts] if isinstance(texts, (str, int)) else list(texts or [])
        dimension = int(body.get("dimensions") or self.mock.embedding_models[model])
        data = []
        for index, text in enumerate(texts):
            vector = embedding_vector(json.dumps(text) if not isinstance(text, str) else text, dimension)
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{dimension}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = embedding_tokens(texts)
        self._send_json(200, {"object": "list", "data": data, "model": model,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _pieces(text: str, size: int = 8) -> list[str]:
    """``text`` split into small deltas, the way a real stream arrives."""
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def mock_openai(**options: Any) -> Iterator[MockOpenAI]:
    """Generator for a pytest fixture: ``fixture = pytest.fixture(mock_openai)`` or ``yield from``."""
    with MockOpenAI(**options) as server:
        yield server


def main(argv: list[str] | None = None) -> None:
    """``python tests/mock_openai.py --port 8000``: the mock for trying Ketta without an API key
    (README "Using it"); serves until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description="A local mock OpenAI-compatible API (any key accepted).")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    with MockOpenAI(port=args.port) as server:
        print(f"mock OpenAI on {server.base_url} (models: {', '.join([*server.chat_models, *server.embedding_models])}); Ctrl-C stops it", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
