"""Moonshot's request rules as a pure function: ``adjust_chat_request`` on the request dict Letta
built, for every model family whose rules differ (DESIGN.md, Moonshot API facts)."""

from __future__ import annotations

from typing import Any

import pytest

from ketta.providers.kimi_client import adjust_chat_request
from letta.schemas.llm_config import LLMConfig


def config(model: str, enable_reasoner: bool | None = None) -> LLMConfig:
    """An agent's config; ``enable_reasoner`` None leaves Letta's default."""
    reasoner = {} if enable_reasoner is None else {"enable_reasoner": enable_reasoner}
    return LLMConfig(model=model, model_endpoint_type="openai", model_endpoint="http://127.0.0.1:9/v1",
                     context_window=131072, **reasoner)


def adjusted(model: str, enable_reasoner: bool | None = None, **request: Any) -> dict[str, Any]:
    data = {"model": model, "messages": [{"role": "user", "content": "hi"}], **request}
    adjust_chat_request(data, config(model, enable_reasoner), None)
    return data


@pytest.mark.parametrize(
    ("model", "enable_reasoner", "sent", "expected"),
    [
        ("kimi-k2.5", True, 0.3, 1.0),  # thinking on: only 1.0
        ("kimi-k2.6", None, 0.0, 1.0),  # thinking is on by default
        ("kimi-k2.5", False, 1.0, 0.6),  # thinking off: only 0.6
        ("kimi-k2.6", False, 0.2, 0.6),
        ("kimi-k3", None, 0.2, 1.0),
        ("kimi-k3-preview", False, 0.7, 1.0),
        ("kimi-k2.7-code", None, 0.0, 1.0),
        ("kimi-k2.7-code-preview", None, 0.5, 1.0),
        ("kimi-k2-turbo-preview", None, -0.5, 0.0),  # clamped into [0, 1]
        ("kimi-k2-turbo-preview", None, 1.7, 1.0),
        ("kimi-k2-0905-preview", None, 0.35, 0.35),  # free choice inside the range
        ("moonshot-v1-8k", None, 0.0, 0.0),
    ],
)
def test_temperature_is_what_moonshot_accepts(model: str, enable_reasoner: bool | None, sent: float, expected: float) -> None:
    assert adjusted(model, enable_reasoner, temperature=sent)["temperature"] == expected


def test_fixed_temperature_is_set_even_when_letta_sent_none() -> None:
    assert adjusted("kimi-k3")["temperature"] == 1.0
    assert "temperature" not in adjusted("kimi-k2-0905-preview")


def test_switching_thinking_off_is_sent_to_moonshot() -> None:
    assert adjusted("kimi-k2.5", False)["extra_body"] == {"thinking": {"type": "disabled"}}
    assert "extra_body" not in adjusted("kimi-k2.5", True)
    assert "extra_body" not in adjusted("kimi-k2-thinking")  # always thinks; nothing to switch


@pytest.mark.parametrize(
    ("model", "enable_reasoner", "choice", "expected"),
    [
        ("kimi-k2-0905-preview", None, "required", "auto"),  # never supported
        ("kimi-k2-thinking", None, {"type": "function", "function": {"name": "send_message"}}, "auto"),  # named + thinking
        ("kimi-k2.5", False, {"type": "function", "function": {"name": "send_message"}},
         {"type": "function", "function": {"name": "send_message"}}),  # named without thinking is fine
        ("kimi-k2-0905-preview", None, "auto", "auto"),
    ],
)
def test_tool_choice_is_one_moonshot_supports(model: str, enable_reasoner: bool | None, choice: Any, expected: Any) -> None:
    tools = [{"type": "function", "function": {"name": "send_message", "parameters": {"properties": {"message": {}}}}}]
    assert adjusted(model, enable_reasoner, tools=tools, tool_choice=choice)["tool_choice"] == expected


def test_thinking_model_gets_reasoning_content_back_on_earlier_tool_calls() -> None:
    earlier = {"role": "assistant", "content": None, "reasoning_content_signature": "x",
               "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    data = adjusted("kimi-k2-thinking", messages=[{"role": "user", "content": "hi"}, earlier])
    sent = data["messages"][1]
    assert sent["reasoning_content"], "Moonshot answers 400 without it"
    assert "reasoning_content_signature" not in sent, "Letta's internal fields are not sent"
