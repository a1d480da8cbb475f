"""Providers created, PATCHed, refreshed, listed and deleted by 8 clients at once (issue 9, piece 4).

Every answer is its route's normal one or a 404 for a provider deleted meanwhile: no 5xx, no
404 on create; afterwards no orphan or flagged rows. KETTA_CHURN_SECONDS bounds it (default 20).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter

import httpx
import sqlalchemy as sa

from mock_openai import MockOpenAI

SECONDS = float(os.environ.get("KETTA_CHURN_SECONDS", "20"))
CLIENTS = 8

# What each operation may answer; anything else is counted as unexpected.
ALLOWED = {
    "create": {200},
    "patch_key": {200, 404},
    "patch_url": {200, 404},
    "refresh": {200, 404},
    "get": {200, 404},
    "delete": {200, 404},
    "list_providers": {200},
    "list_models": {200},
}


def test_eight_clients_churning_providers_get_no_5xx_and_leave_no_orphans(shared_server, shared_db):
    prefix = f"churn {uuid.uuid4().hex[:6]}"
    outcomes: Counter[tuple[str, int]] = Counter()
    unexpected: list[str] = []
    lock = threading.Lock()
    known: list[str] = []  # provider ids some client created (others may delete them)
    deadline = time.monotonic() + SECONDS

    with MockOpenAI(api_key="sk-churn") as llm, MockOpenAI(api_key="sk-churn", chat_models=("other-chat",)) as other:
        urls = [llm.base_url, other.base_url]

        def client(number: int) -> None:
            try:
                churn(number)
            except Exception as exc:  # noqa: BLE001 - a dead client must fail the test, not vanish
                with lock:
                    unexpected.append(f"client {number} crashed: {type(exc).__name__}: {exc}")

        def churn(number: int) -> None:
            rng = random.Random(number)
            with httpx.Client(base_url=shared_server.url, headers=shared_server.headers, timeout=60) as api:
                while time.monotonic() < deadline:
                    with lock:
                        target = rng.choice(known) if known else None
                    op = rng.choice(["create", "create", "patch_key", "patch_url", "refresh", "get", "delete", "list_providers", "list_models"])
                    if target is None and op not in ("create", "list_providers", "list_models"):
                        op = "create"
                    if op == "create":
                        body = {"name": f"{prefix} {number}-{uuid.uuid4().hex[:6]}", "provider_type": "openai",
                                "api_key": "sk-churn", "base_url": rng.choice(urls)}
                        response = api.post("/v1/providers/", json=body)
                        if response.status_code == 200:
                            with lock:
                                known.append(response.json()["id"])
                    elif op == "patch_key":
                        response = api.patch(f"/v1/providers/{target}", json={"api_key": "sk-churn"})
                    elif op == "patch_url":
                        response = api.patch(f"/v1/providers/{target}", json={"base_url": rng.choice(urls), "api_key": "sk-churn"})  # a stored key follows a new origin only when sent again
                    elif op == "refresh":
                        response = api.patch(f"/v1/providers/{target}/refresh")
                    elif op == "get":
                        response = api.get(f"/v1/providers/{target}")
                    elif op == "delete":
                        response = api.delete(f"/v1/providers/{target}")
                        if response.status_code in (200, 404):
                            with lock:
                                if target in known:
                                    known.remove(target)
                    elif op == "list_providers":
                        response = api.get("/v1/providers/")
                    else:
                        response = api.get("/v1/models/")
                    with lock:
                        outcomes[(op, response.status_code)] += 1
                        if response.status_code not in ALLOWED[op]:
                            unexpected.append(f"{op} -> {response.status_code}: {response.text[:300]}")

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    total = sum(outcomes.values())
    server_errors = sum(n for (_, status), n in outcomes.items() if status >= 500)
    print(f"churn: {total} requests in {SECONDS:g} s from {CLIENTS} clients, {server_errors} x 5xx: {dict(sorted(outcomes.items()))}")
    assert server_errors == 0 and not unexpected, unexpected[:10]
    assert outcomes[("create", 200)] > CLIENTS and outcomes[("delete", 200)] > 0  # the churn really churned

    with shared_db.connect() as conn:
        orphans = conn.execute(sa.text(
            "SELECT count(*) FROM provider_models m LEFT JOIN providers p ON p.id = m.provider_id "
            "WHERE p.id IS NULL OR m.is_deleted OR p.is_deleted OR m.handle NOT LIKE p.name || '/%'"
        )).scalar()
        flagged = conn.execute(sa.text("SELECT count(*) FROM providers WHERE is_deleted")).scalar()
        # each surviving churn provider has exactly the models of its current endpoint, or none yet
        mixed = conn.execute(sa.text(
            "SELECT p.name FROM providers p JOIN provider_models m ON m.provider_id = p.id AND m.model_type = 'llm' "
            "WHERE p.name LIKE :prefix GROUP BY p.name HAVING count(*) > 1"
        ), {"prefix": f"{prefix}%"}).fetchall()
    print(f"churn: {orphans} orphan model rows, {flagged} flagged providers, {len(mixed)} providers with mixed models")
    assert orphans == 0 and flagged == 0 and mixed == []
