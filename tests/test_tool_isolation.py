"""Tool code never holds a server secret (issue 18, CVE-2025-51482).

A tool is run the three ways Letta runs tool code (``POST /v1/tools/run``, ``POST
/v1/agents/{id}/tools/{name}/run``, and the LLM calling a custom tool during a message), by a
user token and by the server token. The tool reports its environment, its user and directory,
tries KETTA_HOME's key files, the server's ``/proc/<pid>/environ`` and the database: no secret
comes back. A second server, with the tool isolation switched off, shows what the server
process itself keeps in ``os.environ``: none of its secrets either.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa

from conftest import TEST_TOKEN, KettaProcess, clean_env, own_database, unique
from ketta.db.database import sync_url
from ketta.security.user_tokens import create_sync
from mock_openai import MockOpenAI

OPERATOR_KEY = "sk-operator-env-secret-0123456789"
ANTHROPIC_KEY = "sk-ant-operator-secret-9876543210"
LLM_KEY = "sk-tool-test-llm-key"


def runnable_by_others(path: Path) -> bool:
    """Whether an unprivileged user (not owner, not group) can run ``path``."""
    path = path.resolve()
    if not path.exists() or not path.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)


def tool_python() -> str:
    """An interpreter of this Python version that the tool user (nobody) can run: this one, or the
    system's (a pyenv under /root is private)."""
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (Path(sys.executable), Path("/usr/bin") / minor, Path("/usr/local/bin") / minor):
        if runnable_by_others(candidate):
            return str(candidate)
    pytest.skip(f"no {minor} that an unprivileged user can run")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, pg_uri: str) -> Iterator[dict[str, KettaProcess]]:
    """'isolated': tool code allowed for user tokens (to show what it can reach);
    'leaky': the tool isolation off, so a tool sees a copy of the server's own os.environ."""
    settings = {"isolated": {"KETTA_ALLOW_USER_TOOL_CODE": "true"},
                "leaky": {"KETTA_TOOL_ISOLATION": "false", "KETTA_ALLOW_USER_TOOL_CODE": "true"}}
    with own_database(pg_uri, "tools") as db_a, own_database(pg_uri, "leaky") as db_b:
        started: dict[str, KettaProcess] = {}
        try:
            for (name, extra), db in zip(settings.items(), (db_a, db_b)):
                home = tmp_path_factory.mktemp(f"{name}-home")
                env = clean_env(KETTA_HOME=str(home), LETTA_PG_URI=db, OPENAI_API_KEY=OPERATOR_KEY,
                                ANTHROPIC_API_KEY=ANTHROPIC_KEY, KETTA_TOOL_PYTHON=tool_python(), **extra)
                # The isolated server's tools try its /proc/<pid>/environ, which must hold its own start-up
                # environment: a plain subprocess. The leaky one's test reads only the tool's os.environ (the
                # server's, replaced whole in a forked server too): forked where the suite can (~6 s of CPU less).
                started[name] = KettaProcess(env, home / "server.log", fork=name == "leaky")
            for proc in started.values():
                proc.wait_healthy()
            yield started
        finally:
            for proc in started.values():
                proc.stop()


def server_secrets(server: KettaProcess, env_keys: bool = True) -> dict[str, str]:
    """Every secret of this server a tool must not learn (read here, as the operator can)."""
    home = server.log_path.parent
    secrets = {"server token": TEST_TOKEN, "database password": urlsplit(server.db_uri).password or "",
               "encryption key": (home / "encryption_key").read_text().strip()}
    if env_keys:
        secrets.update({"OPENAI_API_KEY": OPERATOR_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY})
    assert all(secrets.values()), secrets
    return secrets


def probe_source(server: KettaProcess, name: str = "probe") -> str:
    """A tool that reports what its process can see and reach."""
    home = server.log_path.parent
    files = [str(home / n) for n in ("encryption_key", "server_token", "pg_password")]
    files.append(f"/proc/{server.proc.pid}/environ")
    db = urlsplit(server.db_uri)
    return f'''
def {name}() -> str:
    """Reports the environment, user, directory, key files and database access of this process.

    Returns:
        str: a JSON report
    """
    import json, os
    report = {{"env": dict(os.environ), "uid": os.getuid(), "euid": os.geteuid(), "cwd": os.getcwd(), "files": {{}}}}
    for path in {files!r}:
        try:
            with open(path, "rb") as handle:
                report["files"][path] = handle.read().decode("latin-1")
        except Exception as exc:
            report["files"][path] = "refused: " + type(exc).__name__
    try:
        import pg8000.native
        conn = pg8000.native.Connection(user={db.username!r}, password="a-guess", host="127.0.0.1", port={db.port!r},
                                        database={db.path.lstrip("/")!r}, timeout=5)
        report["database"] = "connected: " + str(conn.run("SELECT count(*) FROM providers"))
    except Exception as exc:
        report["database"] = "refused: " + type(exc).__name__
    return json.dumps(report)
'''


