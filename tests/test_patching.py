"""The patch layer: declared, ordered, idempotent, reversible, and verify catches drift."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ketta import letta_modifications
from ketta.core import patching
from ketta.core.patching import Patch
from ketta.core.settings import KettaSettings


@pytest.fixture
def scratch_module(monkeypatch):
    """A throwaway 'upstream' module to patch, registered in sys.modules."""
    module = types.ModuleType("ketta_scratch_upstream")
    source = "class Greeter:\n    def greet(self):\n        return 'stock'\n"
    exec(compile(source, "<scratch>", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def make_patch(fingerprint: str, target: str = "ketta_scratch_upstream:Greeter.greet") -> Patch:
    return Patch(target=target, replacement=lambda self: "ketta", fingerprint=fingerprint, setting="hard_delete", why="test")


def test_apply_is_idempotent_and_revert_restores_the_original(scratch_module):
    patch = make_patch(fingerprint="x")
    original = scratch_module.Greeter.__dict__["greet"]
    assert patching.apply(patch) is True
    assert patching.apply(patch) is False
    assert scratch_module.Greeter().greet() == "ketta"
    assert patching.original(patch.target) is original
    assert patching.is_applied(patch)
    assert patching.revert(patch) is True
    assert scratch_module.Greeter().greet() == "stock"
    assert patching.revert(patch) is False


def test_drift_names_a_missing_target_and_a_changed_source(scratch_module):
    live = patching.current_fingerprint(make_patch(fingerprint=""))
    assert patching.drift(make_patch(fingerprint=live)) is None
    assert "upstream source changed" in patching.drift(make_patch(fingerprint="0" * 16))
    assert "target missing" in patching.drift(make_patch(fingerprint=live, target="ketta_scratch_upstream:Greeter.gone"))
    assert "target missing" in patching.drift(make_patch(fingerprint=live, target="no_such_module_xyz:f"))


def test_every_declared_patch_matches_installed_letta():
    declared = list(letta_modifications.iter_patches())
    assert len(declared) >= 10
    targets = [p.target for _, p in declared]
    assert len(targets) == len(set(targets)), "a target is patched twice"
    for module, patch in declared:
        assert patch.why and patch.setting in KettaSettings.model_fields, patch.target
    assert letta_modifications.verify() == []


def test_enum_patch_is_first_so_pydantic_schemas_see_kimi():
    modules = letta_modifications.PATCH_MODULES
    assert modules[0] == "ketta.letta_modifications.schemas.enums"


def shadow_letta_with_changed_file(root: Path, relative: str, edit) -> Path:
    """A `letta` package on ``root`` made of symlinks to the installed one, one file edited.

    ``ketta patches verify`` reads the targets' source from disk (without importing Letta), so an
    upgraded Letta is simulated on disk: ``PYTHONPATH=root`` makes this copy the one found.
    """
    import importlib.util

    installed = Path(next(iter(importlib.util.find_spec("letta").submodule_search_locations)))
    shadow = root / "letta"
    parts = Path(relative).parts
    directory, source = shadow, installed
    for depth, part in enumerate(parts):
        directory.mkdir(parents=True, exist_ok=True)
        for entry in source.iterdir():
            if entry.name != part and entry.name != "__pycache__":
                (directory / entry.name).symlink_to(entry)
        if depth == len(parts) - 1:
            (directory / part).write_text(edit((source / part).read_text()))
        directory, source = directory / part, source / part
    return root


def test_verify_command_exits_nonzero_naming_a_changed_target(tmp_path):
    """Simulate an upgraded Letta: a declared target's source changed on disk."""
    def upstream_fix(text: str) -> str:
        line = "async def delete_provider_by_id_async(self, provider_id: str, actor: PydanticUser):"
        assert line in text
        return text.replace(line, line + "\n        pass  # an upstream fix", 1)

    root = shadow_letta_with_changed_file(tmp_path / "site", "services/provider_manager.py", upstream_fix)
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-m", "ketta", "patches", "verify"], capture_output=True, text=True,
                            timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "DRIFT letta.services.provider_manager:ProviderManager.delete_provider_by_id_async" in result.stdout
    assert "1 of" in result.stderr


