"""Agents on a Kimi thinking model exchange several messages with tool calls through a real
``ketta server``; the mock Moonshot validates every chat request against Moonshot's rules.
Also: the request adjustments as a pure function, and Moonshot's errors reaching the caller."""

from __future__ import annotations

import json
import uuid
from typing import Any, Iterator

import httpx
import pytest

from conftest import KettaProcess
from mock_moonshot import MockMoonshot, Reply
from mock_openai import MockOpenAI

KEY = "sk-moonshot-agent-5e21"
THINKING_MODEL = "kimi-k2-thinking"


@pytest.fixture(scope="module")
def moon() -> Iterator[MockMoonshot]:
    with MockMoonshot(api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def providers(shared_server: KettaProcess, moon: MockMoonshot) -> Iterator[tuple[str, str]]:
    """(kimi provider name, embedding handle of another provider)."""
    with MockOpenAI(api_key="sk-embeddings") as embedder:
        kimi, emb = f"kimi-{uuid.uuid4().hex[:6]}", f"emb-{uuid.uuid4().hex[:6]}"
        for body in ({"name": kimi, "provider_type": "kimi", "api_key": KEY, "base_url": moon.base_url},
                     {"name": emb, "provider_type": "openai", "api_key": "sk-embeddings", "base_url": embedder.base_url}):
            response = httpx.post(f"{shared_server.url}/v1/providers/", headers=shared_server.headers, json=body, timeout=60)
            assert response.status_code == 200, response.text
        yield kimi, f"{emb}/text-embedding-3-small"


@pytest.fixture(autouse=True)
def _clean(moon: MockMoonshot) -> Iterator[None]:
    moon.violations.clear()
    moon.script.clear()
    moon.fail_next = []
    yield
    assert moon.violations == [], "requests Moonshot would refuse"


def make_agent(server: KettaProcess, providers: tuple[str, str], agent_type: str, model: str = THINKING_MODEL, **extra: Any) -> str:
    kimi, embedding = providers
    response = httpx.post(f"{server.url}/v1/agents/", headers=server.headers, timeout=60, json={
        "name": f"a-{uuid.uuid4().hex[:6]}", "agent_type": agent_type, "model": f"{kimi}/{model}", "embedding": embedding,
        "memory_blocks": [{"label": "human", "value": "Name: Ada"}, {"label": "persona", "value": "A helpful agent."}], **extra})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def send(server: KettaProcess, agent_id: str, text: str, stream: bool) -> list[dict[str, Any]]:
    body = {"messages": [{"role": "user", "content": text}]}
    if not stream:
        response = httpx.post(f"{server.url}/v1/agents/{agent_id}/messages", headers=server.headers, json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()["messages"]
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", f"{server.url}/v1/agents/{agent_id}/messages/stream", headers=server.headers, json={**body, "stream_tokens": True}, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    assert not [e for e in events if e.get("message_type") == "error_message"], events
    return events


def assistant_text(messages: list[dict[str, Any]]) -> str:
    return "".join(m.get("content") or "" for m in messages if m.get("message_type") == "assistant_message")


def tool_calls(messages: list[dict[str, Any]]) -> list[str]:
    return [m["tool_call"]["name"] for m in messages if m.get("message_type") == "tool_call_message" and m.get("tool_call", {}).get("name")]


@pytest.mark.parametrize("agent_type", ["memgpt_v2_agent", "letta_v1_agent"])
@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
def test_agent_talks_to_a_thinking_model_with_tool_calls(
    shared_server: KettaProcess, moon: MockMoonshot, providers: tuple[str, str], agent_type: str, stream: bool
) -> None:
    agent_id = make_agent(shared_server, providers, agent_type)
    before = len(moon.chat_requests())
    for text in ("Hi, I am Ada.", "I like tea.", "What do you remember?"):
        messages = send(shared_server, agent_id, text, stream)
        assert "Noted, thank you!" in assistant_text(messages)
    requests = [r.body for r in moon.chat_requests()[before:]]
    assert len(requests) >= 6  # a memory tool call and an answer per user message
    assert all(r["model"] == THINKING_MODEL and r.get("tool_choice") != "required" for r in requests)
    assert all(r.api_key == KEY for r in moon.chat_requests()[before:])
    echoed = [m for r in requests for m in r["messages"] if m.get("role") == "assistant" and m.get("tool_calls")]
    assert all(m.get("reasoning_content") for m in echoed)  # Letta's own first message too
    assert any(m["reasoning_content"].startswith("Thinking step") for m in echoed)  # the mock checks they match
    assert all(not any(k in m for k in ("reasoning_content_signature", "redacted_reasoning_content")) for r in requests for m in r["messages"])
    assert KEY not in shared_server.log_text()


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
def test_memgpt_agent_plain_text_answer_becomes_send_message(
    shared_server: KettaProcess, moon: MockMoonshot, providers: tuple[str, str], stream: bool
) -> None:
    agent_id = make_agent(shared_server, providers, "memgpt_v2_agent")
    moon.script.append(Reply(content="Plain words, no tool."))
    messages = send(shared_server, agent_id, "Say something.", stream)
    assert "Plain words, no tool." in assistant_text(messages), messages
    assert assistant_text(messages).count("Plain words") == 1


def test_temperature_is_clamped_and_fixed(shared_server: KettaProcess, moon: MockMoonshot, providers: tuple[str, str]) -> None:
    # letta_v1 agents on a non-OpenAI-reasoning model get reasoning off: kimi-k2.5 then runs
    # without thinking, whose only accepted temperature is 0.6
    for model, temperature, expected in (("kimi-k2-0905-preview", 1.7, 1.0), ("kimi-k2.5", 0.3, 0.6), ("kimi-k2-turbo-preview", 0.3, 0.3)):
        agent_id = make_agent(shared_server, providers, "letta_v1_agent", model=model,
                              model_settings={"provider_type": "openai", "temperature": temperature})
        before = len(moon.chat_requests())
        send(shared_server, agent_id, "Hello", stream=False)
        sent = [r.body["temperature"] for r in moon.chat_requests()[before:]]
        assert sent and set(sent) == {expected}, (model, sent)
        if model == "kimi-k2.5":
            assert all(r.body.get("thinking") == {"type": "disabled"} for r in moon.chat_requests()[before:])


@pytest.mark.parametrize(
    ("status", "kind", "text", "expected_status"),
    [
        (429, "rate_limit_reached_error", "Your account org-1 request reached max request: 3, please try again after 1 seconds", 429),
        (429, "exceeded_current_quota_error", "Your account org-1 is suspended, please check your plan and billing details", 402),
        (429, "engine_overloaded_error", "The engine is currently overloaded, please try again later", 503),
        (400, "content_filter", "The request was rejected because it was considered high risk", 400),
    ],
)
def test_moonshot_errors_reach_the_caller(
    shared_server: KettaProcess, moon: MockMoonshot, providers: tuple[str, str], status: int, kind: str, text: str, expected_status: int
) -> None:
    agent_id = make_agent(shared_server, providers, "letta_v1_agent", model="kimi-k2-0905-preview")
    moon.fail_next = [(status, kind, text)] * 5  # Letta may retry
    response = httpx.post(f"{shared_server.url}/v1/agents/{agent_id}/messages", headers=shared_server.headers, timeout=120,
                          json={"messages": [{"role": "user", "content": "hello"}]})
    moon.fail_next = []
    assert response.status_code == expected_status, response.text
    assert text in response.text and "Moonshot" in response.text


def _replay(arguments: str | None, step: int, parameters: set[str], content: str | None = None) -> tuple[str, str, str | None, str]:
    """Stream a Moonshot answer (reasoning_content, optional text, a send_message call whose arguments
    come in ``step``-character fragments) through MoonshotStream into Letta's memgpt-style streaming
    interface: (assistant text shown, inner thoughts shown, tool call arguments, recorded reasoning)."""
    import asyncio
    import logging

    from letta.interfaces.openai_streaming_interface import OpenAIStreamingInterface
    from openai.types.chat import ChatCompletionChunk

    from ketta.providers.kimi_client import MoonshotAdjustment, MoonshotStream

    def chunk(delta: dict, finish: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk.model_validate({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": THINKING_MODEL,
                                                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    chunks = [chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "Thinking "}), chunk({"reasoning_content": "hard."})]
    if content:
        chunks.append(chunk({"content": content}))
    if arguments:
        chunks.append(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                             "function": {"name": "send_message", "arguments": arguments[:step]}}]}))
        chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[i:i + step]}}]}) for i in range(step, len(arguments), step)]
    chunks.append(chunk({}, "tool_calls" if arguments else "stop"))

    class Upstream:
        async def __aenter__(self) -> None:
            return None

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def __aiter__(self) -> Any:
            for c in chunks:
                yield c

    stream = MoonshotStream(Upstream(), MoonshotAdjustment(relaxed_forced_call=content is not None, tool_names=["send_message"],
                                                           send_message_parameters=parameters))
    interface = OpenAIStreamingInterface(use_assistant_message=True, put_inner_thoughts_in_kwarg="thinking" in parameters)

    async def run() -> list[Any]:
        return [m async for m in interface.process(stream)]

    logging.disable(logging.WARNING)
    try:
        shown = asyncio.run(run())
    finally:
        logging.disable(logging.NOTSET)
    kinds = [getattr(m.message_type, "value", m.message_type) for m in shown]
    text = "".join(m.content for m, kind in zip(shown, kinds) if kind == "assistant_message")
    thoughts = "".join(m.reasoning for m, kind in zip(shown, kinds) if kind == "reasoning_message")
    return text, thoughts, interface.get_tool_call_object().function.arguments, stream.reasoning


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
@pytest.mark.parametrize(
    ("arguments", "parameters"),
    [
        ('{"thinking": "I should say \\"hi\\".", "message": "Hello, \\"Ada\\"!"}', {"thinking", "message"}),
        ('{"message": "Hello, \\"Ada\\"!", "thinking": "I should say \\"hi\\"."}', {"thinking", "message"}),  # out of schema order
        ('{"message": "Hello, \\"Ada\\"!"}', {"message"}),
    ],
    ids=["thoughts-first", "message-first", "no-thoughts"],
)
def test_streamed_send_message_reaches_letta_memgpt_parser(arguments: str, parameters: set[str], step: int) -> None:
    """However the arguments are cut, the memgpt-style interface shows the whole message and the
    inner thoughts, and the tool call it hands to the agent loop is unchanged."""
    text, thoughts, sent, reasoning = _replay(arguments, step, parameters)
    assert text.replace('\\"', '"') == 'Hello, "Ada"!'
    if "thinking" in parameters:
        assert thoughts.strip().replace('\\"', '"') == 'I should say "hi".'
    assert json.loads(sent) == json.loads(arguments)
    assert reasoning == "Thinking hard."


def test_streamed_plain_text_becomes_send_message_for_letta_memgpt_parser() -> None:
    text, thoughts, sent, reasoning = _replay(None, 1, {"thinking", "message"}, content="Plain words.")
    assert text == "Plain words." and thoughts.strip() == "Thinking hard."
    assert json.loads(sent) == {"thinking": "Thinking hard.", "message": "Plain words."}
    assert reasoning == "Thinking hard."
