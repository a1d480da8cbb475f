"""A mistyped handle (issue 22, item 4): 404 naming it, with close handles the caller can use
(stock: 'Handle X not found, must be one of []' for a chat handle, a 400 for an embedding handle)."""

from __future__ import annotations

import httpx
import pytest

from conftest import unique
from ketta.providers.handle_suggestions import message
from mock_openai import MockOpenAI


def test_the_message_suggests_close_handles_else_some_else_says_what_to_do() -> None:
    usable = ["work/gpt-4o-mini", "work/gpt-4o", "home/claude-sonnet-4"]
    assert message("work/gpt-4o-mnii", "llm", usable) == (
        "Model handle 'work/gpt-4o-mnii' not found; did you mean 'work/gpt-4o-mini' or 'work/gpt-4o'? (GET /v1/models/ lists them)")
    assert "did you mean 'work/gpt-4o-mini'" in message("WORK/GPT-4O-MINII", "llm", usable), "case does not hide a match"
    far = message("nothing/alike-at-all", "llm", usable)
    assert "the handles you can use: 'home/claude-sonnet-4', 'work/gpt-4o', 'work/gpt-4o-mini'" in far, far
    many = message("zzz", "llm", [f"p/m{i:02d}" for i in range(20)])
    assert many.count("'p/m") == 8 and "and 12 more" in many
    none = message("p/text-embeding", "embedding", [])
    assert none == ("Embedding handle 'p/text-embeding' not found; you have no embedding model yet: create a provider "
                    "(POST /v1/providers/) and use one of its handles (GET /v1/models/embedding lists them)")
    assert "[]" not in none


@pytest.fixture
def provider(api: httpx.Client, llm: MockOpenAI) -> str:
    name = unique("typo")
    created = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "sk-good", "base_url": llm.base_url})
    assert created.status_code == 200, created.text
    return name


def test_a_chat_handle_typo_is_a_404_with_the_close_handle(api: httpx.Client, provider: str) -> None:
    answer = api.post("/v1/agents/", json={"name": unique("agent"), "model": f"{provider}/mock-chat-l",
                                           "embedding": f"{provider}/text-embedding-3-small"})
    assert answer.status_code == 404, answer.text
    detail = answer.json()["detail"]
    assert f"Model handle '{provider}/mock-chat-l' not found; did you mean '{provider}/mock-chat-1'" in detail, detail
    assert "must be one of []" not in detail
    assert api.get("/v1/agents/", params={"name": "nothing-made"}).status_code == 200


def test_an_embedding_handle_typo_is_a_404_not_a_400(api: httpx.Client, provider: str) -> None:
    answer = api.post("/v1/agents/", json={"name": unique("agent"), "model": f"{provider}/mock-chat-1",
                                           "embedding": f"{provider}/text-embeding-3-small"})
    assert answer.status_code == 404, answer.text
    detail = answer.json()["detail"]
    assert f"Embedding handle '{provider}/text-embeding-3-small' not found; did you mean '{provider}/text-embedding-3-small'" in detail


def test_a_handle_typo_on_an_agent_update_names_it_too(api: httpx.Client, provider: str) -> None:
    agent = api.post("/v1/agents/", json={"name": unique("agent"), "model": f"{provider}/mock-chat-1",
                                          "embedding": f"{provider}/text-embedding-3-small"})
    assert agent.status_code == 200, agent.text
    changed = api.patch(f"/v1/agents/{agent.json()['id']}", json={"model": f"{provider}/mock-chat-2"})
    assert changed.status_code == 404 and f"did you mean '{provider}/mock-chat-1'" in changed.json()["detail"], changed.text
