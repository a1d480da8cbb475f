"""Patches of ``letta/services/tool_sandbox/local_sandbox.py`` (and the environment gathering of
``base.py``): tool code gets a clean environment, a directory under KETTA_HOME and, when the
server is root, an unprivileged user. The logic and its reasons: :mod:`ketta.security.tool_isolation`."""

from __future__ import annotations

from typing import Any

from letta.schemas.enums import SandboxType

from ketta.core import patching
from ketta.security import tool_isolation
from ketta.core.patching import Patch

GATHER = "letta.services.tool_sandbox.base:AsyncToolSandboxBase._gather_env_vars"
RUN = "letta.services.tool_sandbox.local_sandbox:AsyncToolSandboxLocal.run"
SPAWN = "letta.services.tool_sandbox.local_sandbox:AsyncToolSandboxLocal._execute_tool_subprocess"


async def _gather_env_vars(self: Any, agent_state: Any, additional_env_vars: Any, sbx_id: str, is_local: bool) -> dict:
    """The tool's own variables only: never a copy of the server's environment."""
    env = await patching.original(GATHER)(self, agent_state, additional_env_vars, sbx_id, False)
    if is_local:
        directory = str(tool_isolation.sandbox_dir(self.user.organization_id))
        env = tool_isolation.clean_environment(env, directory)
    return env


async def run(self: Any, agent_state: Any = None, additional_env_vars: Any = None) -> Any:
    """Letta's run, in ``KETTA_HOME/tool_sandbox/<org>`` whatever directory the sandbox config names."""
    config = self.provided_sandbox_config or await self.sandbox_config_manager.get_or_create_default_sandbox_config_async(
        sandbox_type=SandboxType.LOCAL, actor=self.user)
    directory = tool_isolation.sandbox_dir(self.user.organization_id)
    self.provided_sandbox_config = config.model_copy(update={"config": {**(config.config or {}), "sandbox_dir": str(directory)}})
    return await patching.original(RUN)(self, agent_state, additional_env_vars)


async def _execute_tool_subprocess(self: Any, sbx_config: Any, python_executable: str, temp_file_path: str,
                                   env: dict, cwd: str) -> Any:
    """As root: the process starts through a launcher that becomes the tool user before Python
    runs the tool (the launcher hands the script over as an open file: no path into KETTA_HOME)."""
    user = tool_isolation.tool_user()
    if user is not None:
        tool_isolation.hand_over(temp_file_path, user)
        interpreter = tool_isolation.tool_python(python_executable)
        if interpreter != python_executable:  # Letta may have put the server's PYTHONPATH in place of the site-packages
            env = tool_isolation.with_server_packages(env)
        python_executable = tool_isolation.launcher(interpreter, user)
    return await patching.original(SPAWN)(self, sbx_config, python_executable, temp_file_path, env, cwd)


WHY = "CVE-2025-51482: tool code ran as the server's OS user with the server's environment (database password, encryption key, server token, *_API_KEY) in ~/.letta/tool_execution_dir."

PATCHES = [
    Patch(target=GATHER, replacement=_gather_env_vars, fingerprint="55857c0e75e34a3e", setting="tool_isolation",
          why=WHY + " The local sandbox now gets the tool's own variables on a minimal base only."),
    Patch(target=RUN, replacement=run, fingerprint="abe92287f924586b", setting="tool_isolation",
          why=WHY + " Tools now run in KETTA_HOME/tool_sandbox/<organization>, whatever a sandbox config names."),
    Patch(target=SPAWN, replacement=_execute_tool_subprocess, fingerprint="44c3f55b13809fa6", setting="tool_isolation",
          why=WHY + " As root, the tool process now switches to KETTA_TOOL_USER (nobody) before the tool's code runs."),
]
