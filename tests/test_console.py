"""The console a person reads (issue 22): one line per client error, no warning for normal operation,
uvicorn's lines formatted in a terminal and in a file, JSON lines for collectors, a line at once when
``ketta server`` starts and one when Ctrl-C stops the start."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import pytest

from conftest import KettaProcess, MockOpenAI, unique
from ketta.core import console
from ketta.security import redaction


class HandleMissing(LookupError):
    pass


class FakeApp:
    """What register_app reads of an app: Letta's handlers are partials carrying their status."""

    async def _handler(self, request: object, exc: Exception, code: int) -> None:  # pragma: no cover - never called
        return None

    def __init__(self) -> None:
        self.exception_handlers = {HandleMissing: partial(self._handler, code=404), RuntimeError: partial(self._handler, code=500)}


def record_with(exc: BaseException, name: str = "Letta.letta.server.rest_api.app") -> logging.LogRecord:
    try:
        raise exc
    except BaseException:  # noqa: BLE001
        return logging.LogRecord(name, logging.ERROR, __file__, 1, type(exc).__name__, None, sys.exc_info())


def test_a_client_error_is_one_line_and_its_traceback_shows_at_debug() -> None:
    console.register_app(FakeApp())
    record = record_with(HandleMissing("Handle my-llm/gpt-4o-mnii not found\nsecond line"))
    line = console.ConsoleFormatter("text").format(record)
    assert line == "WARNING Letta.letta.server.rest_api.app: 404 HandleMissing: Handle my-llm/gpt-4o-mnii not found second line"
    verbose = console.ConsoleFormatter("text", verbose=True).format(record)
    assert "Traceback (most recent call last)" in verbose and verbose.count("\n") > 2
    server_fault = console.ConsoleFormatter("text").format(record_with(RuntimeError("boom")))
    assert "Traceback (most recent call last)" in server_fault, "a 5xx keeps its traceback"


def test_an_http_exception_status_counts_too() -> None:
    from fastapi import HTTPException

    line = console.ConsoleFormatter("text").format(record_with(HTTPException(409, "name taken")))
    assert line.endswith("409 HTTPException: name taken") and "\n" not in line


def test_json_lines_carry_status_and_exception() -> None:
    console.register_app(FakeApp())
    client = json.loads(console.ConsoleFormatter("json").format(record_with(HandleMissing("no such handle"))))
    assert client["status"] == 404 and client["level"] == "WARNING" and client["message"] == "404 HandleMissing: no such handle"
    fault = console.ConsoleFormatter("json").format(record_with(RuntimeError("boom")))
    assert "\n" not in fault and "Traceback" in json.loads(fault)["exception"]


@pytest.mark.parametrize(("logger", "message"), [
    ("Letta.agent-0b4a1f0e-8a43-4a55-9f73-5d6f3e1e2c11", "Context token estimate is not set"),
    ("Letta.letta.services.run_manager", "Run run-123 completed without a completed_at timestamp"),
    ("Letta.letta.server.rest_api.streaming_response", "Stream was terminated due to unexpected cancellation from server"),
])
def test_warnings_of_normal_operation_stay_off_the_console(logger: str, message: str) -> None:
    record = logging.LogRecord(logger, logging.WARNING, __file__, 1, message, None, None)
    assert console.ConsoleFilter().filter(record) is False
    other = logging.LogRecord(logger, logging.WARNING, __file__, 1, "Something else went wrong", None, None)
    assert console.ConsoleFilter().filter(other) is True
    elsewhere = logging.LogRecord("Letta.letta.other", logging.WARNING, __file__, 1, message, None, None)
    assert console.ConsoleFilter().filter(elsewhere) is True, "only the logger that says it in normal operation"


