"""Letta's own tests guard every patch: run them under Ketta (tests/upstream/run.py) and check the runner."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUNNER = HERE / "run.py"
sys.path.insert(0, str(HERE))

import run  # noqa: E402  (tests/upstream/run.py)

from ketta import letta_modifications  # noqa: E402


def run_runner(args: list[str], pg_uri: str, tmp_path: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LETTA_PG_URI": pg_uri}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, str(RUNNER), "--workdir", str(tmp_path / "work"), *args],
        env=env, capture_output=True, text=True, timeout=1800,
    )


@pytest.mark.slow
def test_letta_tests_pass_under_ketta_except_the_declared_differences(pg_uri: str, tmp_path: Path) -> None:
    """The CI run: every file of expected.toml's suite, patched; any undeclared outcome fails."""
    done = run_runner([], pg_uri, tmp_path)
    print(done.stdout[-6000:])
    assert done.returncode == 0, f"{done.stdout[-8000:]}\n{done.stderr[-3000:]}"
    assert "every outcome as declared in expected.toml" in done.stdout


def scratch_ketta(tmp_path: Path, edits: dict[str, str]) -> Path:
    """A copy of the ketta package in which each patch module named in ``edits`` gets its edit
    appended; returns its root."""
    root = tmp_path / "scratch"
    shutil.copytree(REPO / "ketta", root / "ketta", ignore=shutil.ignore_patterns("__pycache__"))
    for module, edit in edits.items():
        path = root / (module.replace(".", "/") + ".py")
        path.write_text(path.read_text() + "\n\n# --- deliberately changed by tests/upstream/test_upstream_suite.py ---\n" + edit)
    return root


# One runner run (one Letta pytest process, one migrated database) for both broken-suite checks:
# each mistake is in a different patch module and each named test reaches only its own.
BROKEN_TARGET = "letta.schemas.providers.openai:OpenAIProvider.get_handle"
BROKEN_TEST = "tests/test_providers.py::test_provider_handle_generation"
DROPPED_TARGET = "letta.services.provider_manager:ProviderManager.update_provider_async"
DROPPED_TEST = "tests/managers/test_provider_manager.py::test_provider_update_encrypts_new_api_key"


