"""Run Letta 0.16.8's own tests under Ketta's patches and compare with the declared differences.

    python tests/upstream/run.py                 # patched run of the files in expected.toml; exit 1 on a surprise
    python tests/upstream/run.py --stock         # the same files on stock Letta (no patch), checked likewise
    python tests/upstream/run.py --record        # stock + patched; rewrite expected.toml and the coverage record
    python tests/upstream/run.py --files managers/test_provider_manager.py -- -x   # a subset, extra pytest args

Letta's tests are not copied into this repo: the runner downloads the PyPI sdist of letta==0.16.8
with pip (sha256 checked) into a cache (``KETTA_UPSTREAM_CACHE``, default
``~/.cache/ketta-upstream``) and extracts its ``tests/``. Each run gets a fresh database on a real
PostgreSQL (``LETTA_PG_URI``'s server if set, else an embedded one), migrated by
``ketta db upgrade``; pytest runs in a subprocess with the plugin ``ketta_upstream_plugin`` (which
applies the patches as the server does), every Letta/provider env var removed, and HTTP(S) sent
to a closed port on 127.0.0.1, so nothing leaves the machine.

A patched run fails when a test fails that ``expected.toml`` does not list, or when a listed test
passes. The per-patch record of which upstream tests call each patch's code is written by
``--record`` to ``ketta/letta_modifications/upstream_tests.json`` (``ketta patches`` shows it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EXPECTED = HERE / "expected.toml"
COVERAGE = REPO / "ketta" / "letta_modifications" / "upstream_tests.json"
LETTA_VERSION = "0.16.8"
SDIST = f"letta-{LETTA_VERSION}.tar.gz"
SDIST_SHA256 = "363e26989e552c859ce2e7961d484acee6fccfc1e7b16e8f644b1ae1ccd754a3"
# Env vars of a developer's shell that would change what Letta does (keys, endpoints, settings).
SCRUBBED_PREFIXES = ("LETTA_", "KETTA_", "OPENAI_", "ANTHROPIC_", "GEMINI_", "GOOGLE_", "OLLAMA_", "MOONSHOT_", "KIMI_",
                     "GROQ_", "TOGETHER_", "DEEPSEEK_", "XAI_", "MISTRAL_", "AZURE_", "OPENROUTER_", "VLLM_", "E2B_",
                     "COMPOSIO_", "TAVILY_", "EXA_", "PINECONE_", "TPUF_", "MODAL_", "BEDROCK_", "AWS_", "MINIMAX_",
                     "ZAI_", "LMSTUDIO_", "CEREBRAS_", "BASETEN_", "FIREWORKS_", "HF_", "HUGGING", "LANGFUSE_", "OTEL_")
SCRUBBED_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_PROXY", "_proxy")
STATUS_FAIL = "failed"


@dataclass
class Expected:
    """expected.toml: the files to run and the failures that are declared."""

    files: list[str]
    differs: dict[str, str]  # nodeid -> the Ketta change (patch target: why) it asserts against
    stock_failures: dict[str, str]  # nodeid -> why it fails on stock Letta too
    regressions: dict[str, str] = field(default_factory=dict)  # differs by mistake: nodeid -> issue
    ketta_fixes: dict[str, str] = field(default_factory=dict)  # fails on stock, passes under Ketta
    unstable: dict[str, str] = field(default_factory=dict)  # outcome varies run to run: deselected

    @classmethod
    def load(cls, path: Path = EXPECTED) -> "Expected":
        data = tomllib.loads(path.read_text())
        return cls(
            files=list(data["suite"]["files"]),
            differs=dict(data.get("differs", {})),
            stock_failures=dict(data.get("stock_failures", {})),
            regressions=dict(data.get("regressions", {})),
            ketta_fixes=dict(data.get("ketta_fixes", {})),
            unstable=dict(data.get("unstable", {})),
        )

    @property
    def differ_under_ketta(self) -> dict[str, str]:
        """Pass on stock, fail under Ketta: on purpose (differs) or by mistake (regressions)."""
        return {**self.differs, **self.regressions}


# ---------------------------------------------------------------------------------------------
# The sdist


def cache_dir() -> Path:
    return Path(os.environ.get("KETTA_UPSTREAM_CACHE", "~/.cache/ketta-upstream")).expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def upstream_tests(cache: Path | None = None) -> Path:
    """The extracted sdist root (holding ``tests/``), downloading and extracting once."""
    cache = cache or cache_dir()
    root = cache / f"letta-{LETTA_VERSION}"
    if (root / "tests" / "conftest.py").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / SDIST
    if not archive.exists() or _sha256(archive) != SDIST_SHA256:
        with tempfile.TemporaryDirectory(dir=cache) as download:
            print(f"[upstream] downloading the sdist of letta=={LETTA_VERSION} with pip", flush=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                 f"letta=={LETTA_VERSION}", "-d", download],
                check=True,
            )
            got = Path(download) / SDIST
            if _sha256(got) != SDIST_SHA256:
                raise SystemExit(f"[upstream] {SDIST} from PyPI does not have the pinned sha256 {SDIST_SHA256}")
            os.replace(got, archive)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        prefix = f"letta-{LETTA_VERSION}/tests/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
            tar.extractall(scratch, members=members, filter="data")
        try:
            os.replace(Path(scratch) / f"letta-{LETTA_VERSION}", root)
        except OSError:  # a concurrent run extracted it first
            if not (root / "tests" / "conftest.py").exists():
                raise
    return root


# ---------------------------------------------------------------------------------------------
# Database


@contextmanager
def fresh_database(workdir: Path) -> Iterator[str]:
    """A new database on LETTA_PG_URI's server (or an embedded one), migrated by ``ketta db upgrade``."""
    import sqlalchemy as sa

    from ketta.db.database import EmbeddedPostgres, sync_url, with_database

    server_uri = os.environ.get("LETTA_PG_URI")
    embedded = None
    if not server_uri:
        embedded = EmbeddedPostgres(home=workdir / "pg")
        server_uri = embedded.start()
    name = f"upstream_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(sync_url(with_database(server_uri, "postgres")), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        uri = with_database(server_uri, name)
        env = {**base_env(workdir), "LETTA_PG_URI": uri}
        done = subprocess.run([sys.executable, "-m", "ketta", "db", "upgrade"], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"[upstream] ketta db upgrade failed:\n{done.stdout}\n{done.stderr}")
        yield uri
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        if embedded is not None:
            embedded.stop()


