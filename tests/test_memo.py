"""ketta.core.memo: a value computed once per process, each caller getting a copy of its own."""

from __future__ import annotations

import pytest

from ketta.core.memo import computed_once


def test_computed_once_per_arguments_and_each_caller_gets_its_own_copy():
    calls: list[tuple[str, str]] = []

    @computed_once
    def schema(module_name: str, function_name: str) -> dict:
        calls.append((module_name, function_name))
        return {"name": function_name, "parameters": {"properties": {"message": {"type": "string"}}}}

    first = schema("letta.functions", "send_message")
    first["parameters"]["properties"].clear()  # a caller changing its value
    second = schema("letta.functions", "send_message")
    assert second["parameters"]["properties"] == {"message": {"type": "string"}}
    assert schema("letta.functions", "memory_insert")["name"] == "memory_insert"
    assert calls == [("letta.functions", "send_message"), ("letta.functions", "memory_insert")]


def test_an_error_is_not_remembered():
    attempts = []

    @computed_once
    def flaky(name: str) -> dict:
        attempts.append(name)
        if len(attempts) == 1:
            raise ValueError("first call fails")
        return {"name": name}

    with pytest.raises(ValueError):
        flaky("x")
    assert flaky("x") == {"name": "x"} and len(attempts) == 2
