"""Test servers forked from a process that has already imported the heavy third-party libraries.

A ``ketta server`` start costs ~15 s of CPU, and about half of it is importing libraries that do
the same thing in every start (the Anthropic and OpenAI SDKs' types, MCP, Mistral, FastAPI,
SQLAlchemy, ...). The suite starts dozens of servers; this module lets each xdist worker fork them
from a *zygote* that imported those libraries once (the list found by a probe process that
imports Letta's app), so each start pays only for Ketta and Letta.

What a forked server runs is the same as ``python -m ketta server ...``: ``ketta/__main__.py``
under ``runpy`` with the test's argv, environment (replaced whole), working directory and log
file as stdout/stderr. Ketta and Letta are imported fresh in it (the zygote never imports them),
so their settings come from the test's environment as in a subprocess. The zygote imports the
libraries with an environment scrubbed of Letta's, Ketta's and the LLM SDKs' variables, and never
those that read a setting at import (``NOT_PRELOADED``).

The server is a real child of the test process (which is made a child subreaper, and the zygote
double-forks), so ``poll``/``wait``/``returncode`` and signals work as with ``subprocess.Popen``.

Not forked (a plain subprocess instead): servers whose environment sets ``PYTHONPATH`` or whose
command is not this interpreter's ``-m ketta``, and tests that read the server's
``/proc/<pid>/environ`` (a forked process shows its parent's start-up environment there).
``KETTA_TEST_FORKED_SERVERS=false`` turns forking off for a whole run.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

# What importing Letta's app imports, found by a probe process (below); never preloaded: Ketta and
# Letta themselves, and libraries that read a setting from the environment at import.
NOT_PRELOADED = ("ketta", "letta", "__main__", "huggingface_hub", "transformers", "tokenizers",
                 "sentence_transformers", "ddtrace", "nltk", "opentelemetry", "sitecustomize")
_SCRUBBED = ("LETTA_", "KETTA_", "OPENAI_", "ANTHROPIC_", "MISTRAL_", "GEMINI_", "GOOGLE_", "PYTHONPATH", "HF_")
_PROBE = """
import sys
sys.argv.append("--no-generation")
import letta.server.rest_api.app
print("\\n".join(sys.modules))
"""
_PR_SET_CHILD_SUBREAPER = 36


def enabled() -> bool:
    return os.environ.get("KETTA_TEST_FORKED_SERVERS", "true").lower() not in ("0", "false", "no", "off")


class ForkedProcess:
    """The part of ``subprocess.Popen``'s interface the tests use, for a forked server."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: treat as gone
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.05)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """A forked copy of this process that imports what Letta's app imports (but Letta) and forks
    servers on request."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the zygote
            ours.close()
            try:
                _zygote_main(theirs)
            finally:
                os._exit(0)
        theirs.close()
        self.pid, self.sock = pid, ours

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> ForkedProcess:
        _send(self.sock, (argv, env, str(cwd), str(log_path)))
        answer = _receive(self.sock)
        if isinstance(answer, str):
            raise RuntimeError(f"the zygote could not fork a server: {answer}")
        return ForkedProcess(answer, argv)

    def close(self) -> None:
        self.sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


_zygote: Zygote | None = None
_probe_cache: Path | None = None


def start_zygote(shared_dir: Path | None = None) -> None:
    """Fork the zygote now (early: before this process imports Ketta's patch targets or Letta).

    ``shared_dir``: a directory the run's workers share; the probe of what Letta imports (a process
    importing all of Letta, ~12 s of CPU) then runs once for the run instead of once per worker."""
    global _zygote, _probe_cache
    if _zygote is None and enabled() and sys.platform == "linux":
        _probe_cache = shared_dir / "zygote-preloads.txt" if shared_dir is not None else None
        _zygote = Zygote()
        atexit.register(_zygote.close)


def popen(argv: list[str], env: dict[str, str], cwd: Path, log_file, fork: bool = True) -> subprocess.Popen | ForkedProcess:
    """A server process: forked from the zygote when it can be, else a plain subprocess."""
    runs_ketta = argv[:3] == [sys.executable, "-m", "ketta"]
    global _zygote
    if _zygote is not None and fork and runs_ketta and "PYTHONPATH" not in env:
        try:
            return _zygote.spawn(["ketta", *argv[3:]], env, cwd, Path(log_file.name))
        except (RuntimeError, OSError, EOFError) as exc:
            # A zygote that cannot fork costs speed, not correctness: this worker's servers are
            # plain subprocesses from now on (said once on stderr, shown with -rA / in the log).
            print(f"forked test servers off for this worker: {exc}", file=sys.stderr)
            _zygote = None
    return subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd)


# --------------------------------------------------------------------------------------------
# Inside the zygote and the servers it forks.

def _send(sock: socket.socket, obj: object) -> None:
    data = pickle.dumps(obj)
    sock.sendall(struct.pack("!I", len(data)) + data)


def _receive(sock: socket.socket) -> object:
    header = _exactly(sock, 4)
    return pickle.loads(_exactly(sock, struct.unpack("!I", header)[0]))


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks = b""
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise EOFError("the other side closed")
        chunks += chunk
    return chunks


def _quiet_standard_streams(target_fd: int) -> None:
    """stdin from /dev/null, stdout and stderr to ``target_fd`` (pytest-xdist talks over the
    worker's own stdin/stdout: nothing forked may touch them)."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(target_fd, 1)
    os.dup2(target_fd, 2)
    os.close(null)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.__stdout__, sys.__stderr__, sys.__stdin__ = sys.stdout, sys.stderr, sys.stdin


def _zygote_main(sock: socket.socket) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_WRONLY)
    _quiet_standard_streams(null)
    os.close(null)
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 65536)
    for name in [n for n in os.environ if n.startswith(_SCRUBBED)]:
        del os.environ[name]  # what the preloaded libraries see at import: no test's or developer's setting
    for name in _modules_letta_imports():
        try:
            __import__(name)
        except BaseException:  # noqa: BLE001 - a module that cannot be imported alone is imported by the server
            pass
    while True:
        try:
            argv, env, cwd, log_path = _receive(sock)
        except EOFError:
            return
        read_end, write_end = os.pipe()
        middle = os.fork()
        if middle == 0:  # double fork: the server's parent exits, so it is re-parented to the test process
            os.close(read_end)
            try:
                server = os.fork()
                if server == 0:
                    os.close(write_end)
                    sock.close()
                    _run_server(argv, env, cwd, log_path)
                answer: object = server
            except BaseException as exc:  # noqa: BLE001 - told to the test process
                answer = f"fork failed: {exc!r}"
            os.write(write_end, pickle.dumps(answer))
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(middle, 0)
        _send(sock, pickle.loads(data) if data else f"the forking process died (wait status {status})")