def dead_proxy_port() -> int:
    """A port on 127.0.0.1 nothing listens on: every proxied request is refused at once."""
    from ketta.db.database import free_port

    return free_port()


def base_env(workdir: Path) -> dict[str, str]:
    """The caller's env without keys, endpoints or Letta/Ketta settings; Letta's files under workdir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES) and not k.endswith(SCRUBBED_SUFFIXES)}
    proxy = f"http://127.0.0.1:{dead_proxy_port()}"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[var] = proxy
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["KETTA_HOME"] = str(workdir / "ketta-home")
    env["LETTA_DIR"] = str(workdir / "letta-dir")
    # Same outcome on every machine: no tokenizer files cached by an earlier run elsewhere.
    env["TIKTOKEN_CACHE_DIR"] = str(workdir / "tiktoken-cache")
    return env


# ---------------------------------------------------------------------------------------------
# One pytest run


@dataclass
class RunResult:
    mode: str
    outcomes: dict[str, dict]
    patches: dict[str, list[str]]
    seconds: float
    returncode: int


def run_pytest(mode: str, files: list[str], pytest_args: list[str], workdir: Path, deselect: list[str] = ()) -> RunResult:
    root = upstream_tests()
    results = workdir / f"results-{mode}.json"
    with fresh_database(workdir) as uri:
        env = {
            **base_env(workdir),
            "LETTA_PG_URI": uri,
            "KETTA_UPSTREAM_MODE": mode,
            "KETTA_UPSTREAM_RESULTS": str(results),
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
        command = [
            sys.executable, "-m", "pytest", "-p", "ketta_upstream_plugin", "-c", str(HERE / "upstream.ini"),
            "--rootdir", str(root), "-p", "no:cacheprovider", "-q", "-rN", "--tb=line",
            *[str(root / "tests" / f) for f in files], *pytest_args,
            *[arg for nodeid in deselect for arg in ("--deselect", nodeid)],
        ]
        print(f"[upstream] {mode}: pytest on {len(files)} file(s) of letta {LETTA_VERSION}'s tests", flush=True)
        start = time.monotonic()
        log = workdir / f"pytest-{mode}.log"
        with open(log, "w") as out:
            done = subprocess.run(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        seconds = time.monotonic() - start
    if not results.exists():
        raise SystemExit(f"[upstream] pytest ({mode}) wrote no results (exit {done.returncode}):\n{log.read_text()[-6000:]}")
    data = json.loads(results.read_text())
    return RunResult(mode, data["outcomes"], data["patches"], seconds, done.returncode)


# ---------------------------------------------------------------------------------------------
# Checking


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].removeprefix("tests/")


def in_suite(nodeid: str, entries: list[str]) -> bool:
    """Whether a test is selected by the suite's entries (files, classes or node ids under tests/)."""
    short = nodeid.removeprefix("tests/")
    return any(short == e or short.startswith(e + "::") for e in entries)


