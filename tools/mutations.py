"""Mutation check: does the suite notice when a promised behaviour breaks?

Each mutation is a one-line change to ``ketta/`` that breaks something the README promises. For
each, the script copies the package and the tests into a scratch directory, applies the change
there (never to the working tree), runs the tests said to cover it with the scratch copy first on
``PYTHONPATH`` (servers the tests start import it too), and reports whether the tests failed
(killed: good) or passed (survived: a gap in the suite).

    .venv/bin/python tools/mutations.py                 # every mutation
    .venv/bin/python tools/mutations.py kimi-default-url offline-default   # some, by id
    .venv/bin/python tools/mutations.py --list

Slow (each mutation runs its tests, some of which start servers): run it before resolving an
issue, not in CI. Exit status 1 when a mutation survived or no longer applies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("ketta", "tests", "pyproject.toml")


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (which must occur exactly once in ``path``) with ``new``; ``tests`` must fail."""

    id: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "refresh-unreachable-ok",
        "ketta/letta_modifications/services/provider_manager.py",
        "provider.name, unreachable_ok=False)",
        "provider.name, unreachable_ok=True)",
        ("tests/letta_modifications/services/test_provider_manager.py",),
        "A refresh during an outage must answer 502 and keep the provider's models.",
    ),
    Mutation(
        "env-fallback-first",
        "ketta/provider_keys.py",
        "    if not key and get_settings().env_key_fallback:",
        "    if get_settings().env_key_fallback and env_fallback_key(provider_name):",
        ("tests/test_provider_keys.py",),
        "A stored key wins over the env fallback.",
    ),
    Mutation(
        "env-fallback-ignores-setting",
        "ketta/provider_keys.py",
        "    if not key and get_settings().env_key_fallback:",
        "    if not key:",
        ("tests/test_settings_and_env.py::test_switches_turned_off_give_stock_behaviour_one_by_one",),
        "KETTA_ENV_KEY_FALLBACK=false turns the env fallback off.",
    ),
    Mutation(
        "offline-default",
        "ketta/settings.py",
        'offline: bool = Field(default=True,',
        'offline: bool = Field(default=False,',
        ("tests/test_settings_and_env.py::test_default_start_downloads_nothing",),
        "By default nothing is downloaded at start (Letta's NLTK download is skipped).",
    ),
    Mutation(
        "kimi-k25-thinking-temperature",
        "ketta/letta_modifications/llm_api/kimi_client.py",
        "return 1.0 if thinking else 0.6",
        "return 0.6",
        ("tests/letta_modifications/llm_api/test_kimi_request_rules.py",),
        "kimi-k2.5/k2.6 with thinking accept only temperature 1.0.",
    ),
    Mutation(
        "kimi-k3-temperature",
        "ketta/letta_modifications/llm_api/kimi_client.py",
        'if name.startswith(("kimi-k2.7-code", "kimi-k3")):',
        'if name.startswith(("kimi-k2.7-code",)):',
        ("tests/letta_modifications/llm_api/test_kimi_request_rules.py",),
        "kimi-k3 accepts only temperature 1.0.",
    ),
    Mutation(
        "kimi-k27-code-temperature",
        "ketta/letta_modifications/llm_api/kimi_client.py",
        'if name.startswith(("kimi-k2.7-code", "kimi-k3")):',
        'if name.startswith(("kimi-k3",)):',
        ("tests/letta_modifications/llm_api/test_kimi_request_rules.py",),
        "kimi-k2.7-code accepts only temperature 1.0.",
    ),
    Mutation(
        "kimi-temperature-no-lower-clamp",
        "ketta/letta_modifications/llm_api/kimi_client.py",
        'min(1.0, max(0.0, float(request_data["temperature"])))',
        'min(1.0, float(request_data["temperature"]))',
        ("tests/letta_modifications/llm_api/test_kimi_request_rules.py",),
        "Temperatures below 0 are clamped to 0 (Moonshot's range is [0, 1]).",
    ),
    Mutation(
        "kimi-default-base-url",
        "ketta/letta_modifications/schemas/providers/kimi.py",
        'MOONSHOT_CHINA_BASE_URL = "https://api.moonshot.cn/v1"',
        'MOONSHOT_CHINA_BASE_URL = "https://api.moonshot.ai/v1"',
        ("tests/letta_modifications/schemas/providers/test_kimi_sync_listing.py",),
        "A kimi provider without base_url uses Moonshot's China endpoint.",
    ),
    Mutation(
        "name-limit-off-by-one",
        "ketta/providers.py",
        "    if len(cleaned) > MAX_NAME_LENGTH:",
        "    if len(cleaned) >= MAX_NAME_LENGTH:",
        ("tests/test_providers.py",),
        "A 100-character provider name is accepted; 101 is refused.",
    ),
    Mutation(
        "kimi-switch-ignored",
        "ketta/letta_modifications/__init__.py",
        "    return bool(getattr(settings, patch.setting))",
        '    return patch.setting == "kimi_provider" or bool(getattr(settings, patch.setting))',
        ("tests/test_settings_and_env.py::test_switches_turned_off_give_stock_behaviour_one_by_one",),
        "KETTA_KIMI_PROVIDER=false removes the kimi provider type.",
    ),
    Mutation(
        "offline-switch-ignored",
        "ketta/letta_modifications/__init__.py",
        "    return bool(getattr(settings, patch.setting))",
        '    return patch.setting == "offline" or bool(getattr(settings, patch.setting))',
        ("tests/test_settings_and_env.py::test_switches_turned_off_give_stock_behaviour_one_by_one",),
        "KETTA_OFFLINE=false gives Letta's start-up download back.",
    ),
    Mutation(
        "telemetry-not-refused",
        "ketta/offline.py",
        '    "ORT_DISABLE_TELEMETRY": "1",',
        '    "ORT_DISABLE_TELEMETRY": "0",',
        ("tests/test_settings_and_env.py::test_default_start_downloads_nothing",),
        "onnxruntime's telemetry never leaves the machine.",
    ),
    Mutation(
        "migration-without-lock",
        "ketta/migrations/__init__.py",
        '    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})',
        "    pass",
        ("tests/test_migrations.py::test_upgrade_waits_for_the_advisory_lock",),
        "Two servers starting together on one database migrate one after the other.",
    ),
)


