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


def _klui_llm_model(entry: dict) -> dict:
    """What Klui's ``LLMModel.fromJson`` (lib/core/models/llm_model.dart) reads: these four are
    cast ``as String`` (a missing one throws and the picker shows an error); the rest fall back."""
    for field in ("handle", "name", "display_name", "provider_name"):
        assert isinstance(entry.get(field), str), f"Klui cannot read {field!r} of {entry}"
    return {
        "handle": entry["handle"],
        "model": entry.get("model") or entry.get("embedding_model") or "",
        "model_type": entry.get("model_type") or ("embedding" if "embedding_model" in entry else "llm"),
    }


def test_klui_agent_screen(klui, llm):
    """agent_create_screen.dart, call by call: providers, models per provider for both pickers
    (the same ``/v1/models/?provider_name=`` list), create the agent, then its chat sends a message."""
    name = f"Klui screen {uuid.uuid4().hex[:6]}"
    created = klui.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": KEY, "base_url": llm.base_url})
    assert created.status_code == 200, created.text

    # _loadProvidersAndModels: GET /v1/providers/
    assert name in [p["name"] for p in klui.get("/v1/providers/").json()]

    # _loadLLMModelsForProvider and _loadEmbeddingModelsForProvider: both GET /v1/models/?provider_name=NAME
    listed = klui.get("/v1/models/", params={"provider_name": name})
    assert listed.status_code == 200, listed.text
    offered = {m["handle"]: m for m in map(_klui_llm_model, listed.json())}
    chat, embedding = f"{name}/mock-chat-1", f"{name}/text-embedding-3-small"
    assert offered[chat]["model_type"] == "llm"
    assert offered[embedding] == {"handle": embedding, "model": "text-embedding-3-small", "model_type": "embedding"}
    assert {h for h, m in offered.items() if m["model_type"] == "embedding"} == {
        f"{name}/text-embedding-3-small", f"{name}/text-embedding-3-large", f"{name}/text-embedding-ada-002"}
    assert all(m["provider_name"] == name for m in listed.json())
    assert [m["handle"] for m in listed.json() if m["model_type"] == "llm"] == [chat]  # chat models first, as listed before
    # what /v1/models/embedding gets right stays: the provider named, embedding ids only there
    [from_embedding_list] = [m for m in klui.get("/v1/models/embedding").json() if m["handle"] == embedding]
    assert from_embedding_list["provider_name"] == name and from_embedding_list["embedding_dim"] == 1536
    # the other filters still apply to embedding entries
    assert embedding in [m["handle"] for m in klui.get("/v1/models/", params={"provider_category": "byok"}).json()]
    assert klui.get("/v1/models/", params={"provider_category": "base"}).json() == []

    # A chat picker offering an embedding id: picking it as the chat model is a clear 4xx, nothing stored
    before = {a["id"] for a in klui.get("/v1/agents/").json()}
    wrong = klui.post("/v1/agents/", json={"name": f"klui-{uuid.uuid4().hex[:6]}", "model": embedding, "embedding": embedding})
    assert 400 <= wrong.status_code < 500, wrong.text
    assert "text-embedding-3-small" in wrong.json()["detail"]
    assert {a["id"] for a in klui.get("/v1/agents/").json()} == before

    # _handleCreate: CreateAgentRequest.toJson() = name, model, embedding, system
    body = {"name": f"klui-{uuid.uuid4().hex[:6]}", "model": offered[chat]["handle"], "embedding": offered[embedding]["handle"],
            "system": "You are a helpful assistant."}
    agent = klui.post("/v1/agents/", json=body)
    assert agent.status_code == 200, agent.text
    assert agent.json()["llm_config"]["handle"] == chat
    assert agent.json()["embedding_config"]["handle"] == embedding
    assert agent.json()["embedding_config"]["embedding_model"] == "text-embedding-3-small"

    # chat_providers.dart _sendMessageInternal: POST /messages/stream with stream_tokens false
    llm.clear()
    with klui.stream("POST", f"/v1/agents/{agent.json()['id']}/messages/stream",
                     json={"messages": [{"role": "user", "content": "hello"}], "stream_tokens": False}) as stream:
        assert stream.status_code == 200
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    text = "".join(e.get("content") or "" for e in events if e.get("message_type") == "assistant_message")
    assert "Hello from the mock LLM." in text
    assert [r.body["model"] for r in llm.chat_requests()] == ["mock-chat-1"]
    klui.delete(f"/v1/agents/{agent.json()['id']}")
    klui.delete(f"/v1/providers/{created.json()['id']}")


def _user_messages(klui: httpx.Client, agent_id: str, text: str) -> int:
    listed = klui.get(f"/v1/agents/{agent_id}/messages", params={"limit": 100})
    assert listed.status_code == 200, listed.text
    return sum(1 for m in listed.json() if m.get("message_type") == "user_message" and text in json.dumps(m.get("content")))


@pytest.mark.parametrize("upstream,answered,wait", [(503, 503, "7"), (500, 502, None), (504, 504, None)])
def test_blocking_message_upstream_fault_is_a_gateway_error_and_a_resend_stores_once(klui, llm, upstream, answered, wait):
    """Klui's RetryClient re-sends any 5xx: the provider's fault is 502/503/504 naming it (with its
    Retry-After), never 500, and re-sending after it stores the user message once."""
    name = f"Klui 5xx {uuid.uuid4().hex[:6]}"
    provider = klui.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": KEY, "base_url": llm.base_url})
    assert provider.status_code == 200, provider.text
    agent = klui.post("/v1/agents/", json={"name": f"klui-{uuid.uuid4().hex[:6]}", "model": f"{name}/mock-chat-1",
                                          "embedding": f"{name}/text-embedding-3-small"})
    assert agent.status_code == 200, agent.text
    agent_id = agent.json()["id"]
    text = f"resend me {uuid.uuid4().hex[:6]}"
    for _ in range(6):  # more than the SDK's and Ketta's retries of one call
        llm.queue_error(upstream, "The engine is currently overloaded", retry_after=wait)
    failed = klui.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": text}]})
    assert failed.status_code == answered, failed.text
    body = failed.json()
    assert name in body["detail"] and str(upstream) in body["detail"]
    assert body["error"]["provider"] == name and body["error"]["upstream_status"] == upstream
    assert failed.headers.get("retry-after") == wait
    assert KEY not in failed.text
    assert _user_messages(klui, agent_id, text) == 0

    llm.clear()  # the provider is back; Klui re-sends the same request
    resent = klui.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": text}]})
    assert resent.status_code == 200, resent.text
    assert _user_messages(klui, agent_id, text) == 1
    klui.delete(f"/v1/agents/{agent_id}")
    klui.delete(f"/v1/providers/{provider.json()['id']}")