def test_verify_command_passes_on_the_pinned_letta():
    result = subprocess.run([sys.executable, "-m", "ketta", "patches", "verify"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "patches match the installed Letta" in result.stdout


def test_apply_all_refuses_drift_or_skips_the_drifted_patch_never_applies_it(monkeypatch, scratch_module, caplog):
    """A drifted patch stops the start; KETTA_ALLOW_PATCH_DRIFT=true starts with it skipped, said in one line."""
    drifting = make_patch(fingerprint="0" * 16)
    module = types.ModuleType("ketta_scratch_patches")
    module.PATCHES = [drifting]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(letta_modifications, "PATCH_MODULES", (module.__name__,))
    with pytest.raises(letta_modifications.PatchDriftError, match="Greeter.greet"):
        letta_modifications.apply_all(KettaSettings())
    assert scratch_module.Greeter().greet() == "stock"
    monkeypatch.setattr(letta_modifications, "skipped", [])
    with caplog.at_level("WARNING", logger="ketta"):
        applied = letta_modifications.apply_all(KettaSettings(allow_patch_drift=True))
    assert applied == [] and scratch_module.Greeter().greet() == "stock", "a drifted patch is never applied blind"
    assert letta_modifications.skipped == [drifting]
    [line] = [r.getMessage() for r in caplog.records if "SKIPPED" in r.getMessage()]
    assert "ketta_scratch_upstream:Greeter.greet (ketta_scratch_patches) SKIPPED: upstream source changed" in line


def test_disabled_setting_leaves_upstream_untouched(monkeypatch, scratch_module):
    patch = make_patch(fingerprint=patching.current_fingerprint(make_patch("")))
    module = types.ModuleType("ketta_scratch_patches2")
    module.PATCHES = [patch]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(letta_modifications, "PATCH_MODULES", (module.__name__,))
    assert letta_modifications.apply_all(KettaSettings(hard_delete=False)) == []
    assert scratch_module.Greeter().greet() == "stock"


def test_a_fix_names_its_upstream_report_is_on_by_default_and_each_can_be_skipped(scratch_module):
    with pytest.raises(ValueError, match="owner/name#N"):
        Patch(target="ketta_scratch_upstream:Greeter.greet", replacement=None, fingerprint="x", setting="letta_fixes",
              why="test", kind="fix")
    fix = Patch(target="ketta_scratch_upstream:Greeter.greet", replacement=None, fingerprint="x", setting="letta_fixes",
                why="test", kind="fix", upstream="letta-ai/letta#3144")
    assert letta_modifications.enabled(fix, KettaSettings())
    assert not letta_modifications.enabled(fix, KettaSettings(letta_fixes=False))
    for skipped in ("3144", "letta-ai/letta#3144", "#3144", "3156, 3144"):
        assert not letta_modifications.enabled(fix, KettaSettings(skip_fixes=skipped)), skipped
    assert letta_modifications.enabled(fix, KettaSettings(skip_fixes="31440,3156"))
    fixes = [p for _, p in letta_modifications.iter_patches() if p.kind == "fix"]
    assert fixes and all(p.upstream.startswith("letta-ai/letta#") and p.setting == "letta_fixes" for p in fixes)


def test_an_exception_handler_patch_swaps_the_closure_on_the_built_app_and_reverts(scratch_module):
    from fastapi import FastAPI

    source = ("def create_application():\n    app = FastAPI()\n\n    @app.exception_handler(KeyError)\n"
              "    async def key_error_handler(request, exc):\n        return 'stock'\n\n    return app\n")
    scratch_module.FastAPI = FastAPI
    exec(compile(source, "<scratch>", "exec"), scratch_module.__dict__)
    app = scratch_module.create_application()

    async def replacement(request, exc):
        return "fixed"

    patch = Patch(target="ketta_scratch_upstream:create_application.<locals>.key_error_handler", replacement=replacement,
                  fingerprint="x", setting="letta_fixes", why="test", mode="exception_handler", kind="fix", upstream="a/b#1")
    stock = app.exception_handlers[KeyError]
    assert patching.apply(patch) and patching.install_exception_handlers(app) == 1
    assert app.exception_handlers[KeyError] is replacement
    assert patching.revert(patch) and app.exception_handlers[KeyError] is stock
    gone = Patch(target="ketta_scratch_upstream:create_application.<locals>.renamed_handler", replacement=replacement,
                 fingerprint="x", setting="letta_fixes", why="test", mode="exception_handler", kind="fix", upstream="a/b#1")
    patching.apply(gone)
    try:
        with pytest.raises(patching.PatchTargetMissing, match="no exception handler of that name"):
            patching.install_exception_handlers(app)
    finally:
        patching.revert(gone)


def test_fingerprints_still_guard_against_a_different_installed_letta(tmp_path, monkeypatch):
    """No Letta release will come after 0.16.8, but a different letta can still be installed (an
    older release, a fork, the archive branch): every fingerprint is of the installed source, so a
    target that differs, handler closures included, is drift, and a handler gone is a missing target."""
    from ketta.core import patch_source

    handler = "create_application.<locals>.llm_rate_limit_error_handler"
    for name, body in (("ketta_fp_released", "return 1"), ("ketta_fp_changed", "return 2"), ("ketta_fp_renamed", None)):
        package = tmp_path / name
        package.mkdir()
        inner = f"    async def {'llm_rate_limit_error_handler' if body else 'rate_limit_handler'}(request, exc):\n        {body or 'return 1'}\n"
        (package / "__init__.py").write_text("")
        (package / "app.py").write_text(f"def create_application():\n{inner}    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def handler_patch(module: str, fingerprint: str) -> Patch:
        return Patch(target=f"{module}.app:{handler}", replacement=None, fingerprint=fingerprint, setting="letta_fixes",
                     why="test", mode="exception_handler", kind="fix", upstream="letta-ai/letta#3304")

    written_against = patching.current_fingerprint(handler_patch("ketta_fp_released", ""))
    assert patching.drift(handler_patch("ketta_fp_released", written_against)) is None
    assert "upstream source changed" in patching.drift(handler_patch("ketta_fp_changed", written_against))
    assert "no longer defines llm_rate_limit_error_handler" in patching.drift(handler_patch("ketta_fp_renamed", written_against))
    with pytest.raises(patch_source.NotStatic):
        patch_source.drift(patch_source.Declared(target=f"ketta_fp_changed.app:{handler}", fingerprint=written_against,
                                                 setting="letta_fixes", why="test", mode="exception_handler"))


def test_ketta_patches_names_the_module_that_declares_each_patch():
    """Every row of ``ketta patches`` says where its declaration lives, so a reader goes there directly."""
    from typer.testing import CliRunner

    from ketta.cli import app

    listed = CliRunner().invoke(app, ["patches"])
    assert listed.exit_code == 0, listed.output
    declared = {row.patch.target: row.module for row in letta_modifications.status_from_source(KettaSettings())}
    lines = listed.output.splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith(("on ", "off"))]
    assert len(rows) == len(declared)
    for i in rows:
        target = lines[i].split()[1]
        assert lines[i + 3].strip().split(";")[0] == f"declared in {declared[target]}", lines[i:i + 4]


def test_sdk_targets_carry_their_version_range_and_another_version_is_drift(scratch_module):
    """Patches of the openai/anthropic SDKs name the release range they were written for; outside it, drift."""
    rows = letta_modifications.status_from_source(KettaSettings())
    sdk = [row.patch for row in rows if row.patch.target.startswith(("openai.", "anthropic."))]
    assert len(sdk) >= 8
    for patch in sdk:
        assert patch.requires.split(">=")[0] == patch.target.split(".")[0], patch.target
        assert patching.drift(patch) is None
    live = patching.current_fingerprint(make_patch(fingerprint=""))
    from dataclasses import replace

    too_new = replace(make_patch(fingerprint=live), requires="openai>=99")
    assert patching.drift(too_new).startswith("written for openai>=99, installed openai ")
    assert "not installed" in patching.drift(replace(too_new, requires="no-such-distribution-xyz>=1"))


def test_hooks_name_what_installs_them_and_every_installer_exists():
    """The registry's hooks (environment edits, wrappers, app-level changes, subclasses) point at real code."""
    import importlib

    hooks = letta_modifications.declared_hooks()
    assert {h.kind for h in hooks} == {"environment", "wrapper", "app", "subclass"}
    for hook in hooks:
        module, _, attr = hook.installed_by.partition(":")
        assert hasattr(importlib.import_module(module), attr.split(".")[0]), hook.installed_by
        assert not hook.setting or hook.setting in KettaSettings.model_fields, hook.name
    assert [row.problem for row in letta_modifications.hook_status(KettaSettings()) if row.problem] == []


def test_a_drifted_hook_refuses_the_start_unless_its_setting_is_off(monkeypatch, scratch_module):
    """A hook cannot be skipped alone: drift in the Letta code it overrides stops the start, naming the switch."""
    from ketta.core.patching import Hook

    drifted = Hook(name="a subclass override", kind="subclass", installed_by="ketta_scratch:Sub", setting="kimi_provider",
                   why="test", upstream="ketta_scratch_upstream:Greeter.greet", fingerprint="0" * 16)
    monkeypatch.setattr(letta_modifications, "declared_hooks", lambda: [drifted])
    with pytest.raises(letta_modifications.PatchDriftError, match="KETTA_KIMI_PROVIDER=false"):
        letta_modifications.check_hooks(KettaSettings(allow_patch_drift=True))
    letta_modifications.check_hooks(KettaSettings(kimi_provider=False))