def _modules_letta_imports() -> list[str]:
    """The third-party modules importing Letta's app loads, in import order: read from the run's
    shared cache, or probed (the first worker's zygote; the others wait on the lock) and cached."""
    if _probe_cache is None:
        return _probe_letta_imports()
    import fcntl

    with open(_probe_cache.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _probe_cache.exists():
            listed = _probe_cache.read_text().splitlines()
        else:
            listed = _probe_letta_imports()
            if listed:
                _probe_cache.write_text("\n".join(listed))
    return [name for name in listed if name not in sys.modules]


def _probe_letta_imports() -> list[str]:
    """What importing Letta's app loads (third-party only), from a probe process with a scrubbed
    environment and a throwaway HOME (Letta writes under ~/.letta)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ketta-zygote-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
        env["HOME"] = home
        try:
            probe = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=home, capture_output=True,
                                   text=True, timeout=900)
        except (OSError, subprocess.SubprocessError):
            return []
    if probe.returncode != 0:
        return []
    return [name for name in probe.stdout.splitlines()
            if name and name.split(".")[0] not in NOT_PRELOADED and name not in sys.modules]


def _run_server(argv: list[str], env: dict[str, str], cwd: str, log_path: str) -> None:
    """``python -m ketta <argv>`` in this (forked) process; never returns."""
    code = 1
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _quiet_standard_streams(log_fd)
        os.close(log_fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        atexit._clear()  # the test process's handlers are not the server's
        logging.root.handlers.clear()
        for name in [n for n in sys.modules if n.split(".")[0] in ("ketta", "letta", "conftest", "mock_openai")]:
            del sys.modules[name]
        sys.argv = list(argv)
        import runpy

        try:
            runpy.run_module("ketta", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - printed like an uncaught exception, then exit 1
            import traceback

            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