@pytest.fixture(scope="module")
def broken_and_dropped_run(pg_uri: str, tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """The runner on a ketta copy with one patch's replacement raising and another patch removed."""
    tmp_path = tmp_path_factory.mktemp("broken-and-dropped")
    root = scratch_ketta(tmp_path, {
        "ketta.letta_modifications.schemas.providers.openai": (
            "import dataclasses as _dc\n\n"
            "def _broken(*args, **kwargs):\n"
            "    raise RuntimeError('patch deliberately broken')\n\n"
            f"PATCHES = [_dc.replace(p, replacement=_broken) if p.target == {BROKEN_TARGET!r} else p for p in PATCHES]\n"
        ),
        "ketta.letta_modifications.services.provider_manager": f"PATCHES = [p for p in PATCHES if p.target != {DROPPED_TARGET!r}]\n",
    })
    files = [BROKEN_TEST.removeprefix("tests/"), DROPPED_TEST.removeprefix("tests/")]
    return run_runner(["--files", *files], pg_uri, tmp_path, pythonpath=root)


@pytest.mark.slow
def test_a_broken_patch_fails_the_run_naming_the_upstream_test(broken_and_dropped_run: subprocess.CompletedProcess) -> None:
    """A patch whose replacement breaks makes the Letta test that reaches it fail, and the runner says which."""
    assert BROKEN_TEST in letta_modifications.upstream_tests()[BROKEN_TARGET]  # the record says this test reaches it
    done = broken_and_dropped_run
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(rf"UNEXPECTED FAILURE {re.escape(BROKEN_TEST)}\b.*patch deliberately broken", done.stdout), done.stdout


@pytest.mark.slow
def test_a_dropped_patch_fails_the_run_naming_the_declared_test_that_now_passes(broken_and_dropped_run: subprocess.CompletedProcess) -> None:
    """Without the patch behind a declared difference, the Letta test passes again: the list is no longer true."""
    assert run.Expected.load().differs[DROPPED_TEST].startswith(DROPPED_TARGET)
    done = broken_and_dropped_run
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"NOW PASSES {DROPPED_TEST}" in done.stdout, done.stdout
    assert "UNEXPECTED FAILURE" not in done.stdout.replace(f"UNEXPECTED FAILURE {BROKEN_TEST}", ""), done.stdout


# ------------------------------------------------------------------------------------------------
# The declarations and the checking logic (no PostgreSQL needed)


def outcome(mode: str, **tests: str) -> run.RunResult:
    return run.RunResult(mode, {n: {"outcome": o, "duration": 0.0, "message": f"{n} says no"} for n, o in tests.items()}, {}, 0.0, 1)


EXAMPLE = run.Expected(files=["a.py"], differs={"tests/a.py::d": "t: why"}, stock_failures={"tests/a.py::s": "no key"},
                       regressions={"tests/a.py::r": "issue 9"}, ketta_fixes={"tests/a.py::f": "t: why"})


def test_check_accepts_a_run_matching_the_declarations() -> None:
    patched = outcome("patched", **{"tests/a.py::d": "failed", "tests/a.py::s": "failed", "tests/a.py::r": "failed",
                                    "tests/a.py::f": "passed", "tests/a.py::ok": "passed", "tests/a.py::sk": "skipped"})
    assert run.check(patched, EXAMPLE, complete=True) == []
    stock = outcome("stock", **{"tests/a.py::d": "passed", "tests/a.py::s": "failed", "tests/a.py::r": "passed",
                                "tests/a.py::f": "failed", "tests/a.py::ok": "passed"})
    assert run.check(stock, EXAMPLE, complete=True) == []


def test_check_names_an_undeclared_failure_a_declared_test_that_passes_and_one_not_run() -> None:
    patched = outcome("patched", **{"tests/a.py::d": "passed", "tests/a.py::s": "failed",
                                    "tests/a.py::f": "failed", "tests/a.py::new": "failed"})
    problems = run.check(patched, EXAMPLE, complete=True)
    assert len(problems) == 4, problems
    assert problems[0].startswith("UNEXPECTED FAILURE tests/a.py::f ([ketta_fixes] says Ketta makes it pass)")
    assert problems[1] == "UNEXPECTED FAILURE tests/a.py::new: tests/a.py::new says no"
    assert problems[2].startswith("NOW PASSES tests/a.py::d ")
    assert problems[3].startswith("NOT RUN tests/a.py::r ")
    # A run of a subset (--files) does not complain about declared tests it did not select.
    assert not any(p.startswith("NOT RUN") for p in run.check(patched, EXAMPLE, complete=False))


def test_every_declared_difference_names_a_patch_and_every_regression_an_issue() -> None:
    expected = run.Expected.load()
    targets = {p.target for _, p in letta_modifications.iter_patches()}
    for nodeid, reason in expected.differs.items():
        assert reason.split(": ", 1)[0] in targets, f"{nodeid}: {reason!r} does not start with a patch target"
        assert "TODO" not in reason
    for nodeid, reason in expected.regressions.items():
        assert re.match(r"issue \d+: \S", reason), f"{nodeid}: {reason!r} does not name its issue"
    for section in (expected.stock_failures, expected.ketta_fixes, expected.unstable):
        for nodeid, reason in section.items():
            assert reason and "TODO" not in reason, nodeid
    declared = [*expected.differs, *expected.regressions, *expected.stock_failures, *expected.ketta_fixes, *expected.unstable]
    assert len(declared) == len(set(declared)), "a test is declared in two sections"
    for nodeid in declared:
        assert run.in_suite(nodeid, expected.files), f"{nodeid} is not in the suite's files"


def test_ketta_patches_shows_the_upstream_tests_of_each_patch() -> None:
    """`ketta patches` reads the committed record; `ketta patches tests TARGET` lists them with a rerun command.
    In-process (typer's CliRunner): the commands' output is what is checked, not their import."""
    from typer.testing import CliRunner

    from ketta.cli import app

    covered = letta_modifications.upstream_tests()
    target = "letta.services.provider_manager:ProviderManager.create_provider_async"
    assert covered[target], "the record has no upstream test for create_provider_async"
    listing = CliRunner().invoke(app, ["patches"])
    assert listing.exit_code == 0, listing.output
    block = listing.stdout.split(target, 1)[1].split("\n", 3)[2]
    assert block.strip().startswith(f"Letta's tests: {len(covered[target])} (")
    assert "test_server_providers.py" in block
    detail = CliRunner().invoke(app, ["patches", "tests", target])
    assert detail.exit_code == 0, detail.output
    assert all(f"  {nodeid}\n" in detail.stdout for nodeid in covered[target])
    assert "rerun: python tests/upstream/run.py --files " in detail.stdout
    unknown = CliRunner().invoke(app, ["patches", "tests", "letta.nowhere:X"])
    assert unknown.exit_code == 1 and "not a declared patch target" in unknown.stderr
