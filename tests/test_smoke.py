import httpx


def test_server_answers_health_and_openapi(shared_server):
    health = httpx.get(f"{shared_server.url}/v1/health/", headers=shared_server.headers)
    assert health.status_code == 200
    assert health.json()["version"] == "0.16.8"
    spec = httpx.get(f"{shared_server.url}/openapi.json", headers=shared_server.headers).json()
    assert "/v1/providers/" in spec["paths"]


def test_openapi_lists_kimi_in_every_provider_type_schema(shared_server):
    """The enum member is added before Letta builds any schema: requests and responses alike."""
    schemas = httpx.get(f"{shared_server.url}/openapi.json", headers=shared_server.headers).json()["components"]["schemas"]
    provider_type_schemas = {name: s for name, s in schemas.items() if name.startswith("ProviderType")}
    assert provider_type_schemas
    for name, schema in provider_type_schemas.items():
        assert "kimi" in schema["enum"], name
