"""The operator's env keys with the outer layer off: KETTA_SECRETS_OUT_OF_ENVIRONMENT=false leaves
OPENAI_API_KEY in the server's environment and in Letta's ``model_settings``, where Letta's clients
fall back to it for any call without a key of its own. The placeholder Ketta hands those clients
instead (``NO_KEY``: ketta/letta_modifications/llm_api/llm_client_base.py and openai_client.py)
still keeps the key from an endpoint a user names.

The suite's other operator-keys tests (tests/test_operator_keys.py, tests/test_identity_and_env_keys.py)
run with the default, where the keys are withheld from Letta first, so they cannot tell whether
this inner layer holds."""

from __future__ import annotations

from typing import Iterator

import pytest

from conftest import KettaProcess, server_of_its_own
from mock_openai import MockOpenAI
from operator_env import keys_seen, message_through, message_through_a_providerless_agent

OPERATOR_KEY = "sk-operator-inner-layer-7f3e"


@pytest.fixture(scope="module")
def keys_left_in_letta(tmp_path_factory: pytest.TempPathFactory, pg_uri: str) -> Iterator[KettaProcess]:
    with server_of_its_own(pg_uri, tmp_path_factory.mktemp("inner-home"), "inner", OPENAI_API_KEY=OPERATOR_KEY,
                           KETTA_SECRETS_OUT_OF_ENVIRONMENT="false") as proc:
        yield proc


def test_a_keyless_provider_s_message_carries_no_env_key(keys_left_in_letta: KettaProcess):
    with keys_left_in_letta.client() as api, MockOpenAI() as attacker:
        created = api.post("/v1/providers/", json={"name": "keyless", "provider_type": "openai", "api_key": "",
                                                   "base_url": attacker.base_url})
        assert created.status_code == 200, created.text
        message_through(api, "keyless", attacker, "keyless-agent")
        assert attacker.chat_requests(), "the message reached the mock"
        assert OPERATOR_KEY not in keys_seen(attacker)


def test_an_agent_config_without_a_provider_gets_no_env_key(keys_left_in_letta: KettaProcess):
    with keys_left_in_letta.client() as api, MockOpenAI() as attacker:
        message_through_a_providerless_agent(api, attacker.base_url)
        assert attacker.chat_requests(), "the message reached the mock"
        assert [r for r in attacker.requests if r.path.endswith("/embeddings")], "the passage's embedding reached the mock"
        assert OPERATOR_KEY not in keys_seen(attacker)
