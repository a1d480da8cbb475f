"""A user token acts as one identity per request; the operator's env keys stay the operator's.

- Every Letta route that takes an actor, user or organization id from the query string or the
  body (found by walking /openapi.json) refuses a user token naming another identity there, under
  /v1 and /latest (Letta mounts every route twice); the server token may name anyone.
- Provider responses under /latest are filtered like /v1's; Letta's Anthropic/Z.ai proxies are
  not served.
- An env key (OPENAI_API_KEY, TAVILY_API_KEY, ...) never reaches a provider a caller created
  (fallback off by default) nor an agent config's own endpoint; with the fallback on it goes only
  to its own endpoint.
"""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from conftest import KettaProcess, unique
from mock_openai import MockOpenAI
from operator_env import OPERATOR_KEYS, keys_seen, message_through, message_through_a_providerless_agent

IDENTITY_FIELD = re.compile(r"^(user|user_id|users|user_ids|actor|actor_id|organization|organization_id|org|org_id)$")
# What the walk finds in Letta 0.16.8 (plus Ketta's routes): a new one after an upgrade fails the
# first test until it is looked at (and ketta.security.auth.IDENTITY_FIELDS covers it).
EXPECTED_IDENTITY_FIELDS = {
    ("post", "/v1/chat/completions", "body", "user"),
    ("post", "/v1/agents/", "body", "actor_id"),
    ("post", "/v1/admin/users/", "body", "organization_id"),
    ("put", "/v1/admin/users/", "body", "organization_id"),
    ("delete", "/v1/admin/users/", "query", "user_id"),
    ("delete", "/v1/admin/orgs/", "query", "org_id"),
    ("patch", "/v1/admin/orgs/", "query", "org_id"),
    ("post", "/v1/ketta/tokens/", "body", "user_id"),
    ("get", "/v1/ketta/tokens/", "query", "user_id"),
    # The usage ledger's routes (issue 23): a user token sees and sets only its own user's.
    ("get", "/v1/usage/", "query", "user_id"),
    ("get", "/v1/usage/", "query", "organization_id"),
    ("get", "/v1/usage/export.csv", "query", "user_id"),
    ("get", "/v1/usage/export.csv", "query", "organization_id"),
    ("post", "/v1/ketta/budgets", "body", "organization_id"),
    ("get", "/v1/ketta/budgets", "query", "organization_id"),
    ("get", "/v1/ketta/prices", "query", "organization_id"),
    ("delete", "/v1/ketta/prices", "query", "organization_id"),
    ("put", "/v1/ketta/prices", "body", "organization_id"),
}
# The suite's operator-keys server (``operator_keys_server``, shared with tests/test_operator_keys.py):
# its operator set every env key Letta reads, the fallback off (the default).
OPERATOR_OPENAI_KEY = OPERATOR_KEYS["OPENAI_API_KEY"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def two_users(shared_server: KettaProcess) -> dict[str, str]:
    """Users A and B in organizations of their own, and a second user A2 in A's, with tokens."""
    ids: dict[str, str] = {}
    with shared_server.client() as admin:
        for who in ("a", "b"):
            org = admin.post("/v1/admin/orgs/", json={"name": f"idorg-{who}-{uuid.uuid4().hex[:6]}"})
            assert org.status_code == 200, org.text
            ids[f"org_{who}"] = org.json()["id"]
        for who, org in (("a", "org_a"), ("a2", "org_a"), ("b", "org_b")):
            user = admin.post("/v1/admin/users/", json={"name": f"id-user-{who}", "organization_id": ids[org]})
            assert user.status_code == 200, user.text
            ids[f"user_{who}"] = user.json()["id"]
            token = admin.post("/v1/ketta/tokens/", json={"user_id": ids[f"user_{who}"]})
            assert token.status_code == 201, token.text
            ids[f"token_{who}"] = token.json()["token"]
    return ids


def _schema_fields(schema: dict, components: dict, seen: frozenset = frozenset()) -> set[str]:
    """Top-level property names of a request body schema (through $ref, anyOf/oneOf/allOf)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return set() if name in seen else _schema_fields(components[name], components, seen | {name})
    names = set(schema.get("properties", {}))
    for combinator in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(combinator, []):
            names |= _schema_fields(sub, components, seen)
    return names


def identity_fields(document: dict) -> set[tuple[str, str, str, str]]:
    """(method, path, 'query'|'body', field) of every operation taking an identity outside the header."""
    components = document.get("components", {}).get("schemas", {})
    found = set()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                if parameter.get("in") in ("query", "cookie") and IDENTITY_FIELD.match(parameter["name"]):
                    found.add((method, path, "query", parameter["name"]))
            for content in operation.get("requestBody", {}).get("content", {}).values():
                for name in _schema_fields(content.get("schema", {}), components):
                    if IDENTITY_FIELD.match(name):
                        found.add((method, path, "body", name))
    return found


def _other(field: str, ids: dict[str, str]) -> str:
    """An identity that is not B's: A's organization, or A's user."""
    return ids["org_a"] if field.startswith("org") else ids["user_a"]


def test_every_route_naming_another_identity_refuses_a_user_token(shared_server, two_users):
    document = httpx.get(f"{shared_server.url}/openapi.json", headers=shared_server.headers, timeout=60).json()
    found = identity_fields(document)
    assert found == EXPECTED_IDENTITY_FIELDS, f"identity fields changed: {sorted(found ^ EXPECTED_IDENTITY_FIELDS)}"
    dummy = "x-00000000-0000-4000-8000-000000000000"
    with httpx.Client(base_url=shared_server.url, headers=bearer(two_users["token_b"]), timeout=60) as as_b:
        for method, path, where, field in sorted(found):
            for prefix in ("/v1", "/latest"):
                url = prefix + re.sub(r"\{[^}]+\}", dummy, path[len("/v1"):])
                kwargs = {"params": {field: _other(field, two_users)}} if where == "query" else {"json": {field: _other(field, two_users)}}
                response = as_b.request(method.upper(), url, **kwargs)
                assert response.status_code == 403, (method, url, field, response.status_code, response.text[:300])
        # Any such field, documented or not, in the query string of any route.
        for field in ("user_id", "organization_id", "actor_id"):
            for prefix in ("/v1", "/latest"):
                response = as_b.get(f"{prefix}/agents/", params={field: _other(field, two_users)})
                assert response.status_code == 403 and field in response.json()["detail"], response.text


def test_chat_completions_acts_as_the_token_s_user_only(shared_server, two_users):
    """B's token naming A or A2 (another organization) in 'user' is 403, so is A's naming A2 (same
    organization); B's own id goes through to Letta; the server token may name anyone (Letta's model)."""
    body = {"model": f"agent-{uuid.uuid4()}", "messages": [{"role": "user", "content": "hi"}]}
    for prefix in ("/v1", "/latest"):
        for victim in ("user_a", "user_a2"):
            refused = httpx.post(f"{shared_server.url}{prefix}/chat/completions", headers=bearer(two_users["token_b"]),
                                 json={**body, "user": two_users[victim]}, timeout=60)
            assert refused.status_code == 403, refused.text
            assert "'user' names another identity" in refused.json()["detail"]
        # A's token naming A2 (same organization, another user) is refused too.
        colleague = httpx.post(f"{shared_server.url}{prefix}/chat/completions", headers=bearer(two_users["token_a"]),
                               json={**body, "user": two_users["user_a2"]}, timeout=60)
        assert colleague.status_code == 403, colleague.text
        own = httpx.post(f"{shared_server.url}{prefix}/chat/completions", headers=bearer(two_users["token_b"]),
                         json={**body, "user": two_users["user_b"]}, timeout=60)
        assert own.status_code not in (401, 403), own.text  # Letta answers (the agent does not exist)
        admin = httpx.post(f"{shared_server.url}{prefix}/chat/completions", headers=shared_server.headers,
                           json={**body, "user": two_users["user_a"]}, timeout=60)
        assert admin.status_code not in (401, 403), admin.text
    # A form body is read the same way.
    form = httpx.post(f"{shared_server.url}/v1/chat/completions", headers=bearer(two_users["token_b"]),
                      data={"user": two_users["user_a"]}, timeout=60)
    assert form.status_code == 403, form.text


def test_latest_provider_routes_never_return_key_material(api, llm):
    name = unique("latest filter")
    created = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "sk-good", "base_url": llm.base_url})
    assert created.status_code == 200, created.text
    pid = created.json()["id"]
    try:
        for url in ("/latest/providers/", f"/latest/providers/{pid}", "/v1/providers/", f"/v1/providers/{pid}"):
            response = api.get(url)
            assert response.status_code == 200, (url, response.text)
            rows = response.json() if isinstance(response.json(), list) else [response.json()]
            ours = [r for r in rows if r["id"] == pid]
            assert ours and ours[0]["api_key_enc"] is None, (url, ours)
            assert "sk-good" not in response.text
    finally:
        api.delete(f"/v1/providers/{pid}")


