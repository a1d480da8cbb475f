"""An OpenAI-compatible provider offers only the embedding models its own /models names (issue 22,
item 11). Stock Letta 0.16.8 stores OpenAI's three (ada-002, 3-small, 3-large) for every such
endpoint, so /v1/models/embedding and Klui's picker offered models the endpoint does not have."""

from __future__ import annotations

import httpx
import pytest

from conftest import unique
from mock_openai import MockOpenAI


def embedding_handles(api: httpx.Client, name: str) -> list[str]:
    listed = api.get("/v1/models/embedding")
    assert listed.status_code == 200, listed.text
    return sorted(m["handle"] for m in listed.json() if m.get("provider_name") == name)


@pytest.mark.parametrize(("served", "offered"), [
    ({}, []),  # a chat-only endpoint (a local llama.cpp, vLLM serving one chat model)
    ({"text-embedding-3-small": 1536}, ["text-embedding-3-small"]),
])
def test_only_the_embedding_models_the_endpoint_lists(api: httpx.Client, served: dict, offered: list[str]) -> None:
    name = unique("emb")
    with MockOpenAI(embedding_models=served) as llm:
        created = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "sk-x", "base_url": llm.base_url})
        assert created.status_code == 200, created.text
        assert embedding_handles(api, name) == [f"{name}/{model}" for model in offered]
        models = api.get("/v1/models/", params={"provider_name": name}).json()
        assert sorted(m["handle"] for m in models if m["model_type"] == "embedding") == [f"{name}/{model}" for model in offered]
        assert f"{name}/mock-chat-1" in [m["handle"] for m in models if m["model_type"] == "llm"]
