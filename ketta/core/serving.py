"""``ketta server --workers N``: every worker listens on a socket of its own.

uvicorn's ``--workers`` binds one socket in the supervisor and hands the same listening socket to
every worker. When clients open keep-alive connections at once (16 clients of a benchmark, a
proxy's pool), the worker that wakes first accepts nearly all of them and serves them alone while
the other idles: 16 clients on 2 workers ran at about one core. Here the supervisor binds one
socket per worker on the same address with ``SO_REUSEPORT`` and each worker listens only on its
own, so the kernel spreads new connections over the workers by their addresses.

The supervisor binds the sockets (not the workers) so the port is held before any worker starts
and a taken port stops the start at once. Only processes of the same user that also set
``SO_REUSEPORT`` can bind beside them: another ``ketta server --workers N``. So the supervisor
first takes the address's claim, an abstract Unix socket named after it, which one process at a
time can hold; two such servers started at the same instant on one port cannot both serve it.
"""

from __future__ import annotations

import logging
import signal
import socket
from typing import Any

import uvicorn
from uvicorn._subprocess import get_subprocess
from uvicorn.supervisors.multiprocess import HANDLED_SIGNALS, Multiprocess

from ketta.core import ports

logger = logging.getLogger("uvicorn.error")


class PortTaken(RuntimeError):
    """The address is claimed or bound by another process: the message says which and what to do."""


def claim_address(host: str, port: int) -> socket.socket:
    """Hold the claim on (host, port) for as long as the returned socket is open (closed at exit).

    ``SO_REUSEPORT`` lets any process of the same user bind beside these sockets; the claim, an
    abstract Unix socket whose name is the address, is what keeps a second multi-worker Ketta out.
    """
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0ketta-serving-{host}-{port}")
    except OSError:
        claim.close()
        raise PortTaken(f"Port {port} on {host} is in use by another `ketta server --workers`: pick another "
                        "with --port, or stop that server.") from None
    return claim


def worker_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) that other workers' sockets may share (``SO_REUSEPORT``)."""
    sock = ports.bound_socket(host, port, share_port=True)
    sock.set_inheritable(True)
    return sock


class SocketPerWorker(Multiprocess):
    """uvicorn's supervisor (signals, shutdown), but worker ``i`` is started with ``[sockets[i]]`` only."""

    def startup(self) -> None:
        logger.info("Started parent process [%d], a listening socket per worker", self.pid)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self.signal_handler)
        for own in self.sockets:
            process = get_subprocess(config=self.config, target=self.target, sockets=[own])
            process.start()
            self.processes.append(process)


def run_workers(app: str, *, host: str, port: int, workers: int, **options: Any) -> None:
    """``uvicorn.run(app, factory=True, workers=workers, ...)`` with a listening socket per worker.

    Raises PortTaken, before any worker starts, when the address is claimed or cannot be bound.
    """
    config = uvicorn.Config(app, factory=True, host=host, port=port, workers=workers, **options)
    with claim_address(host, port):
        sockets = worker_sockets(host, port, workers)
        try:
            SocketPerWorker(config, target=uvicorn.Server(config=config).run, sockets=sockets).run()
        finally:
            for sock in sockets:
                sock.close()


def worker_sockets(host: str, port: int, workers: int) -> list[socket.socket]:
    """One bound socket per worker, or PortTaken with none left open."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(workers):
            sockets.append(worker_socket(host, port))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise PortTaken(ports.refusal(host, port, exc)) from None
    return sockets
