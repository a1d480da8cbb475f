"""End to end, as a new user does it: ``ketta server`` with no set-up (embedded PostgreSQL), a
provider on an OpenAI-compatible endpoint (the local mock), an agent made with the Letta SDK,
its answer, and the same agent after a restart.

Handles come from the server (``GET /v1/models/?provider_name=``), so the test holds whether
the server names chat models ``openai-proxy/<model>`` (stock) or ``<provider>/<model>`` (Ketta).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from letta_client import Letta

from conftest import KettaProcess
from mock_openai import MockOpenAI
from test_server import STOPPED_BY_SIGTERM, postgres_processes

PROVIDER_KEY = "sk-e2e-provider-key"
CHAT_MODEL = "mock-chat-1"
EMBEDDING_MODEL = "text-embedding-3-small"


def echo_reply(body: dict[str, Any]) -> str:
    """The mock's answer: echoes every marker word (``m-xxxx``) of the last user message."""
    user_messages = [m for m in body.get("messages", []) if m.get("role") == "user"]
    text = json.dumps(user_messages[-1].get("content")) if user_messages else ""
    return "Echo: " + " ".join(re.findall(r"m-[0-9a-f]{8}", text))


@pytest.fixture
def llm() -> Iterator[MockOpenAI]:
    """A mock OpenAI-compatible endpoint that only accepts ``PROVIDER_KEY``."""
    with MockOpenAI(chat_models=(CHAT_MODEL,), api_key=PROVIDER_KEY, reply=echo_reply) as server:
        yield server


def marker() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


def create_provider(server: KettaProcess, name: str, llm: MockOpenAI) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/v1/providers/", headers=server.headers, timeout=60, json={
        "name": name, "provider_type": "openai", "api_key": PROVIDER_KEY, "base_url": llm.base_url})
    assert response.status_code == 200, response.text
    return response.json()


def model_handles(server: KettaProcess, provider_name: str, base_url: str) -> tuple[str, str]:
    """The (chat, embedding) handles the server lists for the provider's mock models.

    Stock Letta reports the provider *type* as an embedding model's ``provider_name``, so an
    embedding model is recognised by its provider's name or, failing that, its endpoint.
    """
    chat = httpx.get(f"{server.url}/v1/models/", headers=server.headers, params={"provider_name": provider_name}, timeout=60)
    assert chat.status_code == 200, chat.text
    chat_handles = [m["handle"] for m in chat.json() if m["name"] == CHAT_MODEL and m["provider_name"] == provider_name]
    embedding = httpx.get(f"{server.url}/v1/models/embedding", headers=server.headers, timeout=60)
    assert embedding.status_code == 200, embedding.text
    embedding_handles = sorted({m["handle"] for m in embedding.json() if m["name"] == EMBEDDING_MODEL
                                and (m["provider_name"] == provider_name or m.get("embedding_endpoint") == base_url)})
    assert len(chat_handles) == 1, chat.json()
    assert len(embedding_handles) == 1, embedding.json()
    return chat_handles[0], embedding_handles[0]


def assistant_text(messages: list[Any]) -> str:
    return "".join(m.content for m in messages if getattr(m, "message_type", None) == "assistant_message")


@pytest.mark.slow
def test_sdk_agent_answers_through_the_provider_and_survives_a_restart(
    start_ketta: Callable[..., KettaProcess], tmp_path: Path, llm: MockOpenAI
) -> None:
    server = start_ketta()  # no LETTA_PG_URI: embedded PostgreSQL under KETTA_HOME
    provider_name = f"Mock LLM {uuid.uuid4().hex[:6]}"
    create_provider(server, provider_name, llm)
    chat_handle, embedding_handle = model_handles(server, provider_name, llm.base_url)

    client = Letta(base_url=server.url, api_key=server.token, timeout=120)
    agent = client.agents.create(name="e2e-agent", agent_type="letta_v1_agent", model=chat_handle,
                                 embedding=embedding_handle, memory_blocks=[{"label": "human", "value": "A tester."}])
    assert agent.llm_config.handle == chat_handle
    assert agent.embedding_config.handle == embedding_handle

    # A plain message: the answer is what the mock LLM said, and the mock saw the provider's key.
    llm.clear()
    first = marker()
    response = client.agents.messages.create(agent_id=agent.id, messages=[{"role": "user", "content": f"Remember {first}"}])
    assert assistant_text(response.messages) == f"Echo: {first}"
    chat_calls = llm.chat_requests()
    assert chat_calls, "the message reached the mock LLM"
    assert all(call.api_key == PROVIDER_KEY for call in chat_calls)
    assert chat_calls[-1].body["model"] == CHAT_MODEL
    assert first in json.dumps(chat_calls[-1].body["messages"])

    # A token-streamed message: the mock's server-sent events come back through Letta's stream.
    llm.clear()
    second = marker()
    stream = client.agents.messages.create(agent_id=agent.id, messages=[{"role": "user", "content": f"Also {second}"}],
                                           streaming=True, stream_tokens=True)
    assert assistant_text(list(stream)) == f"Echo: {second}"
    assert [call.body.get("stream") for call in llm.chat_requests()] == [True]

    # Restart on the same KETTA_HOME: SIGTERM stops everything, the agent and its history remain.
    pgdata = tmp_path / "home" / "pgdata"
    assert server.stop() in STOPPED_BY_SIGTERM, server.log_tail()
    assert postgres_processes(pgdata) == [], "SIGTERM stops the embedded PostgreSQL"
    restarted = start_ketta()
    client = Letta(base_url=restarted.url, api_key=restarted.token, timeout=120)
    assert agent.id in [a.id for a in client.agents.list()]
    kept = client.agents.retrieve(agent_id=agent.id)
    assert (kept.llm_config.handle, kept.embedding_config.handle) == (chat_handle, embedding_handle)

    llm.clear()
    third = marker()
    response = client.agents.messages.create(agent_id=agent.id, messages=[{"role": "user", "content": f"Now {third}"}])
    assert assistant_text(response.messages) == f"Echo: {third}"
    chat_calls = llm.chat_requests()
    assert chat_calls and all(call.api_key == PROVIDER_KEY for call in chat_calls)
    sent_history = json.dumps(chat_calls[-1].body["messages"])
    assert first in sent_history and second in sent_history, "the conversation before the restart reached the LLM"
