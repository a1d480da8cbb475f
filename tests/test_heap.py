"""ketta.core.heap: the collector is paused while Letta is imported, then what was built is frozen."""

from __future__ import annotations

import gc

import pytest

from ketta.core import heap


@pytest.fixture(autouse=True)
def _collector_as_before():
    assert gc.isenabled()
    yield
    gc.unfreeze()
    gc.enable()


def test_paused_inside_then_frozen_and_running_again() -> None:
    before = gc.get_freeze_count()
    with heap.collector_paused_then_frozen(True):
        assert not gc.isenabled()
        built = [[i] for i in range(10_000)]  # long-lived objects, as an import makes
    assert gc.isenabled(), "the collector must run again after the start"
    assert gc.get_freeze_count() >= before + len(built)


def test_a_failed_block_still_leaves_the_collector_running() -> None:
    with pytest.raises(RuntimeError):
        with heap.collector_paused_then_frozen(True):
            raise RuntimeError("the start failed")
    assert gc.isenabled()


def test_switched_off_nothing_changes() -> None:
    before = gc.get_freeze_count()
    with heap.collector_paused_then_frozen(False):
        assert gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == before
