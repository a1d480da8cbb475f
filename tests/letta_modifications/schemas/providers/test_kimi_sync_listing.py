"""The deprecated synchronous listings of KimiProvider still work (Letta runs the async ones)."""

from __future__ import annotations

import json
import subprocess
import sys

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
}))
"""


def test_sync_list_llm_and_embedding_models() -> None:
    with MockMoonshot(api_key="sk-sync") as moon:
        env = clean_env(LETTA_PG_URI="postgresql://nobody:none@127.0.0.1:1/none?sslmode=disable")  # never connected
        result = subprocess.run([sys.executable, "-c", SCRIPT, moon.base_url, "sk-sync"], env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        listed = json.loads(result.stdout.strip().splitlines()[-1])
        assert listed["llm"]["kimi/kimi-k2-0905-preview"] == 262144
        assert all(handle.startswith("kimi/") for handle in listed["llm"])
        assert listed["embedding"] == []
        assert any(r.path == "/v1/models" and r.api_key == "sk-sync" for r in moon.requests)


def test_a_kimi_provider_without_base_url_talks_to_moonshot_china() -> None:
    """China keys are the common case (DESIGN.md: keys are region-bound); the type's default
    endpoint is what create stores and every call uses when no base_url is given."""
    script = SCRIPT.split("provider = ")[0] + 'print(KimiProvider(name="kimi", provider_category="byok").base_url)\n'
    env = clean_env(LETTA_PG_URI="postgresql://nobody:none@127.0.0.1:1/none?sslmode=disable")  # never connected
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "https://api.moonshot.cn/v1"
