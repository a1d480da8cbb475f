"""Run the suite in a network namespace of its own that has only a loopback interface.

Tests send traffic to 127.0.0.1 only, and several test that Ketta *refuses* other addresses (the
URL guard, redirects, image URLs, callbacks, operator keys). Should such a guard fail, the
request must still not leave the machine: in a fresh network namespace with ``lo`` up there is
no route anywhere but 127.0.0.0/8 and ::1, so a connection elsewhere fails at once.

Entered by the pytest process before it starts workers or servers (they inherit it), when it can
(root, or CAP_SYS_ADMIN, and a kernel that allows it); otherwise the run goes on in the host's
network and says so in its closing line. ``KETTA_TEST_LOOPBACK_ONLY=false`` skips it.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import socket
import struct
from urllib.parse import urlsplit

_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

# What enter() did, also told to the workers and servers started after it (they inherit it).
STATE_VARIABLE = "KETTA_TEST_NETWORK"
state = os.environ.get(STATE_VARIABLE, "host network (not entered)")
HOST_NAMESPACE_VARIABLE = "KETTA_TEST_HOST_NETNS"


def enter() -> str:
    """Move this process into a new network namespace with only ``lo`` up; returns what happened."""
    global state
    if os.environ.get("KETTA_TEST_LOOPBACK_ONLY", "true").lower() in ("0", "false", "no", "off"):
        state = "host network (KETTA_TEST_LOOPBACK_ONLY=false)"
        return state
    external = urlsplit(os.environ.get("LETTA_PG_URI", "")).hostname
    if external and external not in ("127.0.0.1", "localhost", "::1"):
        state = f"host network (LETTA_PG_URI names {external})"
        return state
    host = os.open("/proc/self/ns/net", os.O_RDONLY)  # kept open: host_network() enters it again
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        os.close(host)
        state = f"host network (unshare: {os.strerror(ctypes.get_errno())})"
        return state
    os.environ[HOST_NAMESPACE_VARIABLE] = f"/proc/{os.getpid()}/fd/{host}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))
    state = os.environ[STATE_VARIABLE] = "loopback only"
    return state


def is_loopback_only() -> bool:
    return os.environ.get(STATE_VARIABLE, state) == "loopback only"


def host_network(command: list[str]) -> list[str]:
    """``command`` run in the host's network: only for what must reach the package registry
    (building and resolving the wheel in tests/test_packaging.py), never for Ketta."""
    host = os.environ.get(HOST_NAMESPACE_VARIABLE)
    if not is_loopback_only() or not host:
        return command
    return [shutil.which("nsenter") or "/usr/bin/nsenter", f"--net={host}", "--", *command]
