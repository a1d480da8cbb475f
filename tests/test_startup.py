"""A quiet, useful start: one short block plus uvicorn's lines; a fast ``--help``.

(Commands beside a running embedded server: tests/test_settings_and_env.py, on its default-settings server.)"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from urllib.parse import urlsplit

from conftest import REPO, KettaProcess, clean_env


def start_lines(server: KettaProcess) -> list[str]:
    """What the server printed up to and including uvicorn's 'Application startup complete'."""
    lines = server.log_text().splitlines()
    end = next(i for i, line in enumerate(lines) if "Application startup complete" in line)
    return lines[: end + 1]


def test_default_start_prints_the_block_and_no_warning(shared_server: KettaProcess) -> None:
    lines = start_lines(shared_server)
    assert [line for line in lines if "WARNING" in line or "Warning" in line] == []
    own = [line for line in lines if not line.startswith("INFO:")]  # uvicorn's lines start with 'INFO:'
    assert own[0].startswith("Starting Ketta 0.1.0 on http://127.0.0.1:") and "Ctrl-C" in own[0], own  # said at once
    own = own[1:]
    assert own[0].startswith("Ketta 0.1.0 (Letta 0.16.8) on http://127.0.0.1:"), own
    db_name = urlsplit(shared_server.db_uri).path.lstrip("/")
    assert own[1].startswith("  database: PostgreSQL 127.0.0.1:") and f"/{db_name}, schema 0" in own[1], own
    assert own[2].startswith("  login:    ")
    assert own[3].startswith("  patches:  ") and "applied" in own[3]
    assert own[4].startswith("  CORS:     ") and "http://localhost:8080" in own[4]
    assert own[5].startswith("  key:      ") and "key id " in own[5] and "backup" in own[5], own
    assert len(own) == 6, "nothing but the block: " + "\n".join(own)
    password = urlsplit(shared_server.db_uri).password
    assert password and password not in "\n".join(lines)


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_help_answers_fast_and_flags_read_as_flags() -> None:
    started, cpu_before = time.monotonic(), child_cpu_seconds()
    result = subprocess.run([sys.executable, "-m", "ketta", "--help"], env=clean_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    elapsed, cpu = time.monotonic() - started, child_cpu_seconds() - cpu_before
    assert result.returncode == 0, result.stderr
    assert "--version " in result.stdout and "<bool>" not in result.stdout
    # CPU time, not wall time: on a shared machine the wall clock measures the neighbours.
    assert cpu < 2, f"ketta --help used {cpu:.2f}s of CPU ({elapsed:.2f}s wall)"
    imported = subprocess.run([sys.executable, "-X", "importtime", "-m", "ketta", "--help"], env=clean_env(), cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    assert not re.search(r"\|\s+letta(\.|$)", imported.stderr, re.M), "--help does not import Letta"
