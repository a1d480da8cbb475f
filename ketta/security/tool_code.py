"""Who may put code on this server: the server token always; a per-user token only with
``KETTA_ALLOW_USER_TOOL_CODE=true``.

A tool's source code runs on the server (Letta's local sandbox; CVE-2025-51482). Ketta runs it
without the server's secrets and, as root, as an unprivileged user (:mod:`ketta.security.tool_isolation`),
but it still runs on the operator's machine with its network: a careful operator decides who
may do that. So by default a user token may use the tools that exist (attach them, and its
agents' LLM calls them), but not write or run code: creating or changing a tool, running a tool
directly, importing an agent file (it carries tool source), generating a tool or its schema
from source, managing sandbox configurations (pip requirements are installed on the server) or
MCP servers (a stdio MCP server is a command run on the server). Those answer 403 naming the
setting.
"""

from __future__ import annotations

import re

# (methods, path pattern after /latest -> /v1) that write or run code.
CODE_ROUTES: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = tuple(
    (frozenset(methods.split()), re.compile(pattern))
    for methods, pattern in (
        ("POST PUT", r"^/v1/tools/?$"),  # create, upsert
        ("PATCH PUT", r"^/v1/tools/[^/]+/?$"),  # modify
        ("POST", r"^/v1/tools/run/?$"),  # run source directly (CVE-2025-51482)
        ("POST", r"^/v1/tools/generate[^/]*/?$"),  # generate a tool (and run it) / a schema from source
        ("POST PUT PATCH DELETE", r"^/v1/tools/mcp(/.*)?$"),  # MCP servers (stdio: a command on the server)
        ("POST PUT PATCH DELETE", r"^/v1/mcp-servers(/.*)?$"),
        ("POST", r"^/v1/agents/[^/]+/tools/[^/]+/run/?$"),  # run an attached tool directly
        ("POST", r"^/v1/agents/import/?$"),  # agent files carry tool source code
        ("POST PUT PATCH DELETE", r"^/v1/sandbox-config(/.*)?$"),  # sandbox dirs, pip requirements, env vars
    )
)

REFUSAL = ("A user token may not create, change or run tool code on this server (nor import agent files, manage "
           "sandbox configurations or MCP servers); use the server token, or have the operator set "
           "KETTA_ALLOW_USER_TOOL_CODE=true.")


def writes_or_runs_code(method: str, path: str) -> bool:
    """Whether this request puts code on the server or runs it."""
    if path.startswith("/latest/") or path == "/latest":
        path = "/v1" + path[len("/latest"):]
    path = re.sub(r"/{2,}", "/", path)
    return any(method in methods and pattern.match(path) for methods, pattern in CODE_ROUTES)


def user_refusal(method: str, path: str) -> str | None:
    """The 403 detail for a user token's request, None when it may go on."""
    from ketta.core.settings import get_settings

    if get_settings().allow_user_tool_code or not writes_or_runs_code(method, path):
        return None
    return REFUSAL
