"""Login on by default (ketta/security/auth.py): every route but the health check needs the token."""

from __future__ import annotations

import os
import re
import socket
import stat
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from letta_client import Letta

from conftest import KettaProcess

DUMMY_IDS = {"agent_id": "agent-00000000-0000-4000-8000-000000000000", "user_id": "user-00000000-0000-4000-8000-000000000000"}
PUBLIC = {("get", "/v1/health/")}


def dummy(param: str) -> str:
    """A well-formed id that names nothing (Letta validates ``<type>-<uuid4>`` ids on many routes)."""
    if param in DUMMY_IDS:
        return DUMMY_IDS[param]
    prefix = param.removesuffix("_id").replace("_", "-")
    return f"{prefix}-00000000-0000-4000-8000-000000000000"


def routes(spec: dict) -> list[tuple[str, str, str]]:
    """(method, template, concrete path) for every operation in the OpenAPI document."""
    found = []
    for template, operations in spec["paths"].items():
        for method in operations:
            if method in ("get", "post", "put", "patch", "delete"):
                found.append((method, template, re.sub(r"\{(\w+)\}", lambda m: dummy(m.group(1)), template)))
    return found


def test_every_route_but_health_needs_the_token(debug_server: KettaProcess) -> None:
    """On the suite's debug-logging server (shared with tests/test_redaction.py; the walk's dummy ids name nothing)."""
    server = debug_server
    server.never_logged.append(server.token)  # checked again after the server stopped
    assert httpx.get(f"{server.url}/openapi.json").status_code == 401
    spec = httpx.get(f"{server.url}/openapi.json", headers=server.headers, timeout=120).json()
    walked = routes(spec)
    assert len(walked) > 100, "the document lists Letta's routes"
    assert any(t.startswith("/v1/ketta/tokens") for _, t, _ in walked), "Ketta's token routes are documented"
    anonymous = httpx.Client(base_url=server.url, timeout=120)
    wrong = httpx.Client(base_url=server.url, timeout=120, headers={"Authorization": "Bearer not-the-token"})
    authorised = server.client(timeout=60)
    unexpected: list[str] = []
    no_status: list[str] = []
    protected = [(m, t, p) for m, t, p in walked if (m, t) not in PUBLIC]
    # Refused requests first: they never reach Letta, so no slow authorised call is still busy.
    for method, template, path in protected:
        for client, label in ((anonymous, "no token"), (wrong, "wrong token")):
            response = client.request(method.upper(), path)
            if response.status_code != 401 or "Authorization: Bearer" not in response.json()["detail"]:
                unexpected.append(f"{label}: {method.upper()} {path} -> {response.status_code}")
    for method, template, path in protected:
        try:
            status = authorised.request(method.upper(), path).status_code
        except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError):
            no_status.append(f"{method.upper()} {path}")  # let in (a 401 is always a whole answer): a stream or a crash
            continue
        if status == 401:
            unexpected.append(f"token: {method.upper()} {path} -> 401")
    assert unexpected == []
    # Nearly every authorised request got a status of its own; a few of Letta's routes drop the
    # connection on dummy ids (a crash past the token check, not a refusal).
    assert len(no_status) <= len(protected) // 10, no_status
    # Open: the health check (and its redirect), also under /latest; CORS preflights reach CORS.
    assert anonymous.get("/v1/health/").status_code == 200
    assert anonymous.get("/v1/health", follow_redirects=True).status_code == 200
    assert anonymous.get("/latest/health/").status_code == 200
    # Closed: Letta's undocumented /latest copies of every route, the docs, other methods on health.
    for path in ("/latest/agents/", "/latest/providers/", "/docs", "/"):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.post("/v1/health/").status_code == 401
    # The token itself never appears in the log, debug level included.
    assert server.token not in server.log_text()
    assert "▶ Using secure mode" not in server.log_text(), "Letta's own password middleware is not added"