# --- env keys ----------------------------------------------------------------------------------


def test_a_provider_named_after_an_env_key_never_gets_it(operator_keys_server):
    with operator_keys_server.client() as api, MockOpenAI() as attacker:
        for name in ("openai", "tavily", "anthropic"):
            api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "", "base_url": attacker.base_url})
        assert attacker.requests, "the listings reached the mock"
        assert not keys_seen(attacker) & set(OPERATOR_KEYS.values())  # OPENAI_API_KEY, TAVILY_API_KEY, ... all of them
        message_through(api, "openai", attacker, "env-key-thief")
        assert attacker.chat_requests(), "the message reached the mock"
        assert OPERATOR_OPENAI_KEY not in keys_seen(attacker)
        refresh = [p for p in api.get("/v1/providers/").json() if p["name"] == "openai"]
        attacker.clear()
        api.patch(f"/v1/providers/{refresh[0]['id']}/refresh")
        assert OPERATOR_OPENAI_KEY not in keys_seen(attacker)


def test_with_the_fallback_off_not_even_the_key_s_own_endpoint_gets_it(operator_keys_server):
    """The default: a keyless provider at OPENAI_API_BASE itself gets no OPENAI_API_KEY (a user token
    could create one and spend the operator's key); the operator stores it with `ketta providers import-env`."""
    with operator_keys_server.client() as api, MockOpenAI(port=operator_keys_server.openai_own_port) as own:
        created = api.post("/v1/providers/", json={"name": "openai", "provider_type": "openai", "api_key": "", "base_url": own.base_url})
        if created.status_code == 409:  # made by the test above at another endpoint
            existing = [p for p in api.get("/v1/providers/").json() if p["name"] == "openai"][0]
            created = api.patch(f"/v1/providers/{existing['id']}", json={"base_url": own.base_url})
        assert created.status_code == 200, created.text
        assert own.requests and OPERATOR_OPENAI_KEY not in keys_seen(own)
        message_through(api, "openai", own, "own-endpoint")
        assert own.chat_requests() and OPERATOR_OPENAI_KEY not in keys_seen(own)


def test_an_agent_config_without_a_provider_never_gets_an_env_key(operator_keys_server):
    with operator_keys_server.client() as api, MockOpenAI() as attacker:
        message_through_a_providerless_agent(api, attacker.base_url)
        assert attacker.chat_requests(), "the message reached the mock"
        assert not keys_seen(attacker) & set(OPERATOR_KEYS.values())


def test_with_the_fallback_on_an_env_key_goes_only_to_its_own_endpoint(api, shared_server):
    """The shared server turns the fallback on for 'ketta fallback demo' bound to its _API_BASE (a
    port of its own): the same provider at another endpoint gets no key."""
    name = "ketta fallback demo"
    with MockOpenAI() as elsewhere:
        created = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "", "base_url": elsewhere.base_url})
        try:
            assert created.status_code == 200, created.text
            assert elsewhere.requests and "sk-from-env" not in keys_seen(elsewhere)
            message_through(api, name, elsewhere, "fallback-elsewhere")
            assert elsewhere.chat_requests() and "sk-from-env" not in keys_seen(elsewhere)
        finally:
            if created.status_code == 200:
                api.delete(f"/v1/providers/{created.json()['id']}")
