"""pytest plugin for running Letta's own tests under Ketta (loaded with ``-p ketta_upstream_plugin``).

It runs before any conftest of Letta's suite is imported (Letta's root conftest imports
``letta.server.db``, which builds its engine at import), and:

- in ``patched`` mode prepares exactly as the server does (``ketta.app.prepare``: database check,
  encryption key, migrations, every enabled patch), then wraps each applied patch's replacement
  so a call records the test that made it (which upstream tests exercise which patch);
- in ``stock`` mode changes nothing: Letta as released, on the same database.

Either way it writes every test's outcome (and the patch hits) to the JSON file named by
``KETTA_UPSTREAM_RESULTS``, which ``run.py`` compares with ``expected.toml``.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import pytest

MODE = os.environ.get("KETTA_UPSTREAM_MODE", "patched")

_current_test: str | None = None
_hits: dict[str, set[str]] = defaultdict(set)
_outcomes: dict[str, dict[str, Any]] = {}
_patch_targets: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """Before Letta's conftests import Letta: apply the patches (or not, in stock mode)."""
    if MODE == "stock":
        return
    if MODE != "patched":
        raise pytest.UsageError(f"KETTA_UPSTREAM_MODE must be 'patched' or 'stock', not {MODE!r}")
    from ketta import letta_modifications
    from ketta.app import prepare

    prepare()
    for _module, patch in letta_modifications.iter_patches():
        from ketta.core import patching

        if patching.is_applied(patch) and _record_calls(patch):
            _patch_targets.append(patch.target)


def _record_calls(patch: Any) -> bool:
    """Swap the installed replacement for a wrapper that notes the running test; False if no code."""
    from ketta.core.patching import resolve_owner

    if patch.mode in ("enum_member", "exception_handler"):
        return False  # no code of its own / a handler of the app Ketta builds, not of Letta's tests
    owner, name = resolve_owner(patch)
    installed = inspect.getattr_static(owner, name)
    if isinstance(installed, type):
        # A class Ketta adds (a provider type): record calls of the methods it defines itself.
        for attr, value in list(vars(installed).items()):
            wrapped = _wrap_descriptor(value, patch.target)
            if wrapped is not None:
                type.__setattr__(installed, attr, wrapped)
        return True
    wrapped = _wrap_descriptor(installed, patch.target)
    if wrapped is None:
        return False
    setattr(owner, name, wrapped)
    return True


def _wrap_descriptor(value: Any, target: str) -> Any:
    if isinstance(value, staticmethod):
        return staticmethod(_wrap(value.__func__, target))
    if isinstance(value, classmethod):
        return classmethod(_wrap(value.__func__, target))
    if isinstance(value, property):
        return property(*(_wrap(f, target) if f else None for f in (value.fget, value.fset, value.fdel)), value.__doc__)
    if inspect.isfunction(value):
        return _wrap(value, target)
    return None


def _wrap(func: Callable, target: str) -> Callable:
    """Same kind of callable (coroutine functions stay coroutine functions), plus a note of the test."""
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            _note(target)
            return await func(*args, **kwargs)

    else:

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            _note(target)
            return func(*args, **kwargs)

    return wrapper


def _note(target: str) -> None:
    if _current_test is not None:
        _hits[target].add(_current_test)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    global _current_test
    _current_test = item.nodeid


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """One outcome per test: failed if any phase failed, skipped if skipped, else passed."""
    entry = _outcomes.setdefault(report.nodeid, {"outcome": "passed", "duration": 0.0, "message": ""})
    entry["duration"] += report.duration
    if report.failed:
        entry["outcome"] = "failed"
        entry["message"] = entry["message"] or _short(report)
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "xfailed" if hasattr(report, "wasxfail") else "skipped"


def _short(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return f"{report.when}: {text.strip().splitlines()[0] if text.strip() else ''}"[:300]


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _outcomes[report.nodeid] = {"outcome": "failed", "duration": 0.0, "message": f"collection: {_short(report)}"}  # type: ignore[arg-type]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("KETTA_UPSTREAM_RESULTS")
    if not path:
        return
    data = {
        "mode": MODE,
        "finished": time.time(),
        "outcomes": _outcomes,
        "patches": {target: sorted(_hits.get(target, ())) for target in _patch_targets},
    }
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True))
