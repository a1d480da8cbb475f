"""The LLM-call routing seam (ketta/providers/routing.py): its own switch, its state beside Letta's objects.

In-process: a stand-in client with Letta's four sending methods; no server, no LLM.
"""

from __future__ import annotations

import types
import uuid

import pytest

from ketta.core.settings import KettaSettings
from ketta.providers import client_state, health, routing


class Client:
    """Letta's LLM client shape: an actor and the four sending methods."""

    def __init__(self, organization_id: str) -> None:
        self.actor = types.SimpleNamespace(organization_id=organization_id)

    async def request_async(self, request_data: dict, llm_config: object) -> dict:
        raise ConnectionError("upstream refused the connection")

    async def stream_async(self, request_data: dict, llm_config: object) -> dict:
        return {}

    async def request_embeddings(self, texts: list, embedding_config: object) -> list:
        return []

    def request(self, request_data: dict, llm_config: object) -> dict:
        return {}


def config(provider: str) -> object:
    return types.SimpleNamespace(provider_name=provider, handle=f"{provider}/m")


def settings_with(monkeypatch: pytest.MonkeyPatch, **values: object) -> None:
    import ketta.core.settings as settings_module

    chosen = KettaSettings(**{"provider_pools": False, "usage_ledger": False, **values})  # no database here
    monkeypatch.setattr(settings_module, "get_settings", lambda: chosen)


def test_routing_keeps_its_state_beside_the_client_not_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_with(monkeypatch)
    client = Client("org-" + uuid.uuid4().hex)
    routing.instrument(client)
    wrapped = client.request_async
    routing.instrument(client)  # idempotent: not wrapped twice
    assert client.request_async is wrapped
    assert client_state.known(client).instrumented
    assert [name for name in vars(client) if name.startswith("_ketta")] == [], "no Ketta state on Letta's object"


async def test_routing_works_with_health_off_and_records_only_with_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Health is one user of the seam: with KETTA_PROVIDER_HEALTH=false the calls still pass through
    (fallback and pools can act), and nothing is recorded."""
    organization, provider = "org-" + uuid.uuid4().hex, "p-" + uuid.uuid4().hex
    settings_with(monkeypatch, provider_health=False)
    client = Client(organization)
    routing.instrument(client)
    with pytest.raises(ConnectionError):
        await client.request_async({}, config(provider))
    assert health.snapshot(organization, provider) is None
    settings_with(monkeypatch, provider_health=True)
    with pytest.raises(ConnectionError):
        await client.request_async({}, config(provider))
    assert health.recent_errors(organization, provider, 60) == 1
