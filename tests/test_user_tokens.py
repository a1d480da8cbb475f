"""Per-user tokens (ketta/security/user_tokens.py): a user's token acts as that user only, org isolation holds."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from typing import Iterator

import httpx
import pytest
import sqlalchemy as sa

from conftest import REPO, KettaProcess, clean_env
from mock_openai import MockOpenAI

KEY_A = "sk-user-a-key"


def ketta_token(server: KettaProcess, *args: str) -> subprocess.CompletedProcess:
    env = clean_env(LETTA_PG_URI=server.db_uri, KETTA_HOME=str(server.log_path.parent))
    return subprocess.run([sys.executable, "-m", "ketta", "token", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=180)


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


@pytest.fixture(scope="module")
def llm() -> Iterator[MockOpenAI]:
    with MockOpenAI(api_key=KEY_A) as mock:
        yield mock


@pytest.fixture(scope="module")
def two_orgs(shared_server: KettaProcess) -> dict[str, str]:
    """Users A and B in two organizations of their own, made with the server token."""
    ids: dict[str, str] = {}
    with shared_server.client() as admin:
        for who in ("a", "b"):
            org = admin.post("/v1/admin/orgs/", json={"name": f"org-{who}-{uuid.uuid4().hex[:6]}"})
            assert org.status_code == 200, org.text
            user = admin.post("/v1/admin/users/", json={"name": f"user-{who}", "organization_id": org.json()["id"]})
            assert user.status_code == 200, user.text
            ids[f"org_{who}"], ids[f"user_{who}"] = org.json()["id"], user.json()["id"]
    return ids


def test_user_tokens_act_as_their_user_only_and_keep_orgs_apart(shared_server, shared_db, two_orgs, llm):
    url = shared_server.url
    # A's token from the CLI (printed once on stdout), B's over the admin REST route.
    made = ketta_token(shared_server, "create", "--user", two_orgs["user_a"], "--name", "laptop")
    assert made.returncode == 0, made.stderr
    token_a = made.stdout.strip()
    assert token_a.startswith("kt_") and len(token_a) > 40
    assert "laptop" in made.stderr and two_orgs["user_a"] in made.stderr
    created_b = httpx.post(f"{url}/v1/ketta/tokens/", headers=shared_server.headers, json={"user_id": two_orgs["user_b"], "name": "phone"})
    assert created_b.status_code == 201, created_b.text
    token_b, id_b = created_b.json()["token"], created_b.json()["id"]
    assert created_b.json()["organization_id"] == two_orgs["org_b"] and created_b.json()["revoked"] is False

    # Only hashes are stored.
    with shared_db.connect() as conn:
        stored = conn.execute(sa.text("SELECT * FROM ketta_user_tokens WHERE user_id IN (:a, :b)"),
                              {"a": two_orgs["user_a"], "b": two_orgs["user_b"]}).mappings().all()
    assert sorted(r["token_hash"] for r in stored) == sorted(hashlib.sha256(t.encode()).hexdigest() for t in (token_a, token_b))
    assert token_a not in repr(stored) and token_b not in repr(stored)

    # A creates a provider: it lands in A's organization, though A sent no user_id header.
    name = f"a-prov-{uuid.uuid4().hex[:6]}"
    provider = httpx.post(f"{url}/v1/providers/", headers=bearer(token_a), timeout=60,
                          json={"name": name, "provider_type": "openai", "api_key": KEY_A, "base_url": llm.base_url})
    assert provider.status_code == 200, provider.text
    assert provider.json()["organization_id"] == two_orgs["org_a"]
    pid = provider.json()["id"]
    assert name in [p["name"] for p in httpx.get(f"{url}/v1/providers/", headers=bearer(token_a)).json()]

    # B cannot see, patch, delete, refresh, check or use A's provider.
    as_b = httpx.Client(base_url=url, headers=bearer(token_b), timeout=60)
    llm.clear()
    assert name not in [p["name"] for p in as_b.get("/v1/providers/").json()]
    assert as_b.get(f"/v1/providers/{pid}").status_code == 404
    assert as_b.patch(f"/v1/providers/{pid}", json={"api_key": "sk-stolen"}).status_code == 404
    assert as_b.delete(f"/v1/providers/{pid}").status_code == 404
    assert as_b.patch(f"/v1/providers/{pid}/refresh").status_code == 404
    assert as_b.post(f"/v1/providers/{pid}/check").status_code == 404
    assert name not in {m.get("provider_name") for m in as_b.get("/v1/models/").json()}
    used = as_b.post("/v1/agents/", json={"model": f"{name}/mock-chat-1", "embedding": f"{name}/text-embedding-3-small"})
    assert 400 <= used.status_code < 500, used.text
    assert llm.requests == [], "nothing reached A's LLM with A's key"
    with shared_db.connect() as conn:
        row = conn.execute(sa.text("SELECT name, is_deleted FROM providers WHERE id = :i"), {"i": pid}).one()
    assert tuple(row) == (name, False)

    # A user token cannot act as someone else, nor call admin routes.
    assert as_b.get("/v1/providers/", headers={"user_id": two_orgs["user_a"]}).status_code == 403
    assert as_b.get("/v1/providers/", headers={"user_id": two_orgs["user_b"]}).status_code == 200
    for path in ("/v1/admin/users/", "/v1/admin/orgs/", "/v1/ketta/tokens/"):
        refused = as_b.get(path)
        assert refused.status_code == 403 and "server token" in refused.json()["detail"], path
    assert as_b.post("/v1/ketta/tokens/", json={"user_id": two_orgs["user_b"]}).status_code == 403
    # The server token acts as anyone through user_id (Letta's model).
    seen_by_admin = httpx.get(f"{url}/v1/providers/", headers={**shared_server.headers, "user_id": two_orgs["user_a"]})
    assert name in [p["name"] for p in seen_by_admin.json()]

    # Listing shows ids and state, never a token; last use is recorded.
    listed = httpx.get(f"{url}/v1/ketta/tokens/", headers=shared_server.headers, params={"user_id": two_orgs["user_b"]})
    assert listed.status_code == 200
    assert [(t["id"], t["name"], t["revoked"]) for t in listed.json()] == [(id_b, "phone", False)]
    assert listed.json()[0]["last_used_at"] is not None
    assert token_b not in listed.text and "token_hash" not in listed.text
    cli_list = ketta_token(shared_server, "list", "--user", two_orgs["user_a"])
    assert cli_list.returncode == 0 and "laptop" in cli_list.stdout and token_a not in cli_list.stdout

    # Revoked: 401 at once (REST for B, CLI for A).
    revoked = httpx.delete(f"{url}/v1/ketta/tokens/{id_b}", headers=shared_server.headers)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert as_b.get("/v1/providers/").status_code == 401
    id_a = cli_list.stdout.split()[0]
    assert ketta_token(shared_server, "revoke", id_a).returncode == 0
    assert httpx.get(f"{url}/v1/providers/", headers=bearer(token_a)).status_code == 401
    assert httpx.delete(f"{url}/v1/ketta/tokens/ktok-nope", headers=shared_server.headers).status_code == 404
    assert token_a not in shared_server.log_text() and token_b not in shared_server.log_text()


def test_token_for_an_unknown_user_is_refused(shared_server):
    made = httpx.post(f"{shared_server.url}/v1/ketta/tokens/", headers=shared_server.headers,
                      json={"user_id": "user-00000000-0000-4000-8000-00000000beef"})
    assert made.status_code == 404 and "admin/users" in made.json()["detail"]
    cli = ketta_token(shared_server, "create", "--user", "user-00000000-0000-4000-8000-00000000beef")
    assert cli.returncode == 1 and "No user" in cli.stderr and cli.stdout == ""
    assert httpx.post(f"{shared_server.url}/v1/ketta/tokens/", headers=shared_server.headers, json={}).status_code == 422


def test_user_tokens_are_in_the_openapi_document(shared_server):
    paths = httpx.get(f"{shared_server.url}/openapi.json", headers=shared_server.headers, timeout=60).json()["paths"]
    assert {"post", "get"} <= set(paths["/v1/ketta/tokens/"]) and "delete" in paths["/v1/ketta/tokens/{token_id}"]
