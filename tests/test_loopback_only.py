"""The suite runs where nothing can leave the machine (tests/loopback_only.py)."""

from __future__ import annotations

import errno
import socket

import pytest

import loopback_only


def test_an_outside_address_is_unreachable_and_loopback_works() -> None:
    if not loopback_only.is_loopback_only():
        pytest.skip(f"the run is in the {loopback_only.state}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as outside:
        outside.settimeout(5)
        with pytest.raises(OSError) as refused:
            outside.connect(("192.0.2.1", 80))  # TEST-NET-1: no route in a loopback-only namespace
        assert refused.value.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH), refused.value
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.2", 0))  # all of 127.0.0.0/8 is local, as the redirect tests need
        listener.listen(1)
        with socket.create_connection(listener.getsockname(), timeout=5):
            pass
