"""Tool code runs apart from the server's secrets (CVE-2025-51482).

Letta runs a tool's Python source (``POST /v1/tools/run``, ``POST /v1/agents/{id}/tools/{name}/run``,
a custom tool the LLM calls) in a child process of the server: its "local sandbox". Stock Letta
gives that process a copy of the server's whole environment and runs it as the server's OS
user in ``~/.letta/tool_execution_dir``, so tool code could read the database URI with its
password, the encryption key, the server token and every ``*_API_KEY``, and the files under
``KETTA_HOME``. Under Ketta:

- **Environment**: only the tool's own variables (sandbox and agent env vars, Letta's
  ``LETTA_AGENT_ID``/``LETTA_TOOL_ID``) on a minimal base (PATH, HOME, LANG, TMPDIR).
- **Working directory**: ``KETTA_HOME/tool_sandbox/<organization id>``, whatever directory a
  sandbox configuration names (nothing is created outside KETTA_HOME).
- **User**: when the server runs as root, the tool process runs as ``KETTA_TOOL_USER``
  (``nobody``), which owns only its organization's sandbox directory: it cannot read
  KETTA_HOME's key files, the server's ``/proc/<pid>/environ`` or memory. The switch happens
  in a small launcher (setgroups/setgid/setuid, then exec of the tool's Python), because
  Letta's own spawn call takes no user. A server run as a non-root user cannot switch users:
  tools then run as that user (clean environment and directory only) — run Ketta as root in
  its container, or keep tool code to the server token (the default).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

from ketta.core.settings import get_settings

log = logging.getLogger("ketta.tools")

SANDBOX_DIR = "tool_sandbox"
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class ToolUser:
    name: str
    uid: int
    gid: int


def tool_user() -> ToolUser | None:
    """The OS user tool code runs as: KETTA_TOOL_USER when this server is root, else None (no switch)."""
    if os.geteuid() != 0:
        _warn_not_root()
        return None
    name = get_settings().tool_user
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(f"KETTA_TOOL_USER={name!r} does not exist on this machine: create it or name another "
                           "unprivileged user (tool code never runs as root).") from None
    if entry.pw_uid == 0:
        raise RuntimeError(f"KETTA_TOOL_USER={name!r} is root: name an unprivileged user.")
    return ToolUser(name, entry.pw_uid, entry.pw_gid)


_warned = False


def _warn_not_root() -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("Tool code runs as this server's OS user (uid %d): it gets no secret from the environment, but it "
                    "can read the files this user can read, KETTA_HOME included. Run the server as root (tools then "
                    "run as KETTA_TOOL_USER) or let only the server token run tool code.", os.geteuid())


def sandbox_root() -> Path:
    return get_settings().home_dir / SANDBOX_DIR


def sandbox_dir(organization_id: str) -> Path:
    """``KETTA_HOME/tool_sandbox/<org>``, owned by the tool user (0700) when running as root."""
    root = sandbox_root()
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    root.chmod(0o711)  # traversable, not listable: each organization's directory is its own
    safe = "".join(c for c in organization_id if c.isalnum() or c in "-_") or "default"
    directory = root / safe
    directory.mkdir(mode=0o700, exist_ok=True)
    user = tool_user()
    if user is not None:
        os.chown(directory, user.uid, user.gid)
    directory.chmod(0o700)
    return directory


# Variables the dynamic loader or libc act on before the launcher has left root: never passed.
LOADER_VARIABLES = ("LD_", "GCONV_PATH", "NLSPATH", "MALLOC_", "GLIBC_TUNABLES", "HOSTALIASES", "RES_OPTIONS", "LOCALDOMAIN")


def clean_environment(tool_env: dict[str, str], directory: str) -> dict[str, str]:
    """The environment of a tool process: a minimal base, then the tool's own variables."""
    base = {"PATH": BASE_PATH, "HOME": directory, "TMPDIR": directory, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    if tool_user() is not None and get_settings().tool_python:
        base = with_server_packages(base)
    own = {k: v for k, v in tool_env.items() if v is not None and not k.upper().startswith(LOADER_VARIABLES)}
    return {**base, **own}


def with_server_packages(env: dict[str, str]) -> dict[str, str]:
    """``env`` whose PYTHONPATH also holds the server's site-packages, for another interpreter than
    the server's (KETTA_TOOL_PYTHON): it finds Letta, which the generated script imports, there.
    Letta's sandbox sets a tool's PYTHONPATH to the server's own when the server has one, which
    would leave those out; its entries are kept, the site-packages added after them."""
    import sysconfig

    paths = sysconfig.get_paths()
    entries = [*env.get("PYTHONPATH", "").split(os.pathsep), paths["purelib"], paths["platlib"]]
    return {**env, "PYTHONPATH": os.pathsep.join(dict.fromkeys(e for e in entries if e))}


def tool_python(server_python: str) -> str:
    """The interpreter a tool runs with as the tool user: KETTA_TOOL_PYTHON in place of the server's
    own (a sandbox venv's interpreter stays)."""
    configured = get_settings().tool_python
    return configured if configured and server_python == sys.executable else server_python


def hand_over(script: str, user: ToolUser) -> None:
    """The tool user must be able to read the generated script (written by the server, as root):
    Python re-opens ``/dev/fd/N``, which checks the file's own permissions."""
    os.chown(script, user.uid, user.gid)
    os.chmod(script, 0o400)


def launcher(python_executable: str, user: ToolUser) -> str:
    """An executable that opens the tool's script, drops to ``user`` (no supplementary groups) and
    execs ``python_executable`` on the open script (``/dev/fd/N``: the tool user needs no path to
    it); kept root-owned 0700 in KETTA_HOME/tool_sandbox, one per interpreter."""
    digest = hashlib.sha256(f"{python_executable}:{user.uid}:{user.gid}".encode()).hexdigest()[:12]
    path = sandbox_root() / f".launch-{digest}"
    body = (
        f"#!{sys.executable} -IS\n"
        "import os, sys\n"
        "script = os.open(sys.argv[1], os.O_RDONLY)  # opened as root: the tool user cannot reach KETTA_HOME by path\n"
        "os.set_inheritable(script, True)\n"
        f"os.setgroups([]); os.setgid({user.gid}); os.setuid({user.uid})\n"
        "if os.getuid() == 0 or os.geteuid() == 0: sys.exit('ketta: could not leave root')\n"
        "os.umask(0o077)\n"
        "try:\n"
        f"    os.execv({python_executable!r}, [{python_executable!r}, '/dev/fd/%d' % script, *sys.argv[2:]])\n"
        "except OSError as exc:\n"
        f"    sys.exit('ketta: the tool user ({user.name}) cannot run {python_executable}: ' + exc.strerror + "
        "'. Set KETTA_TOOL_PYTHON to an interpreter of the same Python version that it can run, or install Ketta where it can.')\n"
    )
    if not path.exists() or path.read_text() != body:
        sandbox_root().mkdir(mode=0o711, parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}")
        tmp.write_text(body)
        tmp.chmod(0o700)
        os.replace(tmp, path)
    return str(path)
