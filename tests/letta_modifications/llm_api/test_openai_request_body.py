"""The OpenAI SDK's request-body transform is skipped only where it cannot change the body
(ketta/llm/request_body.py, KETTA_LEAN_CPU_PATHS): what reaches the LLM endpoint is what the SDK's
own transform would have sent, and every body it cannot vouch for still goes through the SDK."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from typing import Callable

import httpx
import pytest
from pydantic import BaseModel
from openai import omit
from openai._types import NOT_GIVEN
from openai._utils import async_maybe_transform as sdk_transform
from openai._utils._json import openapi_dumps
from openai.types.beta import response_create_params as beta_response_params
from openai.types.chat import completion_create_params as chat_params

from conftest import unique
from ketta.llm.request_body import plain_body, transform_is_identity, transform_unless_identity
from mock_openai import MockOpenAI


class Metadata(BaseModel):
    topic: str

KEY = "sk-request-body"
CHAT = chat_params.CompletionCreateParamsNonStreaming
STREAMING = chat_params.CompletionCreateParamsStreaming

LETTA_LIKE_BODY = {
    "model": "mock-chat-1",
    "messages": [
        {"role": "system", "content": "You are a helpful agent."},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "send_message", "arguments": "{\"message\": \"hello\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"status\": \"OK\"}"},
    ],
    "tools": [{"type": "function", "function": {"name": "send_message", "description": "Send.", "strict": True,
                                                 "parameters": {"type": "object", "properties": {"message": {"type": "string"},
                                                                                                 "roles": {"type": "array", "items": {"enum": ("user", "tool")}}},
                                                                "required": ["message"], "additionalProperties": False}}}],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "temperature": 0.7,
    "max_completion_tokens": 1024,
    "user": "user-00000000",
    "response_format": omit,
    "seed": NOT_GIVEN,
    "stop": omit,
}


def both(body: dict | Callable[[], dict], expected_type: object) -> tuple[bytes, bytes]:
    """(Ketta's body, the SDK's body) for the same request, as the JSON the SDK sends. ``body`` may be a
    function making it, for a body that one transform consumes (an iterator)."""
    make = body if callable(body) else lambda: body

    async def run() -> tuple[object, object]:
        return await transform_unless_identity(sdk_transform, make(), expected_type), await sdk_transform(make(), expected_type)
    ours, sdks = asyncio.run(run())
    return openapi_dumps(ours), openapi_dumps(sdks)


def test_a_body_as_letta_builds_it_skips_the_walk_and_equals_the_sdks_transform():
    assert transform_is_identity(CHAT) and transform_is_identity(STREAMING)
    assert plain_body(LETTA_LIKE_BODY, CHAT) is not None  # the fast path is taken
    ours, sdks = both(LETTA_LIKE_BODY, CHAT)
    assert ours == sdks
    assert b'"response_format"' not in ours and b'"seed"' not in ours and b'"stop"' not in ours  # unset keys dropped, as the SDK does
    assert b'"enum":["user","tool"]' in ours
    as_tuple = {**LETTA_LIKE_BODY, "messages": tuple(LETTA_LIKE_BODY["messages"])}  # the SDK makes a list of it: same JSON
    assert plain_body(as_tuple, CHAT) is not None and both(as_tuple, CHAT)[0] == both(as_tuple, CHAT)[1]
    streamed = {**LETTA_LIKE_BODY, "stream": True, "stream_options": {"include_usage": True}}
    assert both(streamed, STREAMING)[0] == both(streamed, STREAMING)[1]


@pytest.mark.parametrize("odd", [
    lambda: {"metadata": {"sent": datetime.datetime(2026, 12, 4, 7, 0)}},     # not JSON
    lambda: {"messages": iter(LETTA_LIKE_BODY["messages"])},                  # the SDK makes a list of an iterator
    lambda: {"tools": [{"type": "function", "function": {"name": "f", "description": omit}}]},  # unset deeper down
    lambda: {"metadata": Metadata(topic="usage")},                           # a pydantic model: the SDK dumps it
], ids=["datetime", "iterator", "unset-inside", "model"])
def test_a_body_it_cannot_vouch_for_goes_through_the_sdk(odd: Callable[[], dict]):
    assert plain_body({**LETTA_LIKE_BODY, **odd()}, CHAT) is None
    ours, sdks = both(lambda: {**LETTA_LIKE_BODY, **odd()}, CHAT)
    assert ours == sdks


def test_a_type_with_an_alias_is_transformed_by_the_sdk():
    """A parameter type that renames a key (the beta Responses API's ``betas`` header field) is never skipped."""
    body = {"model": "gpt-5-mini", "input": "hi", "betas": ["responses_multi_agent=v1"]}
    assert not transform_is_identity(beta_response_params.ResponseCreateParamsNonStreaming)
    ours, sdks = both(body, beta_response_params.ResponseCreateParamsNonStreaming)
    assert ours == sdks and b'"openai-beta"' in ours and b'"betas"' not in ours


def test_what_reached_the_llm_is_what_the_sdk_would_have_sent(api: httpx.Client):
    """Through the server: a blocking and a streaming message; each body that reached the endpoint
    is one the SDK's transform leaves as it is, tools and history included."""
    with MockOpenAI(api_key=KEY) as llm:
        name = unique("body")
        made = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": KEY, "base_url": llm.base_url})
        assert made.status_code == 200, made.text
        agent = api.post("/v1/agents/", json={"name": f"body-{uuid.uuid4().hex[:6]}", "model": f"{name}/mock-chat-1",
                                               "embedding": f"{name}/text-embedding-3-small"})
        assert agent.status_code == 200, agent.text
        url = f"/v1/agents/{agent.json()['id']}/messages"
        assert api.post(url, json={"messages": [{"role": "user", "content": "hello"}]}).status_code == 200
        streamed = api.post(f"{url}/stream", json={"messages": [{"role": "user", "content": "again"}], "stream_tokens": True})
        assert streamed.status_code == 200, streamed.text
        bodies = [r.body for r in llm.chat_requests()]
    assert len(bodies) >= 2 and any(b.get("stream") for b in bodies)
    for body in bodies:
        assert body["tools"] and body["messages"]
        expected_type = STREAMING if body.get("stream") else CHAT
        assert plain_body(body, expected_type) == body  # taken: the fast path, not the SDK's walk
        assert asyncio.run(sdk_transform(body, expected_type)) == body
