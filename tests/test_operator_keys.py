"""The operator's env keys reach no endpoint through any of Letta's LLM clients.

Letta's Azure, DeepSeek, Groq, xAI, Together, Fireworks, Baseten, Z.ai, MiniMax, Gemini and
Anthropic clients fall back to (or only use) the keys Letta read from the environment into
``model_settings``. A server whose operator set one key per type (the env-key fallback off, the
default) serves a keyless ``azure`` provider and agents whose ``llm_config``/``embedding_config``
name no provider, each pointed at a local recording endpoint (one path prefix per type, so each
test shows the call did reach it): no operator key is in any header, path or query it receives.
That server is the suite's ``operator_keys_server`` (tests/conftest.py), shared with
tests/test_identity_and_env_keys.py.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from conftest import unique
from operator_env import OPERATOR_KEYS, RecordingEndpoint

# Every model_endpoint_type whose Letta client reads an env key (fireworks: Letta 0.16.8 cannot store
# an agent of that type, 400 from its AgentState validation, so its client is unreachable; google_ai
# always calls Google's public host: its key is checked in-process below).
CHAT_TYPES = ("openai", "deepseek", "groq", "xai", "together", "zai", "openrouter", "anthropic", "minimax")
EMBEDDING_TYPES = ("openai", "groq", "together", "azure")  # the types EmbeddingConfig accepts that have a client of their own


@pytest.fixture()
def attacker() -> Iterator[RecordingEndpoint]:
    endpoint = RecordingEndpoint()
    yield endpoint
    endpoint.close()


def test_a_keyless_azure_provider_never_gets_azure_api_key(operator_keys_server, attacker):
    name = unique("keyless-azure")
    with operator_keys_server.client() as api:
        created = api.post("/v1/providers/", json={"name": name, "provider_type": "azure", "api_key": "",
                                                   "base_url": f"{attacker.url}/azure/openai/v1", "api_version": "2024-09-01-preview"})
        assert created.status_code == 200, created.text
        agent = api.post("/v1/agents/", json={
            "name": unique("azure-thief"), "model": f"{name}/mock-chat-1", "include_base_tools": False,
            "embedding_config": {"embedding_model": "text-embedding-3-small", "embedding_endpoint_type": "azure",
                                 "embedding_endpoint": f"{attacker.url}/azure/openai/v1", "embedding_dim": 1536,
                                 "handle": f"{name}/text-embedding-3-small"}})
        assert agent.status_code == 200, agent.text
        api.post(f"/v1/agents/{agent.json()['id']}/messages", json={"messages": [{"role": "user", "content": "hi"}]})
        api.post(f"/v1/agents/{agent.json()['id']}/archival-memory", json={"text": "remember this"})
    chat = [s for s in attacker.under("azure") if s.path.split("?")[0].endswith("/chat/completions")]
    assert chat, f"the message reached the provider's endpoint: {[s.path for s in attacker.seen]}"
    assert chat[-1].headers.get("authorization") == "Bearer ketta-no-key"
    assert [s for s in attacker.under("azure") if s.path.split("?")[0].endswith("/embeddings")], "the embedding reached it too"
    assert attacker.leaked() == []


def test_agent_configs_without_a_provider_never_get_an_env_key(operator_keys_server, attacker, operator_endpoint):
    """Every client type, chat and embeddings, pointed at the attacker's endpoint (Azure's at the
    operator's own AZURE_BASE_URL, where stock Letta spends AZURE_API_KEY for anyone)."""
    with operator_keys_server.client() as api:
        for endpoint_type in CHAT_TYPES:
            agent = api.post("/v1/agents/", json={
                "name": unique(f"cfg-{endpoint_type}"), "include_base_tools": False,
                "llm_config": {"model": "mock-chat-1", "model_endpoint_type": endpoint_type,
                               "model_endpoint": f"{attacker.url}/{endpoint_type}/v1", "context_window": 8000},
                "embedding_config": {"embedding_model": "text-embedding-3-small", "embedding_endpoint_type": "openai",
                                     "embedding_endpoint": f"{attacker.url}/openai-embed/v1", "embedding_dim": 1536},
            })
            assert agent.status_code == 200, (endpoint_type, agent.text)
            api.post(f"/v1/agents/{agent.json()['id']}/messages", json={"messages": [{"role": "user", "content": "hi"}]})
        azure = api.post("/v1/agents/", json={
            "name": unique("cfg-azure"), "include_base_tools": False,
            "llm_config": {"model": "mock-chat-1", "model_endpoint_type": "azure",
                           "model_endpoint": f"{attacker.url}/azure/v1", "context_window": 8000},
            "embedding_config": {"embedding_model": "text-embedding-3-small", "embedding_endpoint_type": "openai",
                                 "embedding_endpoint": f"{attacker.url}/openai-embed/v1", "embedding_dim": 1536},
        })
        assert azure.status_code == 200, azure.text
        api.post(f"/v1/agents/{azure.json()['id']}/messages", json={"messages": [{"role": "user", "content": "hi"}]})
        for endpoint_type in EMBEDDING_TYPES:
            agent = api.post("/v1/agents/", json={
                "name": unique(f"emb-{endpoint_type}"), "include_base_tools": False,
                "llm_config": {"model": "mock-chat-1", "model_endpoint_type": "openai",
                               "model_endpoint": f"{attacker.url}/openai-chat/v1", "context_window": 8000},
                "embedding_config": {"embedding_model": "text-embedding-3-small", "embedding_endpoint_type": endpoint_type,
                                     "embedding_endpoint": f"{attacker.url}/embed-{endpoint_type}/v1", "embedding_dim": 1536},
            })
            assert agent.status_code == 200, (endpoint_type, agent.text)
            api.post(f"/v1/agents/{agent.json()['id']}/archival-memory", json={"text": "remember this"})
    reached = {t for t in CHAT_TYPES if attacker.under(t)} | {f"embed-{t}" for t in EMBEDDING_TYPES if attacker.under(f"embed-{t}")}
    missing = (set(CHAT_TYPES) | {f"embed-{t}" for t in EMBEDDING_TYPES if t != "azure"}) - reached
    assert not missing, f"these calls never reached the endpoint (the test would prove nothing for them): {sorted(missing)}"
    assert operator_endpoint.under("operator-azure"), "the azure config's call went to the operator's AZURE_BASE_URL"
    assert attacker.leaked() == []
    assert operator_endpoint.leaked() == [], "a user's agent spent the operator's AZURE_API_KEY at its own endpoint"


