"""What a start costs: work a start repeats is skipped only where skipping cannot hide a change."""

from __future__ import annotations

import importlib
import inspect
import sys

import pytest

from ketta.core import patching
from ketta.core.patching import Patch

UPSTREAM = "class Greeter:\n    def greet(self):\n        return 'stock'\n"


@pytest.fixture
def upstream_file(tmp_path, monkeypatch):
    """A throwaway 'upstream' module read from a file, as an installed Letta module is."""
    package = tmp_path / "ketta_fp_cache_upstream"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "greeter.py").write_text(UPSTREAM)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package / "greeter.py"
    for name in [n for n in sys.modules if n.startswith("ketta_fp_cache_upstream")]:
        del sys.modules[name]
    patching.stop_fingerprint_cache()


def greeter_patch(fingerprint: str, target: str = "ketta_fp_cache_upstream.greeter:Greeter.greet") -> Patch:
    return Patch(target=target, replacement=lambda self: "ketta", fingerprint=fingerprint, setting="hard_delete", why="test")


def start_check(cache_file, patch: Patch) -> str | None:
    """The drift check of one start (as letta_modifications.apply_all runs it), with the cache."""
    patching.use_fingerprint_cache(cache_file)
    try:
        return patching.drift(patch)
    finally:
        patching.save_fingerprint_cache()
        patching.stop_fingerprint_cache()


def test_a_warm_fingerprint_cache_still_sees_an_edited_upstream_file(upstream_file, tmp_path, monkeypatch):
    """The start reuses the fingerprint of an unchanged upstream file (no source read), but an
    edited file is read again: a patched target that changed still refuses the start."""
    importlib.import_module("ketta_fp_cache_upstream.greeter")
    written_against = patching.current_fingerprint(greeter_patch(""))
    class_patch = greeter_patch(patching.source_fingerprint(sys.modules["ketta_fp_cache_upstream.greeter"].Greeter),
                                target="ketta_fp_cache_upstream.greeter:Greeter.added")
    class_patch = Patch(target=class_patch.target, replacement=1, fingerprint=class_patch.fingerprint,
                        setting="hard_delete", why="test", mode="add")
    cache_file = tmp_path / "patch_fingerprints.json"
    assert start_check(cache_file, greeter_patch(written_against)) is None
    assert start_check(cache_file, class_patch) is None
    assert cache_file.exists()

    def no_source_read(obj):
        raise AssertionError(f"source of {obj!r} read although its file is unchanged")

    with monkeypatch.context() as patched:
        patched.setattr(inspect, "getsource", no_source_read)
        assert start_check(cache_file, greeter_patch(written_against)) is None
        assert start_check(cache_file, class_patch) is None
        assert "upstream source changed" in start_check(cache_file, greeter_patch("0" * 16))

    upstream_file.write_text(UPSTREAM.replace("'stock'", "'changed upstream'"))
    importlib.reload(sys.modules["ketta_fp_cache_upstream.greeter"])
    assert "upstream source changed" in start_check(cache_file, greeter_patch(written_against))
    assert "upstream source changed" in start_check(cache_file, class_patch)
    # and without a cache (`ketta patches verify`) the same answer
    assert "upstream source changed" in patching.drift(greeter_patch(written_against))


def test_an_unreadable_cache_is_an_empty_one(upstream_file, tmp_path):
    importlib.import_module("ketta_fp_cache_upstream.greeter")
    written_against = patching.current_fingerprint(greeter_patch(""))
    cache_file = tmp_path / "patch_fingerprints.json"
    cache_file.write_text("{not json")
    assert start_check(cache_file, greeter_patch(written_against)) is None
    assert "upstream source changed" in start_check(cache_file, greeter_patch("1" * 16))
