"""A quiet console: the warnings and log lines of Letta's start a user cannot act on stay off it.

Stock Letta 0.16.8 prints about 15 deprecation and schema warnings of its dependencies, INFO
lines from every subsystem, security warnings about its own start-up queries, a dump of the
default user and a banner. None of them asks anything of the person starting the server.

``configure(level)`` (called by the CLI and the app factory, again once Letta has installed
its own logging config) sets the console handlers to ``level`` (``KETTA_LOG_LEVEL``, default
warning), demotes the known harmless warnings below it, and drops Python warnings of
dependencies; ``debug`` shows everything. Letta's log file (``~/.letta/logs``) keeps INFO.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from typing import Any, TextIO

# Python warnings raised by Letta's dependencies at import (authlib, pydantic, SQLAlchemy,
# FastAPI, websockets, platformdirs): nothing a user of the server can change.
IGNORED_WARNING_CATEGORIES: tuple[type[Warning], ...] = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
IGNORED_WARNING_MESSAGES: tuple[str, ...] = (
    r"Duplicate Operation ID",  # two of Letta's routes share an operation id in its OpenAPI schema
    r"XDG_RUNTIME_DIR is not set",  # platformdirs in a container or a service
)

# Letta log records at WARNING that describe Letta's own start-up, not a problem to fix.
DEMOTED_RECORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Letta.letta.otel.metrics", re.compile(r"Metrics are not initialized")),
    ("Letta.letta.server.rest_api.app", re.compile(r"\[Worker \d+\] PostgreSQL statement_timeout: ")),
    ("Letta.letta.orm.sqlalchemy_base", re.compile(r"SECURITY: (Reading|Listing) org-scoped model \w+ without actor")),
    # Letta's tool directory lives under KETTA_HOME/letta (LETTA_DIR): made on the first start.
    ("Letta.letta.server.server", re.compile(r"LETTA_TOOL_SANDBOX_DIR does not exist, creating now")),
)

# Lines Letta prints (not logs) at start: its banner and a repr of the default user and org.
DROPPED_STDOUT_PREFIXES: tuple[str, ...] = ("[[ Letta server // ", "Default user: ")


# Some libraries re-enable their own warnings after our filters (authlib adds an "always"
# filter for its deprecations at import): those reach logging as "py.warnings" records.
IGNORED_WARNING_RECORD = re.compile(r"\w*(Deprecat\w*|FutureWarning): |" + "|".join(IGNORED_WARNING_MESSAGES))


class DemoteKnownRecords(logging.Filter):
    """Drop (demote below the console level) the records of DEMOTED_RECORDS and ignored warnings.

    Attached to the emitting loggers themselves: Letta replaces the root handlers when its
    logging module is imported, in the middle of Ketta's start, and logger filters survive that.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings":
            return not IGNORED_WARNING_RECORD.search(record.getMessage())
        for name, pattern in DEMOTED_RECORDS:
            if record.name == name and pattern.match(record.getMessage()):
                return False
        return True


class DroppingLines:
    """A stdout wrapper that drops whole lines starting with known prefixes (and blank lines)."""

    def __init__(self, stream: TextIO, prefixes: tuple[str, ...]):
        self._stream = stream
        self._prefixes = prefixes
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        kept = "".join(f"{line}\n" for line in lines if line.strip() and not line.startswith(self._prefixes))
        if kept:
            self._stream.write(kept)
        return len(text)

    def flush(self) -> None:
        pending = self._pending
        if pending and not any(p.startswith(pending) or pending.startswith(p) for p in self._prefixes):
            self._stream.write(pending)
            self._pending = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def level_number(level: str) -> int:
    """'warning' -> logging.WARNING; an unknown name is refused with the valid ones."""
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise ValueError(f"KETTA_LOG_LEVEL={level!r} is not a log level: use debug, info, warning or error.")
    return number


def configure(level: str = "warning", quiet_stdout: bool = False, log_format: str | None = None) -> None:
    """Console at ``level`` in ``log_format`` (text or json, see :mod:`ketta.core.console`; default
    KETTA_LOG_FORMAT); warnings and records a user cannot act on off the console. Idempotent."""
    from ketta.core import console

    number = level_number(level)
    kind = console.check_format(log_format if log_format is not None else os.environ.get("KETTA_LOG_FORMAT", "text"))
    verbose = number <= logging.DEBUG
    if not verbose:
        for category in IGNORED_WARNING_CATEGORIES:
            warnings.filterwarnings("ignore", category=category)
        for message in IGNORED_WARNING_MESSAGES:
            warnings.filterwarnings("ignore", message=message)
        # Worker processes (uvicorn --workers) import before they run create_app.
        os.environ.setdefault("PYTHONWARNINGS", ",".join(f"ignore::{c.__name__}" for c in IGNORED_WARNING_CATEGORIES))
    logging.captureWarnings(True)  # what is left is shown once, as a log line

    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        root.addHandler(handler)
    root.setLevel(min(number, logging.INFO))  # Letta's log file keeps INFO
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(number)
    console.install(kind, verbose)
    if not verbose:
        for name in ("py.warnings", *(name for name, _ in DEMOTED_RECORDS)):
            logger = logging.getLogger(name)
            if not any(isinstance(f, DemoteKnownRecords) for f in logger.filters):
                logger.addFilter(DemoteKnownRecords())
    if quiet_stdout and not verbose and not isinstance(sys.stdout, DroppingLines):
        sys.stdout = DroppingLines(sys.stdout, DROPPED_STDOUT_PREFIXES)  # type: ignore[assignment]
