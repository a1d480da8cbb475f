"""What the console shows, line by line: readable in a terminal, in a file, and as JSON for a collector.

- A client error (a 4xx the API answered) is one line: status, exception, message. Letta's
  handlers log each with its whole traceback at ERROR (~44 lines for a mistyped handle); the
  traceback stays in Letta's log file and on the console at ``KETTA_LOG_LEVEL=debug``.
- Warnings Letta logs in normal operation (every message, every stream) stay off the console
  below debug (:data:`NORMAL_OPERATION`).
- uvicorn's own lines are formatted by a configuration of Ketta's (:func:`uvicorn_log_config`):
  uvicorn's colour formatter re-renders a second, ``%d``-style copy of the message from the
  record's arguments, which the key scrubbing (``ketta.security.redaction``) has already folded into the
  message, so a terminal showed ``Started server process [%d]``.
- ``KETTA_LOG_FORMAT=json`` (``ketta server --log-format json``): one JSON object per line
  (``time``, ``level``, ``logger``, ``message``, ``status`` for a client error, ``exception``
  for a traceback) for Ketta's, Letta's and uvicorn's lines and the start-up block.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"

# Warnings Letta logs while everything works: (logger name pattern, message pattern).
NORMAL_OPERATION: tuple[tuple[re.Pattern[str], re.Pattern[str]], ...] = (
    # letta_agent_v3 logs it at every step of every agent that has not been summarised yet
    (re.compile(r"Letta\.agent-[0-9a-f-]+$"), re.compile(r"Context token estimate is not set$")),
    # run_manager fills the timestamp itself right after; every run of the v3 loop takes this path
    (re.compile(r"Letta\.letta\.services\.run_manager$"), re.compile(r"Run \S+ completed without a completed_at timestamp$")),
    # the stream's task is cancelled when the client closes it after the last event (an SDK's normal end)
    (re.compile(r"Letta\.letta\.server\.rest_api\.streaming_response$"),
     re.compile(r"Stream was terminated due to unexpected cancellation from server$")),
)

# Letta's event-loop watchdog: when the loop lags over 2 s (a loaded machine, the first request
# building its schemas) it dumps every thread's and task's stack, ~60 lines at ERROR/WARNING.
# The console keeps its headlines; the dump stays in Letta's log file (and on the console at debug).
WATCHDOG = re.compile(r"Letta\.letta\.monitoring\.event_loop_watchdog$")
WATCHDOG_HEADLINES = re.compile(r"Event loop lag in heartbeat|EVENT LOOP HANG DETECTED|Event loop appears frozen|Watchdog error")

# exception class -> HTTP status of the app's exception handler for it (filled by register_app)
_handler_status: dict[type, int] = {}


def register_app(app: Any) -> None:
    """Remember which status each of the app's exception handlers answers (Letta registers its
    handlers as ``partial(error_handler_with_code, code=N)``), so a logged exception can be told
    to be a client error."""
    for exc_type, handler in getattr(app, "exception_handlers", {}).items():
        code = getattr(handler, "keywords", {}).get("code") if handler is not None else None
        if isinstance(exc_type, type) and isinstance(code, int):
            _handler_status[exc_type] = code


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception is answered with, when known."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, int):
        return code
    for klass in type(exc).__mro__:
        if klass in _handler_status:
            return _handler_status[klass]
    return None


def client_error(record: logging.LogRecord) -> tuple[int, BaseException] | None:
    """(status, exception) when the record carries an exception answered with a 4xx."""
    if not record.exc_info or record.exc_info[1] is None:
        return None
    exc = record.exc_info[1]
    status = status_of(exc)
    if status is not None and 400 <= status < 500:
        return status, exc
    return None


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _client_error_message(status: int, exc: BaseException) -> str:
    detail = one_line(getattr(exc, "detail", None) or str(exc))
    return f"{status} {type(exc).__name__}: {detail}" if detail else f"{status} {type(exc).__name__}"


class ConsoleFormatter(logging.Formatter):
    """Ketta's console lines, as text or JSON; a client error as one line unless ``verbose``."""

    def __init__(self, kind: str = "text", verbose: bool = False):
        super().__init__(TEXT_FORMAT)
        self.kind = kind
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        client = None if self.verbose else client_error(record)
        if self.kind == "json":
            return json_line(record, client, self)
        if client is not None:
            return f"WARNING {record.name}: {_client_error_message(*client)}"
        return super().format(record)


def json_line(record: logging.LogRecord, client: tuple[int, BaseException] | None = None,
              formatter: logging.Formatter | None = None) -> str:
    """One JSON object for a record (never more than one line)."""
    fields: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "logger": record.name,
    }
    if client is not None:
        fields.update(level="WARNING", message=_client_error_message(*client), status=client[0])
        return json.dumps(fields, default=str)
    fields["message"] = record.getMessage()
    if record.exc_info:
        fields["exception"] = (formatter or logging.Formatter()).formatException(record.exc_info)
    elif record.exc_text:
        fields["exception"] = record.exc_text
    return json.dumps(fields, default=str)


class JsonFormatter(logging.Formatter):
    """JSON lines for uvicorn's loggers (``--log-format json``)."""

    def format(self, record: logging.LogRecord) -> str:
        return json_line(record, None, self)


class ConsoleFilter(logging.Filter):
    """Keeps the warnings of normal operation (:data:`NORMAL_OPERATION`) and the watchdog's stack
    dumps (:data:`WATCHDOG`) off a console handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if WATCHDOG.match(record.name) and record.levelno >= logging.WARNING:
            return bool(WATCHDOG_HEADLINES.match(record.getMessage()))
        if record.levelno != logging.WARNING:
            return True
        message = None
        for name, pattern in NORMAL_OPERATION:
            if name.match(record.name):
                message = record.getMessage() if message is None else message
                if pattern.match(message):
                    return False
        return True


def is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def install(kind: str, verbose: bool) -> None:
    """Ketta's formatter (and, below debug, the normal-operation filter) on every console handler of
    the root logger. Idempotent; run again after Letta has installed its logging config."""
    for handler in logging.getLogger().handlers:
        if not is_console(handler):
            continue
        handler.setFormatter(ConsoleFormatter(kind, verbose))
        for old in [f for f in handler.filters if isinstance(f, ConsoleFilter)]:
            handler.removeFilter(old)
        if not verbose:
            handler.addFilter(ConsoleFilter())


def check_format(kind: str) -> str:
    kind = kind.strip().lower()
    if kind not in LOG_FORMATS:
        raise ValueError(f"KETTA_LOG_FORMAT={kind!r} is not a log format: use text or json.")
    return kind


def uvicorn_log_config(kind: str) -> dict[str, Any]:
    """uvicorn's logging config without its colour formatter (which printed ``[%d]`` in a terminal;
    see the module docstring), or with JSON lines."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for name, formatter in config["formatters"].items():
        if kind == "json":
            config["formatters"][name] = {"()": "ketta.core.console.JsonFormatter"}
        else:
            formatter["use_colors"] = False
    return config


def say(message: str, kind: str = "text", stream: Any = None) -> None:
    """A line of Ketta's own (the start block, the starting line): as is, or as one JSON object."""
    stream = stream or sys.stdout
    if kind == "json":
        record = logging.LogRecord("ketta", logging.INFO, __file__, 0, message, None, None)
        message = json_line(record)
    stream.write(message + "\n")
    stream.flush()
