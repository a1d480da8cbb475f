"""The URL guard in-process: what it refuses, and that a refused address is never connected to.

Names resolve through a fake resolver (``url_guard.resolver``), so no DNS query leaves the
machine; every TCP connection the guarded transports would make is recorded, and refused
outright unless it goes to 127.0.0.1, so a broken guard fails the test without sending a packet.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import httpcore
import httpcore2
import httpx
import pytest

from ketta.security import url_guard
from ketta.security.url_guard import BlockedAddress, UnsafeURL, check_url_async, check_url_syntax, checked_addresses, parse_allow_list
from mock_openai import MockOpenAI

FAKE_DNS = {
    "internal.test": ["10.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "cgnat.test": ["100.64.0.1"],
    "v6loop.test": ["::1"],
    "zero.test": ["0.0.0.0"],
    "v6private.test": ["fd00::1"],
    "v6linklocal.test": ["fe80::1"],
    "multicast.test": ["224.0.0.1"],
    "mapped.test": ["::ffff:10.0.0.1"],
    "public.test": ["93.184.216.34"],
    "mixed.test": ["93.184.216.34", "10.0.0.1"],
    "mock.test": ["127.0.0.1"],
}
REFUSED_HOSTS = ["internal.test", "metadata.test", "cgnat.test", "v6loop.test", "zero.test", "v6private.test",
                 "v6linklocal.test", "multicast.test", "mapped.test", "mixed.test"]
BAD_URLS = ["file:///etc/passwd", "ftp://x", "gopher://x/", "http://user:pw@h/", "http://h/\r\nX", "http://h/\nX",
            "http://h\x00/", "http:// h/", "", "   ", "http:///v1", "https://", "//h/v1", "h/v1", "http://h:99999/"]


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The fake DNS; tests may change the table. Unknown names do not resolve."""
    table = {name: list(addresses) for name, addresses in FAKE_DNS.items()}

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(table[host])

    monkeypatch.setattr(url_guard, "resolver", resolve)
    return table


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address a guarded transport connects to; anything but 127.0.0.1 is refused here."""
    made: list[str] = []

    for core in (httpcore, httpcore2):
        original_async = core.AnyIOBackend.connect_tcp
        original_sync = core.SyncBackend.connect_tcp

        async def record_async(self, host, port, *args, _original=original_async, _core=core, **kwargs):
            made.append(host)
            if host != "127.0.0.1":
                raise _core.ConnectError(f"test refuses to connect to {host}")
            return await _original(self, host, port, *args, **kwargs)

        def record_sync(self, host, port, *args, _original=original_sync, _core=core, **kwargs):
            made.append(host)
            if host != "127.0.0.1":
                raise _core.ConnectError(f"test refuses to connect to {host}")
            return _original(self, host, port, *args, **kwargs)

        monkeypatch.setattr(core.AnyIOBackend, "connect_tcp", record_async)
        monkeypatch.setattr(core.SyncBackend, "connect_tcp", record_sync)
    return made


@pytest.mark.parametrize("url", BAD_URLS)
def test_urls_that_are_not_plain_http_are_refused_with_what_to_fix(url: str) -> None:
    with pytest.raises(UnsafeURL) as refused:
        check_url_syntax(url)
    assert refused.value.status_code == 422
    assert "'base_url'" in refused.value.detail


def test_messages_name_the_problem() -> None:
    def detail(url: str) -> str:
        with pytest.raises(UnsafeURL) as refused:
            check_url_syntax(url, "llm_config.model_endpoint")
        return refused.value.detail

    assert "scheme 'file'" in detail("file:///etc/passwd") and "llm_config.model_endpoint" in detail("ftp://x")
    assert "credentials" in detail("http://user:pw@h/") and "pw" not in detail("http://user:pw@h/")
    assert "control characters" in detail("http://h/\r\nX")
    assert "no host" in detail("http:///v1")


def test_plain_urls_pass_the_syntax_check() -> None:
    assert check_url_syntax("https://api.moonshot.ai/v1") == url_guard.ParsedURL("https", "api.moonshot.ai", 443)
    assert check_url_syntax("http://127.0.0.1:8000/v1/") == url_guard.ParsedURL("http", "127.0.0.1", 8000)
    assert check_url_syntax("HTTP://[::1]:11434") == url_guard.ParsedURL("http", "::1", 11434)


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_hosts_resolving_to_non_public_addresses_are_refused(resolver, host: str) -> None:
    with pytest.raises(BlockedAddress) as blocked:
        checked_addresses(host, 443)
    assert "KETTA_ALLOW_PRIVATE_HOSTS" in str(blocked.value)


def test_the_refusal_names_the_host_once_and_the_setting_to_add() -> None:
    """Issue 22: the 422 said "add '127.0.0.1' or '127.0.0.1' to KETTA_ALLOW_PRIVATE_HOSTS"."""
    with pytest.raises(BlockedAddress) as blocked:
        checked_addresses("127.0.0.2", 8000)  # the suite allows 127.0.0.1 (its mocks)
    message = str(blocked.value)
    assert message.count("127.0.0.2") == 1 and message.startswith("a loopback address;"), message
    assert "adds 127.0.0.2 to KETTA_ALLOW_PRIVATE_HOSTS" in message and "restarts the server" in message
    with pytest.raises(BlockedAddress) as named:
        checked_addresses("ollama.lan", 11434, resolve=lambda host, port: ["10.0.0.5"])
    message = str(named.value)
    assert message.count("ollama.lan") == 1 and message.startswith("its host resolves to 10.0.0.5, a private address;"), message
    assert "adds ollama.lan to KETTA_ALLOW_PRIVATE_HOSTS" in message


@pytest.mark.parametrize("literal", ["10.0.0.1", "169.254.169.254", "100.64.0.1", "::1", "[::1]", "0.0.0.0", "127.0.0.2",
                                     "192.168.1.1", "172.16.0.1", "fd12::1", "fe80::1", "255.255.255.255", "240.0.0.1"])
def test_ip_literals_are_checked_without_resolving(resolver, literal: str) -> None:
    resolver.clear()  # nothing resolves: a literal must not need DNS
    with pytest.raises(BlockedAddress):
        checked_addresses(literal, 80)


def test_categories() -> None:
    import ipaddress

    assert url_guard.refused_category(ipaddress.ip_address("169.254.169.254")) == "link-local"
    assert url_guard.refused_category(ipaddress.ip_address("100.64.0.1")) == "CGNAT"
    assert url_guard.refused_category(ipaddress.ip_address("0.0.0.0")) == "unspecified"
    assert url_guard.refused_category(ipaddress.ip_address("::1")) == "loopback"
    assert url_guard.refused_category(ipaddress.ip_address("10.0.0.1")) == "private"
    assert url_guard.refused_category(ipaddress.ip_address("224.0.0.1")) == "multicast"
    assert url_guard.refused_category(ipaddress.ip_address("93.184.216.34")) is None
    assert url_guard.refused_category(ipaddress.ip_address("2606:4700::1111")) is None


def test_public_hosts_and_allowed_ones_pass(resolver, monkeypatch: pytest.MonkeyPatch) -> None:
    assert checked_addresses("public.test", 443) == ["93.184.216.34"]
    assert checked_addresses("mock.test", 80) == ["127.0.0.1"]  # 127.0.0.1 is allowed in the tests
    assert checked_addresses("localhost", 80, resolve=lambda h, p: ["127.0.0.1", "::1"])  # allowed by name
    with pytest.raises(BlockedAddress):
        checked_addresses("127.0.0.2", 80)  # the allowed IP, not all of loopback

    monkeypatch.setattr(url_guard, "allow_list", lambda: parse_allow_list(" 10.0.0.0/8, Metadata.Test. ,[::1]"))
    assert checked_addresses("internal.test", 80) == ["10.0.0.1"]  # CIDR
    assert checked_addresses("metadata.test", 80) == ["169.254.169.254"]  # hostname, any case, trailing dot
    assert checked_addresses("[::1]", 80) == ["::1"]
    with pytest.raises(BlockedAddress):
        checked_addresses("cgnat.test", 80)
    monkeypatch.setattr(url_guard, "allow_list", lambda: parse_allow_list(""))
    with pytest.raises(BlockedAddress):
        checked_addresses("mock.test", 80)  # default: nothing private allowed


def test_config_time_check_is_422_and_tolerates_unresolvable_names(resolver) -> None:
    async def run() -> None:
        for host in REFUSED_HOSTS:
            with pytest.raises(UnsafeURL) as refused:
                await check_url_async(f"https://{host}/v1", "embedding_config.embedding_endpoint")
            assert refused.value.status_code == 422 and "embedding_config.embedding_endpoint" in refused.value.detail
        await check_url_async("https://public.test/v1")
        await check_url_async("https://not-resolvable.test/v1")  # checked again when connecting

    asyncio.run(run())


@pytest.fixture
def llm() -> Iterator[MockOpenAI]:
    with MockOpenAI(api_key="sk-guard") as mock:
        yield mock


def test_guarded_client_reaches_an_allowed_mock_and_nothing_else(resolver, connections, llm: MockOpenAI) -> None:
    async def run() -> None:
        async with url_guard.guarded_async_client() as client:
            assert (await client.get(f"http://mock.test:{llm.port}/v1/models", headers={"Authorization": "Bearer sk-guard"})).status_code == 200
            for host in REFUSED_HOSTS:
                with pytest.raises(httpx.ConnectError) as refused:
                    await client.get(f"http://{host}:{llm.port}/v1/models")
                assert "KETTA_ALLOW_PRIVATE_HOSTS" in str(refused.value)
            with pytest.raises(httpx.ConnectError):
                await client.get("http://not-resolvable.test/v1/models")

    asyncio.run(run())
    assert connections == ["127.0.0.1"]
    with url_guard.guarded_client() as client:
        assert client.get(f"http://mock.test:{llm.port}/v1/models", headers={"Authorization": "Bearer sk-guard"}).status_code == 200
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://zero.test:{llm.port}/v1/models")
    assert connections == ["127.0.0.1", "127.0.0.1"]


def test_dns_rebinding_is_caught_at_connection_time(resolver, connections, llm: MockOpenAI) -> None:
    resolver["rebind.test"] = ["127.0.0.1"]

    async def run() -> None:
        await check_url_async(f"http://rebind.test:{llm.port}/v1")  # passes when stored
        resolver["rebind.test"] = ["10.0.0.1"]  # then the name changes
        async with url_guard.guarded_async_client() as client:
            with pytest.raises(httpx.ConnectError, match="10.0.0.1"):
                await client.get(f"http://rebind.test:{llm.port}/v1/models")

    asyncio.run(run())
    assert connections == []


class _Redirector(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[tuple[ThreadingHTTPServer, type[_Redirector]]]:
    handler = type("Redirect", (_Redirector,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def test_every_redirect_is_checked(resolver, connections, redirector) -> None:
    server, handler = redirector
    port = server.server_address[1]

    async def run() -> None:
        async with url_guard.guarded_async_client(follow_redirects=True) as client:
            for target in (f"http://internal.test:{port}/", f"http://169.254.169.254:{port}/latest/meta-data/", f"http://[::1]:{port}/"):
                handler.target = target
                with pytest.raises(httpx.ConnectError, match="KETTA_ALLOW_PRIVATE_HOSTS"):
                    await client.get(f"http://127.0.0.1:{port}/")
            handler.target = "file:///etc/passwd"
            with pytest.raises(httpx.UnsupportedProtocol):
                await client.get(f"http://127.0.0.1:{port}/")

    asyncio.run(run())
    assert set(connections) == {"127.0.0.1"}


def test_environment_proxies_still_check_the_target(resolver, connections, monkeypatch: pytest.MonkeyPatch, llm: MockOpenAI) -> None:
    """With HTTPS_PROXY set, a refused target is refused before the proxy is asked."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{llm.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def run() -> None:
        async with url_guard.guarded_async_client() as client:
            with pytest.raises(httpx.ConnectError, match="10.0.0.1"):
                await client.get("http://internal.test/v1/models")

    asyncio.run(run())
    assert connections == []
    assert llm.requests == []


