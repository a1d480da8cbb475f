"""The deprecated synchronous listings of KimiProvider still work (Letta runs the async ones)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Iterator

import pytest

from conftest import clean_env
from mock_moonshot import MockMoonshot

SCRIPT = """
import json, sys
from ketta import letta_modifications
from ketta.core.settings import KettaSettings
letta_modifications.apply_all(KettaSettings())
from letta.schemas.secret import Secret
from ketta.providers.kimi import KimiProvider
provider = KimiProvider(name="kimi", provider_category="byok", base_url=sys.argv[1], api_key_enc=Secret.from_plaintext(sys.argv[2]))
print(json.dumps({
    "llm": {c.handle: c.context_window for c in provider.list_llm_models()},
    "embedding": [c.handle for c in provider.list_embedding_models()],
    "default_base_url": KimiProvider(name="kimi", provider_category="byok").base_url,
}))
"""


@pytest.fixture(scope="module")
def listed() -> Iterator[tuple[dict[str, Any], list[Any]]]:
    """One interpreter (importing Letta with every patch: ~9 s of CPU) for both tests: what it
    printed, and the requests the mock Moonshot API received."""
    with MockMoonshot(api_key="sk-sync") as moon:
        env = clean_env(LETTA_PG_URI="postgresql://nobody:none@127.0.0.1:1/none?sslmode=disable")  # never connected
        result = subprocess.run([sys.executable, "-c", SCRIPT, moon.base_url, "sk-sync"], env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        yield json.loads(result.stdout.strip().splitlines()[-1]), list(moon.requests)


def test_sync_list_llm_and_embedding_models(listed: tuple[dict[str, Any], list[Any]]) -> None:
    printed, requests = listed
    assert printed["llm"]["kimi/kimi-k2-0905-preview"] == 262144
    assert all(handle.startswith("kimi/") for handle in printed["llm"])
    assert printed["embedding"] == []
    assert any(r.path == "/v1/models" and r.api_key == "sk-sync" for r in requests)


def test_a_kimi_provider_without_base_url_talks_to_moonshot_china(listed: tuple[dict[str, Any], list[Any]]) -> None:
    """China keys are the common case (DESIGN.md: keys are region-bound); the type's default
    endpoint is what create stores and every call uses when no base_url is given."""
    printed, _ = listed
    assert printed["default_base_url"] == "https://api.moonshot.cn/v1"
