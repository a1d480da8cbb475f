"""The README a newcomer follows (issue 22): its sample start block is today's (patch count, schema
head) and its Python block (providers over REST, the rest through letta-client) runs as written;
both read from the README, not copied."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO, TEST_TOKEN, KettaProcess, clean_env, unique
from mock_openai import MockOpenAI


def readme_block(marker: str) -> str:
    """The fenced block right after ``<!-- readme-test: MARKER ... -->``."""
    text = (REPO / "README.md").read_text()
    found = re.search(r"<!-- readme-test: " + re.escape(marker) + r"\b[^>]*-->\n```\w*\n(.*?)\n```", text, re.S)
    assert found, f"README has no block marked readme-test: {marker}"
    return found.group(1)


def test_the_sample_start_block_shows_todays_patch_count_and_schema() -> None:
    from ketta import letta_modifications
    from ketta.core.settings import KettaSettings

    block = readme_block("start-block")
    enabled = sum(1 for row in letta_modifications.status_from_source(KettaSettings()) if row.enabled)
    assert f"  patches:  {enabled} applied ('ketta patches' lists them)" in block.splitlines(), (enabled, block)
    head = sorted(p.stem for p in (REPO / "ketta" / "db" / "migrations" / "versions").glob("0*.py"))[-1]
    assert re.search(r"^  database: .*, schema " + re.escape(head) + "$", block, re.M), (head, block)
    assert block.splitlines()[0].startswith("Starting Ketta "), "the line said at once comes first"


def test_the_python_providers_block_runs_as_written(shared_server: KettaProcess) -> None:
    block = readme_block("python-providers")
    name = unique("py").replace(" ", "-")
    with MockOpenAI() as llm:
        swaps = {"http://localhost:8283": shared_server.url, "my-llm": name, "http://127.0.0.1:8000/v1": llm.base_url}
        for literal, actual in swaps.items():
            assert literal in block, f"the README block no longer uses {literal!r}: update this test's swaps"
            block = block.replace(literal, actual)
        done = subprocess.run([sys.executable, "-c", block], cwd=REPO, env=clean_env(KETTA_TOKEN=TEST_TOKEN),
                              capture_output=True, text=True, timeout=600)
        chats = [r for r in llm.requests if r.path.endswith("/chat/completions")]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    handles, answer = done.stdout.strip().splitlines()
    assert f"('{name}/mock-chat-1', 'llm')" in handles and f"('{name}/text-embedding-3-small', 'embedding')" in handles
    assert "Hello from the mock LLM." in answer
    assert chats and chats[-1].headers.get("authorization") == "Bearer sk-new", "the PATCHed key is used by the next message"
    with shared_server.client() as api:
        assert name not in [p["name"] for p in api.get("/v1/providers/").json()], "deleted at the end"