def test_web_search_never_spends_the_operator_s_exa_key(operator_keys_server):
    """An agent's LLM (here a provider the user runs) calls Letta's built-in web_search: with
    KETTA_SHARE_SEARCH_KEYS off (the default) the operator's EXA_API_KEY is not Letta's to use."""
    from mock_openai import MockOpenAI

    name = unique("searcher")
    with operator_keys_server.client() as api, MockOpenAI(force_tool="web_search", reply="anything") as llm:
        created = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "sk-own", "base_url": llm.base_url})
        assert created.status_code == 200, created.text
        agent = api.post("/v1/agents/", json={"name": name, "model": f"{name}/mock-chat-1", "embedding": f"{name}/text-embedding-3-small",
                                               "include_base_tools": False, "tools": ["web_search"]})
        assert agent.status_code == 200, agent.text
        sent = api.post(f"/v1/agents/{agent.json()['id']}/messages", json={"messages": [{"role": "user", "content": "search"}]})
        assert sent.status_code == 200, sent.text
        returns = [m for m in sent.json()["messages"] if m.get("message_type") == "tool_return_message"]
        assert returns and "EXA_API_KEY is not set" in returns[0]["tool_return"], returns


def test_the_operator_keys_are_withheld_from_letta_s_settings():
    """Every key this module sets is a field :func:`credential_fields` finds in the installed Letta
    (so a field an upgrade adds, matching the pattern, is withheld too)."""
    from letta.settings import ModelSettings

    from ketta.security.operator_keys import credential_fields

    from ketta.security.operator_keys import SEARCH_TOOL_FIELDS

    fields = set(credential_fields(ModelSettings())) | set(SEARCH_TOOL_FIELDS)
    assert {name.lower() for name in OPERATOR_KEYS} <= fields, fields


def test_withheld_keys_leave_letta_s_settings(monkeypatch):
    """In-process: withholding empties Letta's fields (what GoogleAIClient, whose endpoint is
    Google's own, and the others read), kept for Ketta's own fallback and for redaction."""
    from letta.settings import model_settings

    from ketta.security import operator_keys
    from ketta.security import server_secrets
    from ketta.app import _operator_keys_out_of_letta
    from ketta.core.settings import KettaSettings

    monkeypatch.setattr(model_settings, "gemini_api_key", "opkey-gemini-inproc")
    monkeypatch.setattr(model_settings, "deepseek_api_key", "opkey-deepseek-inproc")
    monkeypatch.setattr(operator_keys, "_withheld", {})
    monkeypatch.setattr(server_secrets, "_taken", {})
    _operator_keys_out_of_letta(KettaSettings())
    assert model_settings.gemini_api_key is None and model_settings.deepseek_api_key is None
    assert server_secrets.get("GEMINI_API_KEY") == "opkey-gemini-inproc"
    assert "GEMINI_API_KEY" in operator_keys.withheld()