def failed(result: RunResult) -> set[str]:
    return {n for n, o in result.outcomes.items() if o["outcome"] == STATUS_FAIL}


def check(result: RunResult, expected: Expected, complete: bool) -> list[str]:
    """Every surprise, one line each naming the test; empty when the run matches the declarations."""
    problems: list[str] = []
    ran = set(result.outcomes)
    fails = failed(result)
    if result.mode == "patched":
        must_fail = {**expected.differ_under_ketta, **expected.stock_failures}
        wrongly_listed = {n: "[ketta_fixes] says Ketta makes it pass" for n in expected.ketta_fixes}
    else:
        must_fail = {**expected.stock_failures, **expected.ketta_fixes}
        wrongly_listed = {n: "[differs]/[regressions] say stock Letta passes it" for n in expected.differ_under_ketta}
    for nodeid in sorted(fails - set(must_fail)):
        note = f" ({wrongly_listed[nodeid]})" if nodeid in wrongly_listed else ""
        problems.append(f"UNEXPECTED FAILURE {nodeid}{note}: {result.outcomes[nodeid]['message']}")
    for nodeid in sorted(set(must_fail) & ran - fails):
        problems.append(f"NOW PASSES {nodeid} (expected.toml declares it failing: if that is right now, "
                        "remove its entry or run `tests/upstream/run.py --record`)")
    if complete:
        declared = set(must_fail) | set(wrongly_listed)
        for nodeid in sorted(declared - ran):
            problems.append(f"NOT RUN {nodeid} (declared in expected.toml but not collected)")
    return problems


def per_file(result: RunResult) -> dict[str, Counter]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for nodeid, outcome in result.outcomes.items():
        counts[_file_of(nodeid)][outcome["outcome"]] += 1
        counts[_file_of(nodeid)]["seconds"] += outcome["duration"]
    return counts


def print_counts(results: list[RunResult]) -> None:
    tables = {r.mode: per_file(r) for r in results}
    files = sorted({f for table in tables.values() for f in table})
    print(f"{'file':<55}" + "".join(f"{m + ' pass/fail/skip  s':>28}" for m in tables))
    for name in files:
        row = ""
        for table in tables.values():
            c = table.get(name, Counter())
            row += f"{c['passed'] + c['xfailed']:>12}/{c['failed']}/{c['skipped']}{c['seconds']:>9.1f}".rjust(28)
        print(f"{name:<55}{row}")
    for r in results:
        c = Counter(o["outcome"] for o in r.outcomes.values())
        print(f"{r.mode}: {c['passed'] + c['xfailed']} passed, {c['failed']} failed, {c['skipped']} skipped in {r.seconds:.0f}s")


# ---------------------------------------------------------------------------------------------
# --record


def _toml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def patch_whys() -> dict[str, str]:
    from ketta import letta_modifications

    return {p.target: p.why for _, p in letta_modifications.iter_patches()}


