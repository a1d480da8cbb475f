"""A real headless Chromium (Debian's package) driven over the DevTools protocol, for browser tests.

Only what the tests need: open a page, wait for it to load, run JavaScript (awaiting promises).
No browser download: the system ``chromium`` runs with ``--remote-debugging-port``; the
``websockets`` client (already installed) speaks the protocol.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import httpx
from websockets.sync.client import connect

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Chromium:
    """One headless browser with one tab; ``stop()`` ends it."""

    def __init__(self, executable: str):
        self.profile = tempfile.mkdtemp(prefix="ketta-chromium-")
        port = _free_port()
        self.proc = subprocess.Popen([
            executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-default-browser-check",
            f"--remote-debugging-port={port}", "--remote-allow-origins=*", f"--user-data-dir={self.profile}", "about:blank",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                tabs = httpx.get(f"http://127.0.0.1:{port}/json", timeout=2).json()
                page = next(t for t in tabs if t.get("type") == "page")
                break
            except (httpx.HTTPError, StopIteration, ValueError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("chromium did not open its DevTools port")
                time.sleep(0.2)
        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self._next_id = 0
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, timeout_s: float = 60, **params: Any) -> dict:
        self._next_id += 1
        ident = self._next_id
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str, timeout_s: float = 120) -> Any:
        """The value of a JavaScript expression (a promise is awaited); a thrown error raises."""
        result = self.send("Runtime.evaluate", timeout_s=timeout_s, expression=expression, awaitPromise=True,
                           returnByValue=True, timeout=int(timeout_s * 1000))
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 60) -> Any:
        """Poll an expression until it is truthy (page loads, navigations after a form submit)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = self.evaluate(expression, timeout_s=10)
                if value:
                    return value
            except RuntimeError:
                pass  # the page is being replaced
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true after {timeout_s}s: {expression}")
            time.sleep(0.2)

    def mark(self) -> None:
        """Mark the current document, so :meth:`wait_loaded` can tell the next one from it."""
        self.evaluate("window.__kettaOld = true")

    def wait_loaded(self, timeout_s: float = 60) -> str:
        """Wait for a document other than the marked one to finish loading; its address."""
        return self.wait_for("!window.__kettaOld && document.readyState === 'complete' && location.href", timeout_s)

    def open(self, url: str) -> str:
        """Navigate (following redirects); the address the browser ends at."""
        self.mark()
        self.send("Page.navigate", url=url)
        return self.wait_loaded()

    def stop(self) -> None:
        try:
            self._ws.close()
        except Exception:  # noqa: BLE001 - closing a browser that may be gone
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
