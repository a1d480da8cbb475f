"""Provider health: what a user sees at GET /v1/providers/{id}/health and in the shared table."""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterator

import httpx
import openai
import pytest
import sqlalchemy as sa

from conftest import KettaProcess
from ketta.providers import health as provider_health
from mock_openai import MockOpenAI

KEY = "sk-health-secret-0123456789abcdef"


# --- the summary, fed directly -----------------------------------------------------------------


def _summary(events: list[tuple[float, bool, float, str]], **kw: Any) -> dict[str, Any]:
    args = dict(last_error=None, last_error_class=None, last_error_at=None, last_success_at=None, cooldown_until=None,
                now=1000.0, window=300.0)
    args.update(kw)
    return provider_health.summarise(events, **args)


def test_summary_states_rates_and_percentiles() -> None:
    ok = [(900.0 + i, True, float(10 * (i + 1)), "2xx") for i in range(20)]
    healthy = _summary(ok, last_success_at=919.0)
    assert healthy["state"] == "healthy" and healthy["calls"] == 20 and healthy["errors"] == 0
    assert healthy["latency_ms"] == {"p50": 110.0, "p95": 190.0}

    one_failed = _summary([*ok, (950.0, False, 5.0, "5xx")], last_success_at=919.0, last_error_at=950.0,
                          last_error_class="5xx", last_error="boom")
    assert one_failed["state"] == "degraded" and one_failed["error_rate"] == round(1 / 21, 4)
    assert one_failed["status_classes"] == {"2xx": 20, "5xx": 1}
    assert one_failed["last_error"]["message"] == "boom"

    down = _summary([*ok, *[(950.0 + i, False, 5.0, "429") for i in range(3)]], last_success_at=919.0)
    assert down["state"] == "down"

    old = _summary([(100.0, False, 5.0, "5xx")])  # outside the window
    assert old["state"] == "unknown" and old["calls"] == 0

    cooling = _summary(ok, cooldown_until=1030.0)
    assert cooling["state"] == "cooling_down" and cooling["cooling_down_until"].startswith("1970-01-01T00:17:10")


def test_errors_are_classified_and_scrubbed() -> None:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    limited = openai.RateLimitError("slow down", response=httpx.Response(429, request=request, headers={"retry-after": "7"}), body=None)
    assert provider_health.status_class(limited) == "429"
    assert provider_health.retry_after_seconds(limited) == 7.0
    assert provider_health.status_class(openai.InternalServerError("x", response=httpx.Response(503, request=request), body=None)) == "5xx"
    assert provider_health.status_class(openai.APITimeoutError(request=request)) == "timeout"
    assert provider_health.status_class(openai.APIConnectionError(request=request)) == "connection"
    assert provider_health.status_class(None) == "2xx"
    text = provider_health.scrub(f"Incorrect API key provided: {KEY}. Authorization: Bearer {KEY}")
    assert KEY not in text and "Incorrect API key provided" in text


# --- end to end on the shared server ---------------------------------------------------------


@pytest.fixture
def llm() -> Iterator[MockOpenAI]:
    with MockOpenAI(api_key=KEY) as server:
        yield server


def make_agent(client: httpx.Client, provider: str, llm: MockOpenAI) -> tuple[str, str]:
    created = client.post("/v1/providers/", json={"name": provider, "provider_type": "openai", "api_key": KEY, "base_url": llm.base_url})
    assert created.status_code == 200, created.text
    agent = client.post("/v1/agents/", json={
        "name": f"agent-{uuid.uuid4().hex[:6]}", "agent_type": "letta_v1_agent", "include_base_tools": False,
        "model": f"{provider}/mock-chat-1", "embedding": f"{provider}/text-embedding-3-small"})
    assert agent.status_code == 200, agent.text
    return created.json()["id"], agent.json()["id"]


def send(client: httpx.Client, agent_id: str, text: str = "hi") -> httpx.Response:
    return client.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": text}]})


