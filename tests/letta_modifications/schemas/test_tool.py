"""Built-in tool schemas computed once per process (ketta/letta_modifications/schemas/tool.py,
KETTA_LEAN_CPU_PATHS): every read of an agent still shows each built-in tool with the schema
Letta generates from its function."""

from __future__ import annotations

import json
import uuid

import httpx

from conftest import unique
from mock_openai import MockOpenAI

KEY = "sk-tool-schema"


def test_an_agents_built_in_tools_carry_lettas_schema_on_every_read(api: httpx.Client):
    from letta.functions.functions import get_json_schema_from_module
    with MockOpenAI(api_key=KEY) as llm:
        name = unique("schema")
        assert api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": KEY,
                                                "base_url": llm.base_url}).status_code == 200
        agent = api.post("/v1/agents/", json={"name": f"schema-{uuid.uuid4().hex[:6]}", "model": f"{name}/mock-chat-1",
                                               "embedding": f"{name}/text-embedding-3-small"})
        assert agent.status_code == 200, agent.text
        agent_id = agent.json()["id"]
        reads = [api.get(f"/v1/agents/{agent_id}").json()["tools"] for _ in range(2)]
    built_in = [tool for tool in reads[0] if tool["tool_type"] != "custom"]
    assert built_in, reads[0]
    module_of = _built_in_modules()
    for tool in built_in:
        expected = get_json_schema_from_module(module_name=module_of[tool["tool_type"]], function_name=tool["name"])
        assert tool["json_schema"] == json.loads(json.dumps(expected)), tool["name"]  # as JSON: tuples are lists
    assert reads[0] == reads[1]


def _built_in_modules() -> dict[str, str]:
    """tool_type -> the module Letta generates that type's schemas from (letta/schemas/tool.py)."""
    from letta import constants

    return {
        "letta_core": constants.LETTA_CORE_TOOL_MODULE_NAME,
        "letta_memory_core": constants.LETTA_CORE_TOOL_MODULE_NAME,
        "letta_sleeptime_core": constants.LETTA_CORE_TOOL_MODULE_NAME,
        "letta_multi_agent_core": constants.LETTA_MULTI_AGENT_TOOL_MODULE_NAME,
        "letta_voice_sleeptime_core": constants.LETTA_VOICE_TOOL_MODULE_NAME,
        "letta_builtin": constants.LETTA_BUILTIN_TOOL_MODULE_NAME,
        "letta_files_core": constants.LETTA_FILES_TOOL_MODULE_NAME,
    }