def record(stock: RunResult, patched: RunResult, expected: Expected) -> None:
    """Rewrite expected.toml from what the two runs showed (reviewed reasons kept), and the coverage record."""
    stock_fails, patched_fails = failed(stock), failed(patched)
    whys = patch_whys()
    hits_of: dict[str, list[str]] = defaultdict(list)
    for target, tests in patched.patches.items():
        for test in tests:
            hits_of[test].append(target)

    def guess(nodeid: str) -> str:
        targets = hits_of.get(nodeid, [])
        if len(targets) == 1:
            return f"TODO review: {targets[0]}: {whys[targets[0]]}"
        return "TODO review; reaches " + (", ".join(targets) or "no patched code")

    differs, regressions = {}, {}
    for n in sorted(patched_fails - stock_fails):
        if n in expected.regressions:
            regressions[n] = expected.regressions[n]
        else:
            differs[n] = expected.differs.get(n) or guess(n)
    stock_failures = {n: expected.stock_failures.get(n) or "TODO review: " + stock.outcomes[n]["message"][:160]
                      for n in sorted(stock_fails & patched_fails)}
    fixes = {n: expected.ketta_fixes.get(n) or guess(n) for n in sorted(stock_fails - patched_fails)}

    def section(name: str, comment: str, entries: dict[str, str]) -> list[str]:
        return [comment, f"[{name}]", *[f"{_toml_str(n)} = {_toml_str(r)}" for n, r in entries.items()], ""]

    lines = [
        "# Letta 0.16.8's own tests under Ketta's patches: what tests/upstream/run.py expects.",
        "# Regenerate with `python tests/upstream/run.py --record` (runs stock and patched), then review every",
        "# TODO. Reviewed lines are kept by --record; a test whose outcome changed moves to its new section.",
        "",
        "[suite]",
        "# Files (or classes, node ids) of the sdist's tests/ that CI runs (README, \"Letta's own tests\", says why).",
        "files = [",
        *[f"    {_toml_str(f)}," for f in expected.files],
        "]",
        "",
        *section("differs", "# Pass on stock Letta, fail under Ketta on purpose: nodeid = \"patch target: what Ketta does instead\".",
                 differs),
        *section("regressions", "# Pass on stock Letta, fail under Ketta by mistake: nodeid = the issue that fixes it.", regressions),
        *section("stock_failures", "# Fail on stock Letta too (no network, no keys here): nodeid = why.", stock_failures),
        *section("ketta_fixes", "# Fail on stock Letta, pass under Ketta: nodeid = the Ketta change that makes them pass.", fixes),
        *section("unstable", "# Outcome varies from run to run on stock Letta too: deselected. nodeid = why.", expected.unstable),
    ]
    EXPECTED.write_text("\n".join(lines))
    write_coverage(patched)
    todo = sum("TODO" in r for d in (differs, stock_failures, fixes) for r in d.values())
    print(f"[upstream] wrote {EXPECTED.relative_to(REPO)} ({len(differs)} differ, {len(regressions)} regressions, "
          f"{len(stock_failures)} fail on stock, {len(fixes)} fixed; {todo} TODO) and {COVERAGE.relative_to(REPO)}")


def coverage_of(result: RunResult) -> dict[str, list[str]]:
    return {target: sorted(tests) for target, tests in sorted(result.patches.items())}


def write_coverage(result: RunResult) -> None:
    data = {
        "letta": LETTA_VERSION,
        "about": "Letta's own tests (sdist tests/) that call each patch's code, recorded by tests/upstream/run.py --record",
        "patches": coverage_of(result),
    }
    COVERAGE.write_text(json.dumps(data, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--stock", action="store_true", help="run without any Ketta patch (stock Letta)")
    mode.add_argument("--record", action="store_true", help="run stock and patched; rewrite expected.toml and the coverage record")
    parser.add_argument("--files", nargs="+", help="files (or node ids) under the sdist's tests/, instead of expected.toml's")
    parser.add_argument("--workdir", type=Path, help="keep logs and results here (default: a temp dir, removed)")
    parser.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments")
    args = parser.parse_args(argv)

    expected = Expected.load()
    files = args.files or expected.files
    complete = args.files is None and not args.pytest_args
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ketta-upstream-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.record:
            stock = run_pytest("stock", files, args.pytest_args, workdir, list(expected.unstable))
            patched = run_pytest("patched", files, args.pytest_args, workdir, list(expected.unstable))
            print_counts([stock, patched])
            record(stock, patched, expected)
            return 0
        result = run_pytest("stock" if args.stock else "patched", files, args.pytest_args, workdir, list(expected.unstable))
        print_counts([result])
        problems = check(result, expected, complete)
        if result.mode == "patched" and complete:
            committed = json.loads(COVERAGE.read_text())["patches"] if COVERAGE.exists() else {}
            if committed != coverage_of(result):
                print(f"[upstream] note: the tests that reach each patch changed; `run.py --record` refreshes {COVERAGE.name}")
        if not result.outcomes:
            problems.append("no test ran")
        for line in problems:
            print(f"[upstream] {line}")
        if problems:
            print(f"[upstream] {len(problems)} surprise(s); logs in {workdir}" + ("" if args.workdir else " (removed)"))
            if result.returncode not in (0, 1):
                print((workdir / f"pytest-{result.mode}.log").read_text()[-4000:])
            return 1
        print(f"[upstream] {result.mode}: every outcome as declared in expected.toml")
        return 0
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