def test_sdk_clients_letta_builds_are_guarded(resolver, connections, llm: MockOpenAI) -> None:
    """Letta builds OpenAI and Anthropic SDK clients without an http_client; the patched SDK
    default clients are guarded."""
    import anthropic
    import openai

    from ketta.core import patching
    from ketta.letta_modifications.llm_api import anthropic_client, openai_client

    patches = [p for p in openai_client.PATCHES + anthropic_client.PATCHES if p.setting == "url_guard"]
    applied = [p for p in patches if patching.apply(p)]
    try:
        async def run() -> None:
            ok = openai.AsyncOpenAI(api_key="sk-guard", base_url=f"http://mock.test:{llm.port}/v1", max_retries=0)
            assert [m.id async for m in ok.models.list()]
            for host in ("internal.test", "metadata.test", "zero.test"):
                with pytest.raises(openai.APIConnectionError):
                    await openai.AsyncOpenAI(api_key="sk-guard", base_url=f"http://{host}:{llm.port}/v1", max_retries=0).models.list()
                with pytest.raises(anthropic.APIConnectionError):
                    await anthropic.AsyncAnthropic(api_key="sk-guard", base_url=f"http://{host}:{llm.port}", max_retries=0).models.list()
            with pytest.raises(openai.APIConnectionError):
                openai.OpenAI(api_key="sk-guard", base_url=f"http://cgnat.test:{llm.port}/v1", max_retries=0).models.list()

        asyncio.run(run())
    finally:
        for patch in applied:
            patching.revert(patch)
    assert connections == ["127.0.0.1"]


