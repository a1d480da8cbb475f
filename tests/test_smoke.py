import httpx


def test_server_answers_health_and_openapi(shared_server):
    health = httpx.get(f"{shared_server.url}/v1/health/")
    assert health.status_code == 200
    assert health.json()["version"] == "0.16.8"
    spec = httpx.get(f"{shared_server.url}/openapi.json").json()
    assert "/v1/providers/" in spec["paths"]