def user_token(server: KettaProcess) -> str:
    """A per-user token of a new user in a new organization (made with the server token)."""
    with server.client() as admin:
        org = admin.post("/v1/admin/orgs/", json={"name": unique("tool-org")})
        assert org.status_code == 200, org.text
        user = admin.post("/v1/admin/users/", json={"name": "tool-user", "organization_id": org.json()["id"]})
        assert user.status_code == 200, user.text
    engine = sa.create_engine(sync_url(server.db_uri), poolclass=sa.NullPool)
    with engine.begin() as conn:
        token = create_sync(conn, user.json()["id"], "tools").token
    engine.dispose()
    return token


def assert_nothing_secret(report_text: str, server: KettaProcess, isolated: bool = True) -> dict:
    for what, secret in server_secrets(server).items():
        assert secret not in report_text, f"the tool learned the {what}"
    report = json.loads(report_text)
    if isolated:
        assert report["uid"] != 0 and report["euid"] != 0, report
        home = server.log_path.parent
        assert report["cwd"].startswith(str(home / "tool_sandbox")), report["cwd"]
        assert all(v.startswith("refused") for v in report["files"].values()), report["files"]
        assert report["database"] == "refused: DatabaseError", report["database"]  # the server said no
        assert set(report["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LETTA_TOOL_ID", "LETTA_AGENT_ID",
                                      "LETTA_PROJECT_ID", "PYTHONWARNINGS", "NO_COLOR", "TERM", "PYTHONUNBUFFERED",
                                      "PYTHONPATH", "TOOL_OWN_VAR", "LC_CTYPE"}, sorted(report["env"])
    return report


def run_from_source(server: KettaProcess, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/tools/run", headers=headers, timeout=120,
                      json={"source_code": probe_source(server), "args": {}, "env_vars": {"TOOL_OWN_VAR": "mine"}})


@pytest.mark.parametrize("who", ["server token", "user token"])
def test_a_tool_run_from_source_gets_no_secret(servers, who: str) -> None:
    server = servers["isolated"]
    headers = server.headers if who == "server token" else {"Authorization": f"Bearer {user_token(server)}"}
    response = run_from_source(server, headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", (body["tool_return"], body["stderr"])
    report = assert_nothing_secret(body["tool_return"], server)
    assert report["env"]["TOOL_OWN_VAR"] == "mine"  # the tool's own variables still arrive


def test_an_attached_tool_run_directly_and_by_the_llm_gets_no_secret(servers) -> None:
    """The same probe as a custom tool of an agent: run by ``/agents/{id}/tools/{name}/run`` and
    called by the (mock) LLM during a message, for a user of another organization."""
    server = servers["isolated"]
    token = user_token(server)
    name = f"probe_{uuid.uuid4().hex[:6]}"
    with MockOpenAI(api_key=LLM_KEY, force_tool=name, reply="done") as llm, \
            httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as api:
        assert api.post("/v1/tools/add-base-tools").status_code == 200  # Letta's own tools, in a new organization
        tool = api.post("/v1/tools/", json={"source_code": probe_source(server, name)})
        assert tool.status_code == 200, tool.text
        provider = api.post("/v1/providers/", json={"name": unique("tools"), "provider_type": "openai",
                                                    "api_key": LLM_KEY, "base_url": llm.base_url})
        assert provider.status_code == 200, provider.text
        pname = provider.json()["name"]
        agent = api.post("/v1/agents/", json={"name": unique("tool-agent"), "model": f"{pname}/mock-chat-1",
                                              "embedding": f"{pname}/text-embedding-3-small",
                                              "tool_ids": [tool.json()["id"]]})
        assert agent.status_code == 200, agent.text
        agent_id = agent.json()["id"]

        direct = api.post(f"/v1/agents/{agent_id}/tools/{name}/run", json={"args": {}})
        assert direct.status_code == 200, direct.text
        assert_nothing_secret(direct.json()["func_return"], server)

        message = api.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": "probe"}]})
        assert message.status_code == 200, message.text
        [returned] = [m for m in message.json()["messages"] if m.get("message_type") == "tool_return_message"]
        assert returned["status"] == "success", returned
        report = assert_nothing_secret(returned["tool_return"], server)
        assert report["env"]["LETTA_AGENT_ID"] == agent_id
        for request in llm.chat_requests():  # nor did a secret reach the LLM through the tool's answer
            for secret in server_secrets(server).values():
                assert secret not in json.dumps(request.body)


def test_the_server_process_keeps_no_secret_in_its_environment(servers) -> None:
    """With the tool isolation off, Letta hands a tool a copy of the server's os.environ: what it
    shows is what every child process of the server would inherit. None of the secrets."""
    server = servers["leaky"]
    response = run_from_source(server, server.headers)
    assert response.status_code == 200, response.text
    report = json.loads(response.json()["tool_return"])
    # Only its environment: running as root here, this tool reads /proc/<pid>/environ, the
    # environment the server was started with (the isolated tests show a tool cannot).
    assert_nothing_secret(json.dumps({"env": report["env"]}), server, isolated=False)
    assert "PATH" in report["env"] and "KETTA_HOME" in report["env"]  # it is the server's environment
    assert not any(n.endswith("_API_KEY") or n in ("LETTA_PG_URI", "LETTA_ENCRYPTION_KEY", "LETTA_SERVER_PASSWORD")
                   for n in report["env"]), sorted(report["env"])


def test_user_tokens_may_not_write_or_run_tool_code_by_default(shared_server) -> None:
    """KETTA_ALLOW_USER_TOOL_CODE is off on the shared server: a user token gets 403 naming it on
    every route that writes or runs code, and can still list tools; the server token may."""
    token = user_token(shared_server)
    source = probe_source(shared_server)
    with httpx.Client(base_url=shared_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as user:
        for method, path, body in [
            ("POST", "/v1/tools/run", {"source_code": source, "args": {}}),
            ("POST", "/latest/tools/run", {"source_code": source, "args": {}}),
            ("POST", "/v1/tools/", {"source_code": source}),
            ("PUT", "/v1/tools/", {"source_code": source}),
            ("PATCH", "/v1/tools/tool-00000000-0000-4000-8000-000000000000", {"source_code": source}),
            ("POST", "/v1/agents/agent-00000000-0000-4000-8000-000000000000/tools/probe/run", {"args": {}}),
            ("POST", "/v1/sandbox-config/", {"config": {"sandbox_dir": "/tmp"}}),
            ("POST", "/v1/tools/generate-schema", {"code": source}),
        ]:
            refused = user.request(method, path, json=body)
            assert refused.status_code == 403, (method, path, refused.text)
            assert "KETTA_ALLOW_USER_TOOL_CODE" in refused.json()["detail"], refused.text
        assert user.get("/v1/tools/").status_code == 200
    allowed = httpx.post(f"{shared_server.url}/v1/tools/run", headers=shared_server.headers, timeout=120,
                         json={"source_code": source, "args": {}})
    assert allowed.status_code == 200 and allowed.json()["message_type"] == "tool_return_message", allowed.text
    for secret in server_secrets(shared_server, env_keys=False).values():  # whatever its interpreter did
        assert secret not in allowed.text


def test_another_interpreter_finds_the_server_s_packages_when_the_server_has_a_pythonpath() -> None:
    """Letta's sandbox gives a tool the server's own PYTHONPATH when the server has one (replacing
    the site-packages KETTA_TOOL_PYTHON's interpreter needs): its entries stay, the server's
    site-packages come after them, and that interpreter imports what the server has installed."""
    import sysconfig

    from ketta.security import tool_isolation

    env = tool_isolation.with_server_packages({"PYTHONPATH": "/opt/bundled", "HOME": "/tmp"})
    entries = env["PYTHONPATH"].split(os.pathsep)
    assert entries[0] == "/opt/bundled" and sysconfig.get_paths()["purelib"] in entries and env["HOME"] == "/tmp"
    interpreter = tool_python()
    found = subprocess.run([interpreter, "-c", "import pg8000.native; print(pg8000.__file__)"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip().startswith(sysconfig.get_paths()["purelib"])
