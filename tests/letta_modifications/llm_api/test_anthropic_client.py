"""Anthropic-compatible endpoints: an ``anthropic`` provider with a base_url lists, checks and calls
there, tool use and streaming included, with the stored key (issue 9, piece 2).

The endpoint is tests/mock_anthropic.py on 127.0.0.1 (Anthropic's Messages wire format).
"""

from __future__ import annotations

import json
import uuid
from typing import Iterator

import httpx
import pytest

from conftest import unique
from ketta.letta_modifications.llm_api.anthropic_client import sdk_base_url
from mock_anthropic import MockAnthropic
from mock_openai import MockOpenAI

KEY = "sk-ant-mock-key"


@pytest.fixture
def claude() -> Iterator[MockAnthropic]:
    with MockAnthropic(api_key=KEY) as mock:
        yield mock


def test_sdk_base_url_keeps_anthropic_default_and_drops_a_trailing_v1():
    assert sdk_base_url(None) is None and sdk_base_url("https://api.anthropic.com/v1") is None
    assert sdk_base_url("https://api.anthropic.com/") is None
    assert sdk_base_url("https://api.moonshot.ai/anthropic") == "https://api.moonshot.ai/anthropic"
    assert sdk_base_url("http://127.0.0.1:9000/v1/") == "http://127.0.0.1:9000"


def test_check_and_listing_use_the_base_url_and_the_key(api, claude):
    ok = api.post("/v1/providers/check", json={"provider_type": "anthropic", "api_key": KEY, "base_url": claude.base_url})
    assert ok.status_code == 200, ok.text
    refused = api.post("/v1/providers/check", json={"provider_type": "anthropic", "api_key": "sk-ant-wrong", "base_url": claude.base_url})
    assert refused.status_code == 401, refused.text
    assert "invalid x-api-key" in refused.json()["detail"]
    name = unique("claude-compatible")
    claude.clear()
    created = api.post("/v1/providers/", json={"name": name, "provider_type": "anthropic", "api_key": KEY, "base_url": claude.base_url})
    assert created.status_code == 200, created.text
    assert [r.api_key for r in claude.requests_to("/v1/models")] == [KEY]
    models = api.get("/v1/models/", params={"provider_name": name}).json()
    assert [(m["handle"], m["provider_type"]) for m in models] == [(f"{name}/claude-mock-1", "anthropic")]
    wrong = api.post("/v1/providers/", json={"name": unique("claude-refused"), "provider_type": "anthropic",
                                             "api_key": "sk-ant-wrong", "base_url": claude.base_url})
    assert wrong.status_code == 400 and "invalid x-api-key" in wrong.json()["detail"]


def _events(response: httpx.Response) -> list[dict]:
    events = []
    for line in response.text.splitlines():
        if line.startswith("data: ") and line[6:].strip() not in ("[DONE]", ""):
            events.append(json.loads(line[6:]))
    return events


def test_an_agent_runs_tool_call_exchanges_streamed_and_not_against_the_base_url(api, claude):
    name, embedder = unique("claude agent"), unique("embedder")
    with MockOpenAI(api_key="sk-embed") as openai_mock:
        assert api.post("/v1/providers/", json={"name": embedder, "provider_type": "openai", "api_key": "sk-embed",
                                                "base_url": openai_mock.base_url}).status_code == 200
        created = api.post("/v1/providers/", json={"name": name, "provider_type": "anthropic", "api_key": KEY, "base_url": claude.base_url})
        assert created.status_code == 200, created.text
        agent = api.post("/v1/agents/", json={"name": f"a-{uuid.uuid4().hex[:6]}", "model": f"{name}/claude-mock-1",
                                              "embedding": f"{embedder}/text-embedding-3-small"})
        assert agent.status_code == 200, agent.text
        agent_id = agent.json()["id"]

        for streamed in (False, True, False, True):
            claude.clear()
            body = {"messages": [{"role": "user", "content": f"hello ({'streamed' if streamed else 'plain'})"}]}
            if streamed:
                response = api.post(f"/v1/agents/{agent_id}/messages/stream", json={**body, "stream_tokens": True})
                assert response.status_code == 200, response.text
                messages = _events(response)
            else:
                response = api.post(f"/v1/agents/{agent_id}/messages", json=body)
                assert response.status_code == 200, response.text
                messages = response.json()["messages"]
            calls = claude.message_requests()
            assert len(calls) >= 2, [r.path for r in claude.requests]  # a tool call, then the answer after its result
            assert {r.api_key for r in claude.requests} == {KEY}
            assert all(bool(r.body.get("stream")) == streamed for r in calls)
            first_tools = {t["name"] for t in calls[0].body.get("tools", [])}
            assert "conversation_search" in first_tools
            results = [b for m in calls[1].body["messages"] if isinstance(m.get("content"), list)
                       for b in m["content"] if b.get("type") == "tool_result"]
            assert results, calls[1].body["messages"][-2:]
            kinds = [m.get("message_type") for m in messages]
            assert "tool_call_message" in kinds and "tool_return_message" in kinds, kinds
            said = "".join(m["content"] for m in messages if m.get("message_type") == "assistant_message" and isinstance(m.get("content"), str))
            assert "Hello from the mock Anthropic endpoint." in said, messages
