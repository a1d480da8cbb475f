"""The suite's parallel workers keep a module's tests together, so its module-scoped server starts once.

pytest-xdist 3.8 under pytest 9 lost its groups silently (the ``@group`` suffix went to an
attribute pytest no longer reads, and workers did not know the controller's ``--dist loadgroup``):
every module-scoped server then started on up to three workers. This runs the suite's own
``conftest.py`` the way the README's command does (no arguments: its default workers) on a
module whose module-scoped fixture records each set-up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import WORKERS_FOR_THE_SUITE

HERE = Path(__file__).resolve().parent
# What tests/conftest.py imports from the tests directory.
CONFTEST_AND_ITS_MODULES = ("conftest.py", "forked_servers.py", "loopback_only.py", "mock_openai.py", "operator_env.py")

PROBE = '''
import os
import pytest

@pytest.fixture(scope="module")
def server_like():
    with open(os.environ["SETUPS_FILE"], "a") as out:
        out.write(os.environ.get("PYTEST_XDIST_WORKER", "in-process") + "\\n")

@pytest.mark.parametrize("n", range(9))
def test_uses_the_module_fixture(server_like, n):
    pass

def test_another_module_may_run_beside_it():
    pass
'''


def test_a_module_scoped_fixture_is_set_up_once_across_the_default_workers(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    for name in CONFTEST_AND_ITS_MODULES:
        shutil.copy(HERE / name, project / "tests" / name)
    (project / "tests" / "test_probe.py").write_text(PROBE)
    (project / "tests" / "test_other.py").write_text("def test_elsewhere():\n    pass\n")
    (project / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    setups = tmp_path / "setups"
    # The suite's own choice of workers and distribution (no -n, no --dist); only xdist among the
    # installed plugins (the others cost seconds of CPU per process and play no part here).
    env = {**os.environ, "SETUPS_FILE": str(setups), "KETTA_TEST_FORKED_SERVERS": "false", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop("PYTEST_XDIST_AUTO_NUM_WORKERS", None)
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "xdist", "-p", "no:cacheprovider", "-q"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "11 passed" in done.stdout and f"{WORKERS_FOR_THE_SUITE} parallel worker(s)" in done.stdout, done.stdout[-2000:]
    workers = setups.read_text().split()
    assert len(workers) == 1, f"the module's fixture was set up on {workers}: its tests were spread over workers"
    assert workers[0].startswith("gw"), workers
