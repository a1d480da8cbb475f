"""README "Using it": the block marked ``<!-- readme-test: using-it -->`` runs as written.

The block is read from README.md (never copied here) and run with bash against the shared Ketta
server and a local mock OpenAI. Only the addresses and the provider name are swapped (the
server and the mock listen on free ports; the shared server needs a provider name of its own),
so a command that stops working in the README fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from conftest import REPO, KettaProcess, clean_env, unique
from mock_openai import MockOpenAI

MARKER = "<!-- readme-test: using-it"


def readme_block(marker: str = MARKER) -> str:
    """The fenced ``sh`` block right after ``marker`` in README.md."""
    text = (REPO / "README.md").read_text()
    found = re.search(re.escape(marker) + r"[^\n]*\n```sh\n(.*?)\n```", text, re.S)
    assert found, f"README.md has no sh block after {marker!r}"
    return found.group(1)


def test_using_it_block_runs_as_written(shared_server: KettaProcess, tmp_path: Path) -> None:
    block = readme_block()
    name = unique("readme").replace(" ", "-")  # a name a URL takes as it is, as the README's
    swaps = {"localhost:8283": shared_server.url.removeprefix("http://"), "my-llm": name}
    with MockOpenAI() as llm:
        llm_url = llm.base_url
        swaps["http://127.0.0.1:8000/v1"] = llm_url
        script = block
        for literal, actual in swaps.items():
            assert literal in script, f"the README block no longer uses {literal!r}: update this test's swaps"
            script = script.replace(literal, actual)
        env = clean_env(KETTA_HOME=str(shared_server.log_path.parent))
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README block failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        chats = [r for r in llm.requests if r.path.endswith("/chat/completions")]
    out = done.stdout
    provider = json.loads(out.splitlines()[0])
    assert provider["name"] == name and provider["base_url"] == llm_url
    assert f'"{name}/mock-chat-1"' in out  # the model listing names the handle the agent uses
    answer = next(line for line in out.splitlines() if line.startswith("{") and '"messages"' in line)
    assert "Hello from the mock LLM." in answer
    stream = out.split(answer, 1)[1]
    assert "data: " in stream and '"message_type"' in stream  # server-sent events of the second message
    assert len(chats) >= 2  # the blocking answer and the stream both reached the LLM
    assert all(r.headers.get("authorization") == "Bearer sk-any" for r in chats)
