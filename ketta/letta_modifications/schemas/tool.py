"""Patch of ``letta/schemas/tool.py``: a built-in tool's JSON schema is generated once per process.

Letta's ``Tool`` validator regenerates the schema of every built-in tool (``send_message``,
``memory_insert``, ...) from its function's docstring each time a ``Tool`` is built: the agent's
tools on every read of the agent, several times per message (about 4 % of a message's server
CPU). The functions are Letta's own code and cannot change while the process runs, so the
schema is computed once per (module, function) and each caller gets its own copy
(:func:`ketta.core.memo.computed_once`).
"""

from __future__ import annotations

from typing import Any

from ketta.core import patching
from ketta.core.memo import computed_once
from ketta.core.patching import Patch

TARGET = "letta.schemas.tool:get_json_schema_from_module"


@computed_once
def _generated(module_name: str, function_name: str) -> dict:
    return patching.original(TARGET)(module_name=module_name, function_name=function_name)


def get_json_schema_from_module(module_name: str, function_name: str) -> Any:
    """Letta's schema of a built-in tool function, generated on the first call only."""
    return _generated(module_name, function_name)


PATCHES = [
    Patch(
        target=TARGET,
        replacement=get_json_schema_from_module,
        fingerprint="02b6a4a39b58be30",
        setting="lean_cpu_paths",
        why="A built-in tool's JSON schema (generated from Letta's own function) is computed once per process, "
            "not on every read of an agent's tools.",
    ),
]
