"""Klui's REST contract (DESIGN.md), call by call, as the Flutter app makes them.

Klui sends an optional ``Authorization: Bearer`` token; every call here carries one.
"""

from __future__ import annotations

import json
import uuid
from typing import Iterator

import httpx
import pytest

from mock_openai import MockOpenAI

KEY = "sk-klui-key"
NEW_KEY = "sk-klui-key-edited"


@pytest.fixture
def llm() -> Iterator[MockOpenAI]:
    with MockOpenAI(api_key=KEY) as mock:
        yield mock


@pytest.fixture
def moved() -> Iterator[MockOpenAI]:
    """Where the user's edit points the provider: another endpoint that takes another key."""
    with MockOpenAI(api_key=NEW_KEY) as mock:
        yield mock


@pytest.fixture(scope="module")
def klui(shared_server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {shared_server.token}"}  # Klui built with the token (see README)
    with httpx.Client(base_url=shared_server.url, headers=headers, timeout=120) as client:
        yield client


def test_klui_flow_call_by_call(klui, llm, moved):
    name = f"Klui {uuid.uuid4().hex[:6]}"

    # POST /v1/providers/check: a good key is 200, a bad one is a 4xx with a message.
    check = klui.post("/v1/providers/check", json={"provider_type": "openai", "api_key": KEY, "base_url": llm.base_url})
    assert check.status_code == 200, check.text
    bad = klui.post("/v1/providers/check", json={"provider_type": "openai", "api_key": "sk-nope", "base_url": llm.base_url})
    assert 400 <= bad.status_code < 500 and "sk-nope" not in bad.text

    # POST /v1/providers/ (name, provider_type, api_key, base_url)
    created = klui.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": KEY, "base_url": llm.base_url})
    assert created.status_code == 200, created.text
    provider = created.json()
    assert {"id", "name", "provider_type", "base_url"} <= provider.keys() and KEY not in created.text

    # GET /v1/providers/
    listed = klui.get("/v1/providers/")
    assert listed.status_code == 200 and provider["id"] in [p["id"] for p in listed.json()]

    # PATCH /v1/providers/{id}: the edit form sends a new key and base_url; the new endpoint is
    # asked for its models with the new key, and every later call goes there.
    llm.clear()
    patched = klui.patch(f"/v1/providers/{provider['id']}", json={"api_key": NEW_KEY, "base_url": moved.base_url})
    assert patched.status_code == 200, patched.text
    assert patched.json()["id"] == provider["id"] and patched.json()["base_url"] == moved.base_url
    assert NEW_KEY not in patched.text
    assert [r.api_key for r in moved.requests_to("/models")] and {r.api_key for r in moved.requests_to("/models")} == {NEW_KEY}
    assert llm.requests == []
    [stored] = [p for p in klui.get("/v1/providers/").json() if p["id"] == provider["id"]]
    assert stored["base_url"] == moved.base_url

    # GET /v1/models/ (+ ?provider_name=, ?provider_category=base|byok)
    handle = f"{name}/mock-chat-1"
    assert handle in [m["handle"] for m in klui.get("/v1/models/").json()]
    assert handle in [m["handle"] for m in klui.get("/v1/models/", params={"provider_name": name}).json()]
    assert handle in [m["handle"] for m in klui.get("/v1/models/", params={"provider_category": "byok"}).json()]
    assert klui.get("/v1/models/", params={"provider_category": "base"}).json() == []  # no base providers in Ketta

    # GET /v1/models/embedding
    embedding = f"{name}/text-embedding-3-small"
    assert embedding in [m["handle"] for m in klui.get("/v1/models/embedding").json()]

    # POST /v1/agents/ with model and embedding handles; GET /v1/agents/
    agent = klui.post("/v1/agents/", json={"name": f"klui-{uuid.uuid4().hex[:6]}", "model": handle, "embedding": embedding})
    assert agent.status_code == 200, agent.text
    agent_id = agent.json()["id"]
    assert agent.json()["llm_config"]["handle"] == handle
    assert agent_id in [a["id"] for a in klui.get("/v1/agents/").json()]

    # Messages with streaming (SSE), through the edited provider
    moved.clear()
    with klui.stream("POST", f"/v1/agents/{agent_id}/messages/stream",
                     json={"messages": [{"role": "user", "content": "hello"}], "stream_tokens": True}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    text = "".join(e.get("content") or "" for e in events if e.get("message_type") == "assistant_message")
    assert "Hello from the mock LLM." in text
    assert any(e.get("message_type") == "stop_reason" for e in events)
    assert moved.chat_requests() and {r.api_key for r in moved.chat_requests()} == {NEW_KEY}
    assert llm.requests == [], "nothing goes to the endpoint the provider had before the edit"

    # DELETE /v1/agents/{id}, DELETE /v1/providers/{id}
    assert klui.delete(f"/v1/agents/{agent_id}").status_code == 200
    assert agent_id not in [a["id"] for a in klui.get("/v1/agents/").json()]
    assert klui.delete(f"/v1/providers/{provider['id']}").status_code == 200
    assert provider["id"] not in [p["id"] for p in klui.get("/v1/providers/").json()]
    assert handle not in [m["handle"] for m in klui.get("/v1/models/").json()]
