"""ketta.core.serving: a multi-worker Ketta claims its address, and a port it cannot bind is one clear refusal.

No server is started: the refusals must come before any worker would, so the supervisor's run is
replaced by a failure (a start that got that far is the defect, and must not serve).
"""

from __future__ import annotations

import socket

import pytest

from ketta.core import serving
from ketta.db.database import free_port


@pytest.fixture(autouse=True)
def _no_worker_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    def started(self: serving.SocketPerWorker) -> None:
        raise AssertionError(f"workers were started on {len(self.sockets)} socket(s) bound beside another server")
    monkeypatch.setattr(serving.SocketPerWorker, "run", started)


def test_a_second_multi_worker_ketta_on_the_same_address_is_refused_before_it_binds() -> None:
    port = free_port()
    # A `ketta server --workers 2` already on this port: its claim and one of its worker sockets.
    with serving.claim_address("127.0.0.1", port), serving.worker_socket("127.0.0.1", port) as first:
        first.listen()
        with pytest.raises(serving.PortTaken) as refused:
            serving.run_workers("ketta.app:create_app", host="127.0.0.1", port=port, workers=2)
        assert str(refused.value) == (f"Port {port} on 127.0.0.1 is in use by another `ketta server --workers`: "
                                      "pick another with --port, or stop that server.")
    with serving.claim_address("127.0.0.1", port):  # the claim ends with its holder
        pass


def test_a_port_bound_since_the_check_is_refused_in_one_line_and_the_claim_let_go() -> None:
    port = free_port()
    with socket.socket() as other:  # a server that took the port after `ketta server` checked it
        other.bind(("127.0.0.1", port))
        other.listen()
        with pytest.raises(serving.PortTaken) as refused:
            serving.run_workers("ketta.app:create_app", host="127.0.0.1", port=port, workers=2)
        assert str(refused.value) == (f"Port {port} on 127.0.0.1 is in use (another server?): pick another "
                                      "with --port, or stop what listens there.")
    with serving.claim_address("127.0.0.1", port):  # the failed start let go of its claim
        pass
