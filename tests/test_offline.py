"""ketta.core.offline: the telemetry and download opt-outs a start sets before Letta is imported.

The libraries read them once, at their import, and send from native code seconds later if at all
(onnxruntime): a server start does not show a dropped opt-out reliably (the start-up test watches
its proxy, and the suite runs without a route out), so the opt-outs themselves are checked here."""

from __future__ import annotations

import os

import pytest

from ketta.core import offline


def test_every_opt_out_is_set_and_an_operator_s_own_value_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = {"DO_NOT_TRACK": "operator's choice"}  # the process's own is left as it was
    monkeypatch.setattr(os, "environ", environment)
    offline.stay_offline()
    assert environment["ORT_DISABLE_TELEMETRY"] == "1"  # onnxruntime
    assert environment["HF_HUB_OFFLINE"] == "1" and environment["HF_HUB_DISABLE_TELEMETRY"] == "1"  # huggingface_hub
    assert environment["DO_NOT_TRACK"] == "operator's choice"
