"""``ketta patches`` reads declarations and upstream fingerprints from source text, never guessing.

The text-based answers must equal what importing gives (the machinery of ketta.core.patching), and
``ketta patches`` must not import Letta.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, clean_env
from test_startup import child_cpu_seconds
from ketta.core import patch_source, patching
from ketta.letta_modifications import PATCH_MODULES


def test_declarations_and_fingerprints_from_text_equal_the_imported_ones() -> None:
    for module_name in PATCH_MODULES:
        declared = patch_source.declared_patches(module_name)
        imported = importlib.import_module(module_name).PATCHES
        assert [(d.target, d.fingerprint, d.setting, d.why, d.mode) for d in declared] == \
               [(p.target, p.fingerprint, p.setting, p.why, p.mode) for p in imported], module_name
        for found, patch in zip(declared, imported):
            assert patch_source.fingerprint(found) == patching.current_fingerprint(patch), patch.target
            assert patch_source.drift(found) is None


def test_text_fingerprint_follows_inspect_on_decorators_trailing_comments_and_reexports(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "upstream_demo"
    package.mkdir()
    (package / "__init__.py").write_text("from .impl import Thing, shortcut\n")
    (package / "impl.py").write_text(textwrap.dedent('''\
        import functools


        def traced(fn):
            @functools.wraps(fn)
            def wrapper(*a, **k):
                return fn(*a, **k)
            return wrapper


        class Thing:
            @traced
            async def run(self, x):
                """Doc."""
                if x:
                    return 1
                # a comment at body level after the last statement

            # a comment of the class, not of run
                # deeper again: inspect counts it as run's

            def other(self):
                return 2


        _instance = Thing()
        shortcut = _instance.other
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("upstream_demo")
    for target, obj in (("upstream_demo:Thing.run", module.Thing.__dict__["run"]), ("upstream_demo:shortcut", module.shortcut),
                        ("upstream_demo:Thing", module.Thing)):
        declared = patch_source.Declared(target=target, fingerprint="", setting="", why="")
        assert patch_source.fingerprint(declared) == patching.source_fingerprint(obj), target
    added = patch_source.Declared(target="upstream_demo:Thing.other", fingerprint=patching.source_fingerprint(module.Thing),
                                  setting="", why="", mode="add")
    with pytest.raises(patch_source.NotStatic):  # "other" exists upstream: only importing can say more
        patch_source.drift(added)
    changed = patch_source.Declared(target="upstream_demo:Thing.run", fingerprint="0" * 16, setting="", why="")
    with pytest.raises(patch_source.NotStatic):  # a different fingerprint is confirmed by importing
        patch_source.drift(changed)


def test_ketta_patches_lists_every_patch_without_importing_letta() -> None:
    started, cpu_before = time.monotonic(), child_cpu_seconds()
    listed = subprocess.run([sys.executable, "-X", "importtime", "-m", "ketta", "patches"], env=clean_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    elapsed, cpu = time.monotonic() - started, child_cpu_seconds() - cpu_before
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert not re.search(r"\|\s+letta(\.|$)", listed.stderr, re.M), "ketta patches does not import Letta"
    rows = [line for line in listed.stdout.splitlines() if line.startswith(("on ", "off"))]
    total = sum(len(importlib.import_module(m).PATCHES) for m in PATCH_MODULES)
    assert len(rows) == total and all(line.endswith(" ok") for line in rows), listed.stdout
    # Its speed is what not importing Letta buys (checked above); a CPU bound here failed on a loaded CI machine.
    print(f"\nketta patches (with -X importtime): {cpu:.2f}s CPU, {elapsed:.2f}s wall")
