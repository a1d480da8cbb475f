"""DELETE /v1/conversations/{id} removes the rows (stock flags them is_deleted) - issue 9, piece 7."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from mock_openai import MockOpenAI


def test_deleting_a_conversation_removes_it_and_its_isolated_blocks(shared_server, shared_db):
    name = f"conv provider {uuid.uuid4().hex[:6]}"
    with MockOpenAI(api_key="sk-conv") as llm, shared_server.client() as api:
        assert api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "sk-conv",
                                                "base_url": llm.base_url}).status_code == 200
        agent = api.post("/v1/agents/", json={"name": f"a-{uuid.uuid4().hex[:6]}", "model": f"{name}/mock-chat-1",
                                              "embedding": f"{name}/text-embedding-3-small",
                                              "memory_blocks": [{"label": "human", "value": "The user."}]})
        assert agent.status_code == 200, agent.text
        label = agent.json()["memory"]["blocks"][0]["label"]
        conversation = api.post("/v1/conversations/", params={"agent_id": agent.json()["id"]},
                                json={"summary": "to delete", "isolated_block_labels": [label]})
        assert conversation.status_code == 200, conversation.text
        conversation_id = conversation.json()["id"]
        with shared_db.connect() as conn:
            blocks = [r[0] for r in conn.execute(sa.text("SELECT block_id FROM blocks_conversations WHERE conversation_id = :c"),
                                                {"c": conversation_id})]
        assert blocks  # the isolated copy of the agent's block

        deleted = api.delete(f"/v1/conversations/{conversation_id}")
        assert deleted.status_code in (200, 204), deleted.text
        with shared_db.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM conversations WHERE id = :c"), {"c": conversation_id}).scalar() == 0
            assert conn.execute(sa.text("SELECT count(*) FROM block WHERE id = ANY(:b)"), {"b": blocks}).scalar() == 0
        assert api.delete(f"/v1/conversations/{conversation_id}").status_code == 404