def test_token_forms_sdk_bearer_and_letta_bare_password(shared_server: KettaProcess) -> None:
    url, token = shared_server.url, shared_server.token
    assert httpx.get(f"{url}/v1/agents/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.get(f"{url}/v1/agents/", headers={"Authorization": f"bearer {token}"}).status_code == 200
    assert httpx.get(f"{url}/v1/agents/", headers={"X-BARE-PASSWORD": f"password {token}"}).status_code == 200
    assert httpx.get(f"{url}/v1/agents/", headers={"Authorization": f"Basic {token}"}).status_code == 401
    assert httpx.get(f"{url}/v1/agents/", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
    assert httpx.get(f"{url}/v1/agents/", headers={"Authorization": f"Bearer {token[:-1]}"}).status_code == 401
    refused = httpx.get(f"{url}/v1/agents/")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "ketta token" in refused.json()["detail"]

    assert isinstance(Letta(base_url=url, api_key=token, timeout=60).agents.list().items, list)
    with pytest.raises(Exception) as refused_sdk:
        Letta(base_url=url, api_key="wrong", timeout=60, max_retries=0).agents.list()
    assert getattr(refused_sdk.value, "status_code", None) == 401


def test_cors_preflight_is_not_blocked_by_login(shared_server: KettaProcess) -> None:
    preflight = httpx.options(f"{shared_server.url}/v1/agents/", headers={
        "Origin": "https://app.letta.com", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == "https://app.letta.com"
    # A plain OPTIONS without the preflight headers is an ordinary request: login applies.
    assert httpx.options(f"{shared_server.url}/v1/agents/").status_code == 401


def raw_get(conn: socket.socket, path: str, token: str) -> int:
    """One keep-alive HTTP/1.1 GET on an open connection; returns the status (body read whole)."""
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += conn.recv(65536)
    return int(head.split()[1])


def tcp_sockets() -> Iterator[tuple[int, int, str, str]]:
    """(local port, remote port, state, inode) of each TCP socket in this network namespace."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            yield int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16), fields[3], fields[9]


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open."""
    links = (os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir())
    return {link.removeprefix("socket:[").removesuffix("]") for link in links if link.startswith("socket:[")}


def worker_of(server_pids: set[int], client_port: int) -> int | None:
    """The pid among ``server_pids`` holding the server side of the TCP connection from ``client_port``."""
    inodes = {inode for _, remote_port, _, inode in tcp_sockets() if remote_port == client_port}
    for pid in server_pids:
        try:
            if socket_inodes(pid) & inodes:
                return pid
        except OSError:
            continue
    return None


def listening_inodes(port: int) -> set[str]:
    """The inodes of the TCP sockets in LISTEN state on ``port``."""
    return {inode for local_port, _, state, inode in tcp_sockets() if local_port == port and state == "0A"}


@pytest.mark.slow
def test_two_workers_accept_the_same_generated_token(start_ketta: Callable[..., KettaProcess], database_uri: str,
                                                      tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_ketta(env={"LETTA_PG_URI": database_uri, "LETTA_SERVER_PASSWORD": "", "KETTA_LOG_LEVEL": "info"},
                         args=["--workers", "2"], wait=False)
    server.wait_healthy(300)  # two workers import Letta at once on a shared machine
    deadline = time.monotonic() + 300
    while len(set(re.findall(r"\[Worker (\d+)\] Lifespan startup completed", server.log_text()))) < 2:
        assert time.monotonic() < deadline, "the second worker did not start:\n" + server.log_tail()
        time.sleep(0.5)  # polling the log, not waiting for a guess
    token_file = home / "server_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    server.token = token_file.read_text().strip()
    assert len(server.token) >= 32
    children = {int(p) for p in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()}
    assert len(children) >= 2
    served_by: dict[int, list[int]] = {}
    for _ in range(200):  # new connections until both workers have answered
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as conn:
            status = raw_get(conn, "/v1/agents/", server.token)
            pid = worker_of(children, conn.getsockname()[1])
            assert raw_get(conn, "/v1/agents/", "wrong") == 401
        if pid is not None:
            served_by.setdefault(pid, []).append(status)
        if len(served_by) >= 2 and all(len(v) >= 3 for v in served_by.values()):
            break
    assert len(served_by) >= 2, f"only {list(served_by)} of workers {children} answered"
    assert all(status == 200 for statuses in served_by.values() for status in statuses), served_by
    # Each worker listens on a socket of its own (ketta/core/serving.py), so the kernel spreads new
    # connections over them: with uvicorn's one shared socket, the first worker to wake took nearly
    # all of a burst of keep-alive connections (the benchmark's 16 clients ran at about one core).
    listening = listening_inodes(server.port)
    assert len(listening) == 2, listening
    assert sorted(len(socket_inodes(pid) & listening) for pid in served_by) == [1, 1]
    assert set.union(*(socket_inodes(pid) & listening for pid in served_by)) == listening
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(32)]
    try:
        assert [raw_get(conn, "/v1/health/", server.token) for conn in held] == [200] * 32
        per_worker = Counter(worker_of(children, conn.getsockname()[1]) for conn in held)
        assert all(per_worker[pid] >= 4 for pid in served_by), f"32 connections per worker: {per_worker}"
    finally:
        for conn in held:
            conn.close()
    # `ketta token` prints the same token; it is in no log line.
    import subprocess
    import sys

    from conftest import clean_env

    printed = subprocess.run([sys.executable, "-m", "ketta", "token"], env=clean_env(KETTA_HOME=str(home), LETTA_SERVER_PASSWORD=""),
                             capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == server.token
    assert server.token not in server.log_text()


@pytest.mark.slow
def test_insecure_no_login_serves_without_a_token(start_ketta: Callable[..., KettaProcess], database_uri: str) -> None:
    server = start_ketta(env={"LETTA_PG_URI": database_uri, "LETTA_SERVER_PASSWORD": ""}, args=["--insecure-no-login"])
    assert httpx.get(f"{server.url}/v1/agents/").status_code == 200
    assert "Login is OFF" in server.log_text()
