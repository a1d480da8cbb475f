"""Fixes of Letta 0.16.8 bugs that upstream never released (patches of kind "fix").

Each test reproduces the upstream report against a real server and the local mocks, twice: on a
server with every fix off (``KETTA_LETTA_FIXES=false``: Letta's own behaviour) the bug shows; on
the shared server (fixes on, the default) it is gone. The report each answers is named per test.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import KettaProcess, server_of_its_own, unique
from mock_openai import MockOpenAI

KEY = "sk-fixes-0d9c"


@pytest.fixture(scope="module")
def fixes_off(tmp_path_factory: pytest.TempPathFactory, pg_uri: str) -> Iterator[KettaProcess]:
    """A server with every fix patch off: what stock Letta 0.16.8 does (Ketta's features stay on)."""
    with server_of_its_own(pg_uri, tmp_path_factory.mktemp("fixes-off-home"), "fixesoff", KETTA_LETTA_FIXES="false") as proc:
        yield proc


# The "fixes_off" server is reached through getfixturevalue, which collection cannot see: name the
# module's group (its tests on one worker, the server started once) and the slow mark here.
pytestmark = pytest.mark.xdist_group("tests/test_letta_fixes.py")


@pytest.fixture(params=[pytest.param("fixes_off", marks=pytest.mark.slow), "fixes_on"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, httpx.Client]]:
    """("fixes_off" | "fixes_on", a client of that server)."""
    proc: KettaProcess = request.getfixturevalue("fixes_off" if request.param == "fixes_off" else "shared_server")
    with proc.client() as client:
        yield request.param, client


def make_provider(api: httpx.Client, llm: MockOpenAI, prefix: str) -> str:
    name = unique(prefix)
    response = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": KEY, "base_url": llm.base_url})
    assert response.status_code == 200, response.text
    return name


def make_agent(api: httpx.Client, provider: str, model: str, **extra: object) -> str:
    body = {"name": f"fix-{uuid.uuid4().hex[:6]}", "model": f"{provider}/{model}",
            "embedding": f"{provider}/text-embedding-3-small", **extra}
    response = api.post("/v1/agents/", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def said(messages: list[dict]) -> str:
    return "".join(m["content"] for m in messages if m.get("message_type") == "assistant_message" and isinstance(m.get("content"), str))


# letta-ai/letta#3144 -------------------------------------------------------------------------

def test_3144_responses_api_requests_carry_no_user(server):
    """An OpenAI reasoning model (gpt-5*) on a letta_v1_agent goes through the Responses API; Letta
    0.16.8 puts the actor's id in ``user``, which a Responses endpoint that does not take it refuses
    with 400 'Unsupported parameter: user'. With the fix the request has no ``user`` and the agent
    answers."""
    mode, api = server
    with MockOpenAI(api_key=KEY, chat_models=("gpt-5-mini",), responses_refuse_user=True,
                    reply="Answered through the Responses API.") as llm:
        provider = make_provider(api, llm, "responses")
        agent_id = make_agent(api, provider, "gpt-5-mini", agent_type="letta_v1_agent")
        response = api.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": "hello"}]})
        calls = llm.responses_requests()
        assert calls, [r.path for r in llm.requests]
        assert not llm.chat_requests()  # the Responses API, not chat completions
        if mode == "fixes_off":
            assert all(str(r.body.get("user", "")).startswith("user-") for r in calls), [r.body.get("user") for r in calls]
            assert response.status_code != 200 or "Answered through the Responses API." not in said(response.json()["messages"])
        else:
            assert all("user" not in r.body for r in calls), [r.body.get("user") for r in calls]
            assert response.status_code == 200, response.text
            assert "Answered through the Responses API." in said(response.json()["messages"])
            assert calls[0].api_key == KEY and calls[0].body["model"] == "gpt-5-mini"


# letta-ai/letta#3304 -------------------------------------------------------------------------

LETTA_RATE_LIMIT_SENTENCE = "Rate limit exceeded for LLM model provider. Please wait before making another request."
LETTA_BYOK_RATE_LIMIT_SENTENCE = ("Rate limit exceeded on your API key. Please check your provider's rate limits and billing, "
                                  "or reduce request frequency.")
PROVIDER_TEXT = "Insufficient balance or no resource package. Please recharge."


def error_events(response: httpx.Response) -> list[dict]:
    """The ``event: error`` payloads of an SSE answer."""
    import json

    found, lines = [], response.text.splitlines()
    for index, line in enumerate(lines):
        if line == "event: error" and index + 1 < len(lines) and lines[index + 1].startswith("data: "):
            found.append(json.loads(lines[index + 1][6:]))
    return found


def test_3304_a_rate_limited_call_tells_the_caller_what_the_provider_said(server):
    """A provider answering 429 with its own reason (Zhipu's 'Insufficient balance ...'): Letta
    0.16.8 tells the caller only 'Rate limit exceeded ... Please wait', blocking and streamed; with
    the fix ``message`` carries the provider's text. ``detail`` has it either way."""
    mode, api = server
    with MockOpenAI(api_key=KEY) as llm:
        provider = make_provider(api, llm, "rate-limited")
        agent_id = make_agent(api, provider, "mock-chat-1")
        for _ in range(8):  # every try of both messages (Ketta retries a 429 once)
            llm.queue_error(429, PROVIDER_TEXT, type="insufficient_quota_1113")
        body = {"messages": [{"role": "user", "content": "hello"}]}

        blocking = api.post(f"/v1/agents/{agent_id}/messages", json=body)
        assert blocking.status_code == 429, blocking.text
        error = blocking.json()["error"]
        assert error["type"] == "llm_rate_limit" and PROVIDER_TEXT in error["detail"]

        streamed = api.post(f"/v1/agents/{agent_id}/messages/stream", json={**body, "stream_tokens": False})
        assert streamed.status_code == 200, streamed.text
        [event] = error_events(streamed)
        assert event["error_type"] == "llm_rate_limit" and PROVIDER_TEXT in event["detail"]
        assert llm.chat_requests(), "the LLM was never called"

        if mode == "fixes_off":
            assert error["message"] == LETTA_BYOK_RATE_LIMIT_SENTENCE  # every Ketta provider is a BYOK row
            assert event["message"] == LETTA_RATE_LIMIT_SENTENCE
        else:
            assert error["message"] == f"Rate limited by the LLM provider: {PROVIDER_TEXT}"
            assert event["message"] == f"Rate limited by the LLM provider: {PROVIDER_TEXT}"


# letta-ai/letta#3164 -------------------------------------------------------------------------

@pytest.fixture(params=["fixes_off", "fixes_on"])
def embedder_fix(request: pytest.FixtureRequest) -> Iterator[str]:
    """The file embedder as stock Letta has it, or with the #3164 fix applied (in this process)."""
    from ketta.core import patching
    from ketta.letta_modifications.services.file_processor.embedder import openai_embedder

    [patch] = [p for p in openai_embedder.PATCHES if p.target == openai_embedder.TARGET]
    applied_here = request.param == "fixes_on" and patching.apply(patch)
    was_applied = patching.is_applied(patch)
    if request.param == "fixes_off" and was_applied:
        patching.revert(patch)
    try:
        yield request.param
    finally:
        if applied_here:
            patching.revert(patch)
        elif request.param == "fixes_off" and was_applied:
            patching.apply(patch)


async def test_3164_an_uploaded_file_on_azure_embeddings_is_embedded_by_azure(embedder_fix, monkeypatch):
    """Letta's file processor embeds with ``OpenAIEmbedder`` (folders/sources upload). With an
    Azure embedding config it sends OpenAI's ``POST {endpoint}/embeddings``, which Azure answers
    404: no passage. With the fix the chunks go to Azure's deployment path with the ``api-key``
    header and come back as passages. (In this process: the upload route needs an Azure provider
    whose model listing the mock does not serve; the embedder is what the route calls.)"""
    from letta.schemas.embedding_config import EmbeddingConfig
    from letta.schemas.user import User
    from letta.services.file_processor.embedder.openai_embedder import OpenAIEmbedder
    from letta.settings import model_settings

    azure_key = "azure-key-5c1e"
    with MockOpenAI(api_key=azure_key) as azure:
        endpoint = azure.base_url.removesuffix("/v1")
        monkeypatch.setattr(model_settings, "azure_api_key", azure_key)
        monkeypatch.setattr(model_settings, "azure_base_url", endpoint)
        monkeypatch.setattr(model_settings, "azure_api_version", "2024-10-21")
        config = EmbeddingConfig(embedding_endpoint_type="azure", embedding_endpoint=endpoint,
                                 embedding_model="text-embedding-3-small", embedding_dim=1536)
        actor = User(id="user-00000000-0000-4000-8000-000000000000", organization_id="org-00000000-0000-4000-8000-000000000000",
                     name="file uploader")
        chunks = ["The first chunk of the uploaded file.", "The second chunk."]
        embedder = OpenAIEmbedder(embedding_config=config)
        if embedder_fix == "fixes_off":
            with pytest.raises(Exception):
                await embedder.generate_embedded_passages("file-1", "source-1", chunks, actor)
            assert [r.path for r in azure.requests] and all(r.path.split("?")[0] == "/embeddings" for r in azure.requests)
            return
        passages = await embedder.generate_embedded_passages("file-1", "source-1", chunks, actor)
        assert [p.text for p in passages] == chunks and all(len(p.embedding) == 1536 for p in passages)
        calls = azure.requests
        assert calls and all(r.path.startswith("/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21")
                             for r in calls), [r.path for r in calls]
        assert all(r.headers.get("api-key") == azure_key for r in calls)
        # Endpoint types Letta has no client of its own for (the proposal's ProviderType(...) raised
        # ValueError on these) keep the OpenAI client.
        from letta.llm_api.openai_client import OpenAIClient

        local = OpenAIEmbedder(embedding_config=EmbeddingConfig(embedding_endpoint_type="lmstudio", embedding_endpoint=endpoint,
                                                                embedding_model="nomic-embed", embedding_dim=768))
        assert type(local.client) is OpenAIClient


# letta-ai/letta#3156 -------------------------------------------------------------------------

def test_3156_a_conversation_whose_approval_run_was_cancelled_takes_new_messages(server):
    """A conversation's agent asks to run a tool that needs approval; the streamed run ends
    ``completed`` with stop_reason ``requires_approval`` (a new message is refused 409 on every
    server: that approval is live, and a fix that took completed runs for orphans would lose it). The
    caller cancels the run by id: Letta 0.16.8's ``cancel_run`` looks for the pending approval in
    the agent's own message list, not the conversation's, so the request stays the conversation's
    last message and every later message is refused 409 ("waiting for approval") for good. With the fix an
    approval whose run was cancelled (or failed) is closed as denied and the message is answered."""
    mode, api = server
    with MockOpenAI(api_key=KEY, force_tool="conversation_search", reply="Back after the cancelled run.") as llm:
        provider = make_provider(api, llm, "approvals")
        agent_id = make_agent(api, provider, "mock-chat-1", agent_type="letta_v1_agent")
        approval = api.patch(f"/v1/agents/{agent_id}/tools/approval/conversation_search", json={"requires_approval": True})
        assert approval.status_code == 200, approval.text
        conversation = api.post("/v1/conversations/", params={"agent_id": agent_id}, json={})
        assert conversation.status_code == 200, conversation.text
        conversation_id = conversation.json()["id"]

        def send(text: str) -> httpx.Response:
            return api.post(f"/v1/conversations/{conversation_id}/messages",
                            json={"messages": [{"role": "user", "content": text}], "streaming": False})

        # Streamed, as Klui sends: the run ends 'completed' with stop_reason 'requires_approval'.
        first = api.post(f"/v1/conversations/{conversation_id}/messages",
                         json={"messages": [{"role": "user", "content": "search our history"}], "stream_tokens": False})
        assert first.status_code == 200, first.text
        events = [json.loads(line[6:]) for line in first.text.splitlines() if line.startswith("data: {")]
        assert [e["stop_reason"] for e in events if e.get("message_type") == "stop_reason"] == ["requires_approval"], events[-2:]
        [request] = [e for e in events if e.get("message_type") == "approval_request_message"]
        run_id = request["run_id"]
        waiting = api.get(f"/v1/runs/{run_id}").json()
        assert (waiting["status"], waiting["stop_reason"]) == ("completed", "requires_approval"), waiting
        live = send("are you there?")  # the approval is live: refused on every server
        assert live.status_code == 409 and "waiting for approval" in live.text, live.text

        cancelled = api.post(f"/v1/agents/{agent_id}/messages/cancel", json={"run_ids": [run_id]})
        assert cancelled.status_code == 200, cancelled.text
        assert api.get(f"/v1/runs/{run_id}").json()["status"] == "cancelled"

        after = send("hello again")
        if mode == "fixes_off":
            assert after.status_code == 409 and "waiting for approval" in after.text, after.text
            assert send("still stuck?").status_code == 409
            return
        assert after.status_code == 200, after.text
        assert "Back after the cancelled run." in said(after.json()["messages"])
        last = llm.chat_requests()[-1].body["messages"]
        [call] = [c for m in last for c in m.get("tool_calls") or [] if c["function"]["name"] == "conversation_search"]
        [result] = [m for m in last if m.get("role") == "tool" and m.get("tool_call_id") == call["id"]]
        assert "cancelled" in str(result["content"]), result  # the orphaned call is answered as denied
        assert last[-1]["role"] == "user" and "hello again" in str(last[-1]["content"])
        assert send("and once more").status_code == 200