@pytest.mark.parametrize(("level", "message", "shown"), [
    (logging.WARNING, "Event loop lag in heartbeat: 3.80s (expected ~1.0s)", True),
    (logging.ERROR, "EVENT LOOP HANG DETECTED! No heartbeat for 20.0s (threshold: 15s), tasks=6", True),
    (logging.WARNING, "Severe lag detected - dumping active tasks (6 total):", False),
    (logging.ERROR, "Active threads: 3", False),
    (logging.ERROR, "  File: /usr/lib/python3.11/threading.py:1002", False),
    (logging.ERROR, "\nThread MainThread (ID: 140499916622720):", False),
])
def test_the_watchdog_keeps_its_headline_and_its_stack_dump_stays_in_the_file(level: int, message: str, shown: bool) -> None:
    record = logging.LogRecord("Letta.letta.monitoring.event_loop_watchdog", level, __file__, 1, message, None, None)
    assert console.ConsoleFilter().filter(record) is shown


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("kind", ["text", "json"])
def test_uvicorn_lines_are_formatted_in_a_terminal(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn logs 'Started server process [%d]' with a colour copy of the message; Ketta's key
    scrubbing folds the arguments into the message, after which the colour copy printed '[%d]'."""
    redaction.install_log_scrubbing()
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(sys, "stdout", Terminal())  # uvicorn picks colours when stdout is a terminal
    config = console.uvicorn_log_config(kind)
    logging.config.dictConfig(config)
    logger = logging.getLogger("uvicorn.error")
    logger.info("Started server process [%d]", 4242, extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"})
    logger.info("Uvicorn running on %s://%s:%d (Press CTRL+C to quit)", "http", "localhost", 8283,
                extra={"color_message": "Uvicorn running on \x1b[1m%s://%s:%d\x1b[0m (Press CTRL+C to quit)"})
    lines = terminal.getvalue().splitlines()
    for handler in logging.getLogger("uvicorn").handlers:
        handler.close()
    logging.getLogger("uvicorn").handlers.clear()
    if kind == "json":
        lines = [json.loads(line)["message"] for line in lines]
    assert any(line.endswith("Started server process [4242]") for line in lines), lines
    assert any(line.endswith("Uvicorn running on http://localhost:8283 (Press CTRL+C to quit)") for line in lines), lines
    assert "%d" not in "".join(lines) and "\x1b[" not in "".join(lines)


def test_an_unknown_log_format_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="KETTA_LOG_FORMAT='xml' is not a log format: use text or json"):
        console.check_format("xml")


def test_a_handle_typo_and_a_message_leave_one_line_and_no_warning(shared_server: KettaProcess, api, llm: MockOpenAI) -> None:
    name = unique("console")
    created = api.post("/v1/providers/", json={"name": name, "provider_type": "openai", "api_key": "sk-good", "base_url": llm.base_url})
    assert created.status_code == 200, created.text
    before = len(shared_server.log_text())
    typo = api.post("/v1/agents/", json={"name": unique("agent"), "model": f"{name}/mock-chat-l",
                                         "embedding": f"{name}/text-embedding-3-small"})
    assert 400 <= typo.status_code < 500, typo.text
    agent = api.post("/v1/agents/", json={"name": unique("agent"), "model": f"{name}/mock-chat-1",
                                          "embedding": f"{name}/text-embedding-3-small"})
    assert agent.status_code == 200, agent.text
    answer = api.post(f"/v1/agents/{agent.json()['id']}/messages", json={"messages": [{"role": "user", "content": "Hello"}]})
    assert answer.status_code == 200, answer.text
    with api.stream("POST", f"/v1/agents/{agent.json()['id']}/messages/stream",
                    json={"messages": [{"role": "user", "content": "Hello again"}], "stream_tokens": True}) as stream:
        assert stream.status_code == 200
        assert "[DONE]" in "".join(stream.iter_text())
    deadline = time.monotonic() + 30
    while f"{name}/mock-chat-l" not in shared_server.log_text()[before:] and time.monotonic() < deadline:
        time.sleep(0.2)
    added = shared_server.log_text()[before:]
    mine = [line for line in added.splitlines() if f"{name}/mock-chat-l" in line]
    assert len(mine) == 1 and mine[0].startswith("WARNING ") and f" {typo.status_code} " in mine[0], added[-3000:]
    assert "Traceback" not in added, added[-3000:]
    for normal in ("Context token estimate is not set", "completed without a completed_at timestamp", "unexpected cancellation"):
        assert normal not in added, added[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "json"])
def test_start_says_what_it_does_at_once_and_ctrl_c_says_it_stopped(kind: str, start_ketta: Callable[..., KettaProcess],
                                                                     database_uri: str) -> None:
    server = start_ketta(env={"LETTA_PG_URI": database_uri}, wait=False, args=["--log-format", kind])
    deadline = time.monotonic() + 60
    while "Starting Ketta" not in server.log_text() and time.monotonic() < deadline and server.proc.poll() is None:
        time.sleep(0.05)
    text = server.log_text()
    assert "Ketta 0.1.0 (Letta 0.16.8) on" not in text, "the line comes before the slow part"
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=120) == 130
    lines = server.log_text().splitlines()
    if kind == "json":
        lines = [json.loads(line)["message"] for line in lines]  # every line is one JSON object
    assert lines[0].startswith("Starting Ketta 0.1.0 on http://"), lines
    assert lines[-1] == "Ctrl-C during start-up: stopped before serving (nothing left running)", lines[-5:]
    assert not [line for line in lines if "Traceback" in line or "KeyboardInterrupt" in line], lines


def test_an_unknown_log_format_option_is_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ketta.cli import app

    result = CliRunner().invoke(app, ["server", "--log-format", "xml"])
    assert result.exit_code == 1 and result.output.strip() == "Error: --log-format='xml' is not a log format: use text or json.", result.output