def test_health_shows_successes_errors_and_the_shared_row(shared_server: KettaProcess, shared_db: sa.Engine, llm: MockOpenAI) -> None:
    provider = f"health-{uuid.uuid4().hex[:8]}"
    with shared_server.client() as client:
        provider_id, agent_id = make_agent(client, provider, llm)
        fresh = client.get(f"/v1/providers/{provider_id}/health")
        assert fresh.status_code == 200, fresh.text
        assert fresh.json()["state"] == "unknown" and fresh.json()["calls"] == 0

        for _ in range(2):
            assert send(client, agent_id).status_code == 200
        for _ in range(5):  # more than the SDK's own retries: the call fails
            llm.queue_error(503, f"upstream overloaded, key {KEY}")
        failed = send(client, agent_id)
        assert failed.status_code >= 400
        llm.clear()

        health = client.get(f"/v1/providers/{provider_id}/health").json()
        assert health["provider_name"] == provider
        assert health["calls"] == 3 and health["errors"] == 1, health
        assert health["status_classes"] == {"2xx": 2, "5xx": 1}
        assert health["state"] == "degraded"
        assert health["latency_ms"]["p50"] is not None and health["last_success_at"]
        assert health["last_error"]["status_class"] == "5xx"
        assert "upstream overloaded" in health["last_error"]["message"]
        assert KEY not in fresh.text + str(health)

        assert client.get("/v1/providers/provider-00000000-0000-4000-8000-000000000000/health").status_code == 404
        assert "/v1/providers/{provider_id}/health" in client.get("/openapi.json").json()["paths"]

    # every worker and replica reads the row this worker writes within the flush interval
    # (an earlier flush may have written the two successes alone: wait for the row with all three)
    deadline = time.monotonic() + 60
    row = None
    while time.monotonic() < deadline and (row is None or len(row.events) < 3):
        with shared_db.connect() as conn:
            row = conn.execute(sa.text("SELECT events, last_error_class, last_error FROM ketta_provider_health "
                                       "WHERE provider_id = :id"), {"id": provider_id}).first()
        if row is None or len(row.events) < 3:
            time.sleep(0.5)
    assert row is not None, "no health row written"
    assert [e[1] for e in row.events] == [True, True, False] and row.last_error_class == "5xx"
    assert KEY not in (row.last_error or "")

    with shared_server.client() as client:
        assert client.delete(f"/v1/providers/{provider_id}").status_code in (200, 204)
    with shared_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ketta_provider_health WHERE provider_id = :id"), {"id": provider_id}).scalar_one() == 0


def test_health_of_another_organizations_provider_is_404(shared_server: KettaProcess, llm: MockOpenAI) -> None:
    with shared_server.client() as client:
        created = client.post("/v1/providers/", json={"name": f"health-{uuid.uuid4().hex[:8]}", "provider_type": "openai",
                                                      "api_key": KEY, "base_url": llm.base_url})
        assert created.status_code == 200, created.text
        org = client.post("/v1/admin/orgs/", json={"name": f"other-{uuid.uuid4().hex[:6]}"})
        assert org.status_code == 200, org.text
        user = client.post("/v1/admin/users/", json={"name": "other", "organization_id": org.json()["id"]})
        assert user.status_code == 200, user.text
        mine = client.get(f"/v1/providers/{created.json()['id']}/health")
        theirs = client.get(f"/v1/providers/{created.json()['id']}/health", headers={"user_id": user.json()["id"]})
    assert mine.status_code == 200
    assert theirs.status_code == 404, theirs.text


def test_a_kimi_providers_health_shows_its_balance_when_asked(shared_server: KettaProcess, llm: MockOpenAI) -> None:
    from mock_moonshot import MockMoonshot

    moon_key = "sk-moon-balance-0123456789"
    with MockMoonshot(api_key=moon_key) as moon, shared_server.client() as client:
        suffix = uuid.uuid4().hex[:8]
        kimi = client.post("/v1/providers/", json={"name": f"kimi-{suffix}", "provider_type": "kimi", "api_key": moon_key, "base_url": moon.base_url})
        assert kimi.status_code == 200, kimi.text
        kimi_id = kimi.json()["id"]
        balance_requests = lambda: [r for r in moon.requests if r.path.endswith("/users/me/balance")]  # noqa: E731
        asked_before = len(balance_requests())

        plain = client.get(f"/v1/providers/{kimi_id}/health")
        assert plain.status_code == 200 and plain.json()["balance"] is None
        assert len(balance_requests()) == asked_before  # not asked unless asked for

        asked = client.get(f"/v1/providers/{kimi_id}/health", params={"balance": "true"})
        assert asked.status_code == 200, asked.text
        balance = asked.json()["balance"]
        assert (balance["available_balance"], balance["voucher_balance"], balance["cash_balance"]) == (49.5, 0, 49.5)
        assert asked.json()["balance_error"] is None and moon_key not in asked.text
        assert len(balance_requests()) == asked_before + 1 and balance_requests()[-1].headers["authorization"] == f"Bearer {moon_key}"

        pool = client.post("/v1/pools/", json={"name": f"kimi-pool-{suffix}", "members": [f"kimi-{suffix}"]})
        assert pool.status_code == 200, pool.text
        pooled = client.get(f"/v1/providers/{pool.json()['id']}/health", params={"balance": "true"}).json()
        assert pooled["balance"] is None and pooled["members"][0]["balance"]["available_balance"] == 49.5, pooled

        moon.fail_next.append((401, "invalid_authentication_error", "Invalid Authentication"))
        refused = client.get(f"/v1/providers/{kimi_id}/health", params={"balance": "true"})
        assert refused.status_code == 200 and refused.json()["balance"] is None
        assert "Invalid Authentication" in refused.json()["balance_error"] and moon_key not in refused.text
        moon.down = True
        down = client.get(f"/v1/providers/{kimi_id}/health", params={"balance": "true"})
        assert down.status_code == 200 and "503" in down.json()["balance_error"], down.text

        other = client.post("/v1/providers/", json={"name": f"oai-{suffix}", "provider_type": "openai", "api_key": KEY, "base_url": llm.base_url})
        not_kimi = client.get(f"/v1/providers/{other.json()['id']}/health", params={"balance": "true"})
        assert not_kimi.status_code == 400 and "kimi" in not_kimi.json()["detail"]