# --- through the server ----------------------------------------------------------------------


FIELDS = ("base_url", "llm_config.model_endpoint", "embedding_config.embedding_endpoint")


def server_bad_urls(port: int) -> list[str]:
    """The refused base_urls of issue 7, as literals (no DNS): every one answers 422."""
    return ["file:///etc/passwd", "ftp://x", "http://user:pw@h/", "http://h/\r\nX", "http://10.0.0.1/v1",
            "http://169.254.169.254/latest/meta-data/", "http://100.64.0.1/v1", f"http://[::1]:{port}/v1", f"http://0.0.0.0:{port}/v1"]


def agent_configs(api: httpx.Client, provider_name: str) -> tuple[dict, dict]:
    [llm_config] = [m for m in api.get("/v1/models/", params={"provider_name": provider_name}).json() if m["name"] == "mock-chat-1"]
    [embedding_config] = [m for m in api.get("/v1/models/embedding").json() if m["handle"] == f"{provider_name}/text-embedding-3-small"]
    return llm_config, embedding_config


def test_server_refuses_unsafe_base_urls_everywhere(shared_server, shared_db, llm: MockOpenAI) -> None:
    import sqlalchemy as sa

    api = shared_server.client()
    name = f"guard-{uuid.uuid4().hex[:6]}"
    created = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "sk-guard", "base_url": llm.base_url})
    assert created.status_code == 200, created.text  # 127.0.0.1 is allowed (KETTA_ALLOW_PRIVATE_HOSTS) and works as before
    provider_id = created.json()["id"]
    llm_config, embedding_config = agent_configs(api, name)
    agent = api.post("/v1/agents/", json={"llm_config": llm_config, "embedding_config": embedding_config})
    assert agent.status_code == 200, agent.text
    agent_id = agent.json()["id"]
    llm.clear()

    for bad in server_bad_urls(llm.port):
        bad_name = f"bad-{uuid.uuid4().hex[:6]}"
        calls = {
            "create": api.post("/v1/providers/", json={"name": bad_name, "provider_type": "openai", "api_key": "sk-guard", "base_url": bad}),
            "patch": api.patch(f"/v1/providers/{provider_id}", json={"api_key": "sk-guard", "base_url": bad}),
            "check": api.post("/v1/providers/check", json={"provider_type": "openai", "api_key": "sk-guard", "base_url": bad}),
            "agent llm_config": api.post("/v1/agents/", json={"llm_config": {**llm_config, "model_endpoint": bad}, "embedding_config": embedding_config}),
            "agent embedding_config": api.post("/v1/agents/", json={"llm_config": llm_config, "embedding_config": {**embedding_config, "embedding_endpoint": bad}}),
            "agent patch": api.patch(f"/v1/agents/{agent_id}", json={"llm_config": {**llm_config, "model_endpoint": bad}}),
        }
        for what, response in calls.items():
            assert response.status_code == 422, (bad, what, response.status_code, response.text)
            detail = response.json()["detail"]  # Ketta's message, not a schema validation list
            assert isinstance(detail, str) and any(f"'{field}'" in detail for field in FIELDS), (bad, what, detail)
        with shared_db.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM providers WHERE name = :n"), {"n": bad_name}).scalar() == 0
            assert conn.execute(sa.text("SELECT base_url FROM providers WHERE id = :i"), {"i": provider_id}).scalar() == llm.base_url
    assert llm.requests == [], "no refused URL reached the mock (0.0.0.0 would have)"
    assert api.get(f"/v1/agents/{agent_id}").json()["llm_config"]["model_endpoint"] == llm.base_url

    # the good provider and agent still work
    assert api.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    assert llm.chat_requests()


@pytest.mark.slow
def test_loopback_is_refused_unless_allowed(start_ketta, database_uri, llm: MockOpenAI) -> None:
    """Default settings: a base_url on this machine is refused with what to set."""
    server = start_ketta(env={"LETTA_PG_URI": database_uri, "KETTA_ALLOW_PRIVATE_HOSTS": ""})
    with server.client() as api:
        refused = api.post("/v1/providers/", json={"name": "local", "provider_type": "openai", "api_key": "sk-guard", "base_url": llm.base_url})
        assert refused.status_code == 422, refused.text
        assert "KETTA_ALLOW_PRIVATE_HOSTS" in refused.json()["detail"] and refused.json()["detail"].count("127.0.0.1") == 1
        assert api.get("/v1/providers/").json() == []
    assert llm.requests == []
