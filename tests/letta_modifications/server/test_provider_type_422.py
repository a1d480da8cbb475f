"""An unknown provider_type (issue 22, item 11): 422 in one sentence listing the types that can be
created (stock: a Python repr of pydantic's errors listing letta, chatgpt_oauth, pool ... too)."""

from __future__ import annotations

import httpx

from conftest import unique


def test_an_unknown_provider_type_is_a_plain_422_with_the_creatable_types(api: httpx.Client) -> None:
    answer = api.post("/v1/providers/", json={"name": unique("typ"), "provider_type": "opanai", "api_key": "sk-x"})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and detail.startswith("provider_type 'opanai' is not a provider type (field 'provider_type'); use one of: anthropic, "), detail
    listed = detail.split("use one of: ", 1)[1].split(" (", 1)[0].split(", ")
    assert {"openai", "anthropic", "kimi", "ollama", "azure"} <= set(listed), listed
    assert not {"letta", "chatgpt_oauth", "pool", "fireworks", "hugging-face"} & set(listed), listed
    assert "{'type'" not in detail and "ctx" not in detail


def test_a_type_that_cannot_be_created_lists_the_ones_that_can(api: httpx.Client) -> None:
    answer = api.post("/v1/providers/", json={"name": unique("typ"), "provider_type": "letta", "api_key": "sk-x"})
    assert answer.status_code == 422, answer.text
    assert "choose one of: anthropic, " in answer.json()["detail"] and "'openai' for any OpenAI-compatible API" in answer.json()["detail"]


def test_other_validation_errors_keep_letta_s_answer(api: httpx.Client) -> None:
    answer = api.post("/v1/providers/", json={"provider_type": "openai", "api_key": "sk-x"})  # no name
    assert answer.status_code == 422, answer.text
    assert "trace_id" in answer.json() and "name" in answer.json()["detail"], answer.text
    listed = api.get("/v1/models/", params={"provider_type": "opanai"})
    assert listed.status_code == 422 and "(query parameter 'provider_type')" in listed.json()["detail"], listed.text