def _scratch_copy(destination: Path) -> None:
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, destination / name)


def _apply(mutation: Mutation, root: Path) -> str | None:
    """Apply in the scratch copy; an error message if the mutation no longer applies."""
    target = root / mutation.path
    text = target.read_text()
    count = text.count(mutation.old)
    if count != 1:
        return f"expected the original text once in {mutation.path}, found it {count} times"
    target.write_text(text.replace(mutation.old, mutation.new))
    return None


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _imports_scratch_copy(root: Path) -> bool:
    probe = subprocess.run([sys.executable, "-c", "import ketta; print(ketta.__file__)"], cwd=root, env=_env(root),
                           capture_output=True, text=True)
    return probe.stdout.strip().startswith(str(root))


def run(mutation: Mutation, timeout_s: float, mutate: bool = True) -> tuple[str, str]:
    """(outcome, detail): outcome is killed, survived or broken. ``mutate=False`` runs the same
    tests on the unchanged copy (they must pass, or a kill would mean nothing)."""
    with tempfile.TemporaryDirectory(prefix=f"ketta-mutant-{mutation.id}-") as tmp:
        root = Path(tmp)
        _scratch_copy(root)
        problem = _apply(mutation, root) if mutate else None
        if problem:
            return "broken", problem
        if not _imports_scratch_copy(root):
            return "broken", "the scratch copy is not what Python imports (PYTHONPATH)"
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests]
        try:
            result = subprocess.run(command, cwd=root, env=_env(root), capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return "killed", f"tests timed out after {timeout_s:g} s"
        last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
        if result.returncode == 0:
            return "survived", last
        if result.returncode in (4, 5):  # usage error / nothing collected: the listed tests are wrong
            return "broken", f"pytest exit {result.returncode}: {last}"
        return "killed", last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ids", nargs="*", help="mutation ids (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutation's test run")
    parser.add_argument("--no-baseline", action="store_true", help="skip running each test selection unmutated first")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.ids or m.id in args.ids]
    unknown = set(args.ids) - {m.id for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation ids: {', '.join(sorted(unknown))}")
    if args.list:
        for m in chosen:
            print(f"{m.id:<34} {m.path}\n{'':<34} {m.why}")
        return 0
    outcomes: dict[str, list[str]] = {"killed": [], "survived": [], "broken": []}
    if not args.no_baseline:
        for tests in dict.fromkeys(m.tests for m in chosen):
            first = next(m for m in chosen if m.tests == tests)
            outcome, detail = run(first, args.timeout, mutate=False)
            print(f"{'BASELINE':<9} {' '.join(tests)}: {'passes' if outcome == 'survived' else 'FAILS: ' + detail}", flush=True)
            if outcome != "survived":
                return 1
    for m in chosen:
        started = time.monotonic()
        outcome, detail = run(m, args.timeout)
        outcomes[outcome].append(m.id)
        print(f"{outcome.upper():<9} {m.id:<34} {time.monotonic() - started:6.1f} s  {detail}", flush=True)
    print(f"\n{len(outcomes['killed'])} killed, {len(outcomes['survived'])} survived, {len(outcomes['broken'])} broken")
    for m_id in outcomes["survived"]:
        print(f"  survived: {m_id}")
    return 0 if not outcomes["survived"] and not outcomes["broken"] else 1


if __name__ == "__main__":
    sys.exit(main())
