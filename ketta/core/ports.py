"""Binding the address ``ketta server`` listens on, and the one-line refusal when that fails.

Shared by the check before the slow start (``startup.check_port``) and the supervisor of
``--workers N`` (``core/serving.py``), so both bind the same way and refuse in the same words.
"""

from __future__ import annotations

import errno
import socket


def bound_socket(host: str, port: int, *, share_port: bool = False) -> socket.socket:
    """A TCP socket bound to (host, port) as uvicorn binds (SO_REUSEADDR); ``share_port`` adds SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def refusal(host: str, port: int, exc: OSError) -> str:
    """What to tell when (host, port) could not be bound, and what to do about it."""
    reason = "is in use (another server?)" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
    return f"Port {port} on {host} {reason}: pick another with --port, or stop what listens there."
