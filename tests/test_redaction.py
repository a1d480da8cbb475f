"""No key in any error, log line or response (issue 7, part 4).

A distinctive key (not ``sk-``-shaped, so only Ketta's knowledge of the key can hide it) is
stored, then every error path we know is driven with upstreams that echo it back; the key must
appear in no response body, in no line of the server's output at debug level, and in no file
Letta logs to.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from conftest import KettaProcess
from ketta.db.database import free_port, sync_url
from ketta.providers.rules import check_secret_text
from ketta.security.redaction import REDACTED, remember_secret, scrub, scrub_record
from mock_moonshot import MockMoonshot
from mock_openai import MockOpenAI

CANARY = f"canary{uuid.uuid4().hex}"
BROKEN_KEY = f"{CANARY}broken\r\nX-Injected: 1"  # as a key pasted with a line break


def test_scrub_hides_known_keys_and_credential_shapes() -> None:
    key = f"plain{uuid.uuid4().hex}"
    remember_secret(key)
    assert key not in scrub(f"upstream said: invalid key {key}")
    for leak in (f"Illegal header value b'Bearer sk-abc\\r\\n{key}'", "headers={'authorization': 'Bearer abcdefgh12345'}",
                 "x-api-key: abcdefgh12345", "GET https://generativelanguage.googleapis.com/v1beta/models?key=AIzaSyA1234567890abcdefghij",
                 "Incorrect API key provided: sk-proj-abcdefgh1234"):
        cleaned = scrub(leak)
        assert REDACTED in cleaned and "abcdefgh" not in cleaned and key not in cleaned and "1234567890abcdef" not in cleaned, cleaned


def test_log_records_are_scrubbed_with_args_extras_and_tracebacks() -> None:
    import logging

    key = f"plain{uuid.uuid4().hex}"
    remember_secret(key)
    try:
        raise ValueError(f"boom with {key}")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "sent %s", (f"Bearer {key}",), exc_info)
    record.request = {"headers": {"authorization": f"Bearer {key}"}}
    scrub_record(record)
    text = logging.Formatter().format(record) + str(record.request)
    assert key not in text and REDACTED in text and "boom with" in text


@pytest.mark.parametrize("bad", ["sk-abc\r\ndef", "sk-abc\ndef", "sk-abc\x00def", "sk abc", "sk-\x7fabc", "sk-ключ"])
def test_keys_with_control_characters_are_refused(bad: str) -> None:
    from ketta.providers.rules import ProviderInputError

    with pytest.raises(ProviderInputError) as refused:
        check_secret_text(bad, "api_key")
    assert refused.value.status_code == 422 and "api_key" in refused.value.detail and bad not in refused.value.detail


def store_broken_key(server: KettaProcess, home: Path, provider_id: str) -> None:
    """A key with CR/LF stored before Ketta refused such keys (written into the row, encrypted)."""
    from letta.helpers.crypto_utils import CryptoUtils

    encrypted = CryptoUtils.encrypt(BROKEN_KEY, master_key=(home / "encryption_key").read_text().strip())
    engine = sa.create_engine(sync_url(server.db_uri), poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE providers SET api_key_enc = :k WHERE id = :i"), {"k": encrypted, "i": provider_id})
    engine.dispose()


def test_no_key_in_any_response_or_log(debug_server: KettaProcess) -> None:
    """On the suite's debug-logging server (shared with tests/test_auth.py's route walk): the logs are
    read while it runs (unbuffered output), and again after it stopped (``never_logged``)."""
    server = debug_server
    user_home = server.user_home
    home = server.log_path.parent  # KETTA_HOME
    server.never_logged.extend([CANARY, "X-Injected"])
    api = server.client()
    bodies: list[str] = []

    def call(method: str, path: str, **kwargs) -> httpx.Response:
        response = api.request(method, path, **kwargs)
        bodies.append(f"{method} {path} -> {response.status_code}: {response.text}")
        return response

    echo = f"echo of the request: {{'authorization': 'Bearer {CANARY}', 'x-api-key': '{CANARY}'}} key={CANARY}"
    closed_port = free_port()
    with MockOpenAI(api_key=CANARY) as llm, MockOpenAI() as echoing, MockMoonshot(api_key=CANARY) as moon:
        def echo_errors(status: int, path_suffix: str, times: int = 12) -> None:
            for _ in range(times):
                echoing.queue_error(status, echo, path_suffix=path_suffix)

        # a refused key, the upstream echoing it: check and create
        echo_errors(401, "/models")
        assert call("POST", "/v1/providers/check", json={"provider_type": "openai", "api_key": CANARY, "base_url": echoing.base_url}).status_code >= 400
        echo_errors(401, "/models")
        refused = call("POST", "/v1/providers/", json={"name": "refused", "provider_type": "openai", "api_key": CANARY, "base_url": echoing.base_url})
        assert refused.status_code == 400, refused.text

        # an upstream 500 echoing the request: created without models (logged), then refresh
        echoing.clear()
        echo_errors(500, "/models", times=40)
        created = call("POST", "/v1/providers/", json={"name": "echo500", "provider_type": "openai", "api_key": CANARY, "base_url": echoing.base_url})
        assert created.status_code == 200, created.text
        assert call("PATCH", f"/v1/providers/{created.json()['id']}/refresh").status_code >= 400
        assert call("POST", f"/v1/providers/{created.json()['id']}/check").status_code >= 400
        assert any(r.api_key == CANARY for r in echoing.requests), "the key really went to the echoing upstream"

        # a working provider and agent, then chat and embedding errors echoing the request
        good = call("POST", "/v1/providers/", json={"name": "good", "provider_type": "openai", "api_key": CANARY, "base_url": llm.base_url})
        assert good.status_code == 200, good.text
        agent = call("POST", "/v1/agents/", json={"model": "good/mock-chat-1", "embedding": "good/text-embedding-3-small"})
        assert agent.status_code == 200, agent.text
        agent_id = agent.json()["id"]
        message = {"messages": [{"role": "user", "content": "hi"}]}
        for status in (500, 401, 400, 429):
            for _ in range(8):
                llm.queue_error(status, echo)
            call("POST", f"/v1/agents/{agent_id}/messages", json=message)
            llm.clear()
            for _ in range(8):
                llm.queue_error(status, echo)
            call("POST", f"/v1/agents/{agent_id}/messages/stream", json={**message, "stream_tokens": True})
            llm.clear()
        for _ in range(8):
            llm.queue_error(500, echo, path_suffix="/embeddings")
        call("POST", f"/v1/agents/{agent_id}/archival-memory", json={"text": "remember this"})
        llm.clear()

        # unreachable upstream
        unreachable = f"http://127.0.0.1:{closed_port}/v1"
        down = call("POST", "/v1/providers/", json={"name": "down", "provider_type": "openai", "api_key": CANARY, "base_url": unreachable})
        assert down.status_code == 200, down.text
        assert call("PATCH", f"/v1/providers/{down.json()['id']}/refresh").status_code == 502
        assert call("POST", "/v1/providers/check", json={"provider_type": "openai", "api_key": CANARY, "base_url": unreachable}).status_code >= 400
        assert call("PATCH", f"/v1/providers/{good.json()['id']}", json={"api_key": CANARY, "base_url": unreachable}).status_code == 502

        # a malformed key: refused on create, PATCH and check, nothing stored
        for response in (
            call("POST", "/v1/providers/", json={"name": "broken", "provider_type": "openai", "api_key": BROKEN_KEY, "base_url": llm.base_url}),
            call("PATCH", f"/v1/providers/{good.json()['id']}", json={"api_key": BROKEN_KEY}),
            call("POST", "/v1/providers/check", json={"provider_type": "openai", "api_key": BROKEN_KEY, "base_url": llm.base_url}),
        ):
            assert response.status_code == 422 and "api_key" in response.text, response.text
        assert "broken" not in [p["name"] for p in call("GET", "/v1/providers/").json()]
        # ...and one stored before that check existed: an invalid header at every use
        store_broken_key(server, home, good.json()["id"])
        assert call("PATCH", f"/v1/providers/{good.json()['id']}/refresh").status_code >= 400
        assert call("POST", f"/v1/providers/{good.json()['id']}/check").status_code >= 400
        call("POST", f"/v1/agents/{agent_id}/messages", json=message)
        call("POST", f"/v1/agents/{agent_id}/messages/stream", json={**message, "stream_tokens": True})

        # Kimi: a refused key echoed, a timeout
        moon.fail_next = [(401, "invalid_authentication_error", echo)] * 3
        assert call("POST", "/v1/providers/check", json={"provider_type": "kimi", "api_key": CANARY, "base_url": moon.base_url}).status_code == 401
        moon.fail_next = [(401, "invalid_authentication_error", echo)] * 3
        assert call("POST", "/v1/providers/", json={"name": "kimi-refused", "provider_type": "kimi", "api_key": CANARY, "base_url": moon.base_url}).status_code == 400
        moon.fail_next = []
        moon.delay_s = 7
        assert call("POST", "/v1/providers/check", json={"provider_type": "kimi", "api_key": CANARY, "base_url": moon.base_url}).status_code == 504
        moon.delay_s = 0

    logs = {"server output": server.log_text()}
    for path in [*user_home.rglob("*.log"), *home.glob("*.log")]:
        logs[str(path)] = path.read_text(errors="replace")
    assert "DEBUG" in logs["server output"], "the server logged at debug level"
    assert REDACTED in "\n".join(bodies) + "\n".join(logs.values()), "something was scrubbed: the paths above did carry the key"
    leaks = [text for text in bodies if CANARY in text]
    if leaks:
        pytest.fail("the key in responses:\n" + "\n".join(leaks[:4]))
    for where, text in logs.items():
        lines = [line for line in text.splitlines() if CANARY in line or "X-Injected" in line]
        assert lines == [], (where, lines[:5])


def test_error_bodies_are_scrubbed_behind_letta_style_middleware() -> None:
    """Letta's LoggingMiddleware (BaseHTTPMiddleware) re-streams a JSON error in parts with its
    content-length; streamed events are scrubbed chunk by chunk; ordinary text keeps what is not a key."""
    from starlette.applications import Starlette
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from ketta.security.redaction import ErrorScrubber

    key = f"plain{uuid.uuid4().hex}"
    remember_secret(key)

    async def error(request):
        return JSONResponse(status_code=500, content={"detail": f"upstream: Bearer abcdefgh123 key={key}"})

    async def ok(request):
        return JSONResponse({"memory": f"the user wrote Bearer abcdefgh123 and {key}"})

    async def events(request):
        async def chunks():
            yield f'data: {{"error": "{key}"}}\n\n'.encode()
            yield b"data: [DONE]\n\n"
        return StreamingResponse(chunks(), media_type="text/event-stream")

    class Passing(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            return await call_next(request)

    app = Starlette(routes=[Route("/error", error), Route("/ok", ok), Route("/events", events)])
    app.add_middleware(Passing)
    app.add_middleware(ErrorScrubber)
    client = TestClient(app)
    failed = client.get("/error")
    assert failed.status_code == 500 and key not in failed.text and "abcdefgh123" not in failed.text
    assert failed.json()["detail"] == f"upstream: Bearer {REDACTED} key={REDACTED}"
    fine = client.get("/ok")
    assert fine.json()["memory"] == f"the user wrote Bearer abcdefgh123 and {REDACTED}"
    streamed = client.get("/events")
    assert key not in streamed.text and "[DONE]" in streamed.text


def test_one_scrubber_its_strict_mode_is_provider_health_s() -> None:
    """Provider health stores error texts to show them again: it uses the shared scrubber's strict
    mode (any xx- key prefix, token/secret/password assignments, URL credentials), not a copy."""
    from ketta.providers import health
    from ketta.security import redaction

    text = "upstream said: pk-abcdef123456 token=hunter22secret at https://user:pa55word@llm.example/v1"
    strict = redaction.scrub(text, strict=True)
    for secret in ("pk-abcdef123456", "hunter22secret", "pa55word"):
        assert secret not in strict, strict
    assert "upstream said" in strict and "llm.example/v1" in strict
    assert health.scrub(text) == strict
    assert "token=hunter22secret" in redaction.scrub(text), "responses and logs keep their (narrower) rules"
