"""GET /v1/models/ (the patched SyncServer.list_llm_models_async): a provider whose stored models
cannot be turned into model configs is left out with a warning, as stock Letta leaves out a BYOK
provider it cannot list; the other providers' models are still listed (no 500)."""

from __future__ import annotations

import uuid
from typing import Iterator

import httpx
import pytest
import sqlalchemy as sa

from mock_openai import MockOpenAI


@pytest.fixture(scope="module")
def api(shared_server) -> Iterator[httpx.Client]:
    with shared_server.client() as client:
        yield client


def create(api: httpx.Client, name: str, llm: MockOpenAI) -> dict:
    response = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "sk-good",
                                                "base_url": llm.base_url})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_provider_with_a_broken_model_row_is_left_out_and_the_others_are_listed(api, shared_server, shared_db):
    tag = uuid.uuid4().hex[:6]
    with MockOpenAI(api_key="sk-good") as llm:
        good, broken = create(api, f"listed {tag}", llm), create(api, f"broken {tag}", llm)
        with shared_db.begin() as conn:  # a value LLMConfig refuses (Letta's Literal of endpoint types)
            changed = conn.execute(sa.text("UPDATE provider_models SET model_endpoint_type = 'no-such-endpoint' "
                                           "WHERE provider_id = :p AND model_type = 'llm'"), {"p": broken["id"]})
            assert changed.rowcount == 1
        try:
            response = api.get("/v1/models/")
            assert response.status_code == 200, response.text
            handles = {m["handle"] for m in response.json() if m.get("model_type") != "embedding"}  # chat models
            assert f"listed {tag}/mock-chat-1" in handles
            assert not any(h.startswith(f"broken {tag}/") for h in handles)
            assert f"Provider 'broken {tag}': its models are left out of the listing" in shared_server.log_text()
        finally:
            api.delete(f"/v1/providers/{broken['id']}")