def test_azure_fallback_on_gives_the_key_only_at_the_operator_s_endpoint(monkeypatch):
    """KETTA_ENV_KEY_FALLBACK=true: AZURE_API_KEY goes to AZURE_BASE_URL (or below), never elsewhere."""
    from ketta.security import operator_keys
    from ketta.letta_modifications.llm_api import azure_client
    from ketta.core.settings import KettaSettings

    monkeypatch.setattr("ketta.core.settings.get_settings", lambda: KettaSettings(env_key_fallback=True))
    monkeypatch.setitem(operator_keys._withheld, "AZURE_API_KEY", "opkey-azure")
    own = ["https://operator.openai.azure.com/openai/v1"]
    assert operator_keys.operator_key_at("AZURE_API_KEY", "https://operator.openai.azure.com/openai/v1", own) == "opkey-azure"
    assert operator_keys.operator_key_at("AZURE_API_KEY", "https://user.example.com/openai/v1", own) is None
    monkeypatch.setattr(azure_client, "operator_endpoints", lambda: own)
    resolve = azure_client._resolve_credentials.__get__(object())
    monkeypatch.setattr("ketta.core.patching.original", lambda target: lambda self, key, base, version: (key, base, version))
    assert resolve(None, "https://operator.openai.azure.com/openai/v1", None)[0] == "opkey-azure"
    assert resolve(None, "https://user.example.com/openai/v1", None)[0] == "ketta-no-key"
    assert resolve("sk-stored", "https://user.example.com/openai/v1", None)[0] == "sk-stored"
    monkeypatch.setattr("ketta.core.settings.get_settings", lambda: KettaSettings(env_key_fallback=False))
    assert resolve(None, "https://operator.openai.azure.com/openai/v1", None)[0] == "ketta-no-key"


@pytest.fixture()
def azure_patches() -> Iterator[None]:
    """The Azure patches applied in this process for one test (reverted after, unless they were)."""
    from ketta.core import patching
    from ketta.letta_modifications.llm_api import azure_client

    applied = [p for p in azure_client.PATCHES if patching.apply(p)]
    yield
    for patch in applied:
        patching.revert(patch)


def test_azure_never_takes_the_key_from_the_environment(azure_patches, monkeypatch):
    """KETTA_SECRETS_OUT_OF_ENVIRONMENT=false keeps AZURE_API_KEY in os.environ, where Letta's
    _resolve_credentials looks after model_settings: a keyless call still gets the placeholder,
    at a user's endpoint and (fallback off) at the operator's own."""
    from letta.llm_api.azure_client import AzureClient
    from letta.settings import model_settings

    monkeypatch.setenv("AZURE_API_KEY", "opkey-azure-in-environ")
    monkeypatch.setattr(model_settings, "azure_api_key", None)
    monkeypatch.setattr(model_settings, "azure_base_url", "https://operator.openai.azure.com/openai/v1")
    client = AzureClient()
    for endpoint in ("https://user.example.com/openai/v1", None):
        key, base_url, _ = client._resolve_credentials(None, endpoint, None)
        assert key == "ketta-no-key", (endpoint, base_url)
    assert client._resolve_credentials("sk-stored", "https://user.example.com/openai/v1", None)[0] == "sk-stored"


@pytest.fixture()
def key_patches() -> Iterator[None]:
    """Ketta's key patches of Letta's base and OpenAI clients, applied in this process for one test."""
    from ketta.core import patching
    from ketta.letta_modifications.llm_api import llm_client_base, openai_client

    wanted = [p for p in llm_client_base.PATCHES + openai_client.PATCHES
              if p.target.endswith(("get_byok_overrides", "_prepare_client_kwargs_embedding"))]
    applied = [p for p in wanted if patching.apply(p)]
    yield
    for patch in applied:
        patching.revert(patch)


def test_letta_s_own_fallback_is_closed_even_with_keys_in_its_settings(key_patches, monkeypatch):
    """The layer below the withholding: were OPENAI_API_KEY still in Letta's model_settings (the
    unified_providers patches on, withholding bypassed), a config without provider_name and an
    embedding config without a provider handle are still built with the placeholder."""
    from letta.llm_api.openai_client import OpenAIClient
    from letta.schemas.embedding_config import EmbeddingConfig
    from letta.schemas.llm_config import LLMConfig
    from letta.settings import model_settings

    monkeypatch.setattr(model_settings, "openai_api_key", "opkey-openai-inproc")
    client = OpenAIClient(actor=None)
    config = LLMConfig(model="m", model_endpoint_type="openai", model_endpoint="https://user.example.com/v1", context_window=8000)
    assert client._prepare_client_kwargs(config)["api_key"] == "ketta-no-key"
    embedding = EmbeddingConfig(embedding_model="e", embedding_endpoint_type="openai", embedding_endpoint="https://user.example.com/v1",
                                embedding_dim=8)
    assert client._prepare_client_kwargs_embedding(embedding)["api_key"] == "ketta-no-key"
