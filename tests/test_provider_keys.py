"""Which key an LLM call carries (ketta/providers/keys.py), seen at the LLM endpoint."""

from __future__ import annotations

from mock_openai import MockOpenAI


def test_a_stored_key_wins_over_the_env_fallback(api):
    """The shared server runs with KETTA_STORED_WINS_API_KEY set (see conftest): the env key is
    only a fallback for providers without a stored key."""
    with MockOpenAI() as llm:
        created = api.post("/v1/providers/", json={"name": "ketta stored wins", "provider_type": "openai",
                                                   "api_key": "sk-stored-key-wins", "base_url": llm.base_url})
        assert created.status_code == 200, created.text
        try:
            agent = api.post("/v1/agents/", json={"name": "stored-wins", "model": "ketta stored wins/mock-chat-1",
                                                   "embedding": "ketta stored wins/text-embedding-3-small",
                                                   "include_base_tools": False})
            assert agent.status_code == 200, agent.text
            llm.clear()
            sent = api.post(f"/v1/agents/{agent.json()['id']}/messages", json={"messages": [{"role": "user", "content": "hi"}]})
            assert sent.status_code == 200, sent.text
            assert {r.api_key for r in llm.chat_requests()} == {"sk-stored-key-wins"}
        finally:
            api.delete(f"/v1/providers/{created.json()['id']}")
