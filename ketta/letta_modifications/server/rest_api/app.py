"""Patches for ``letta/server/rest_api/app.py``: its start-up must not reach the internet.

Letta's lifespan calls ``nltk.download("punkt_tab")`` on every start. Ketta never downloads
data at run time; the patch replaces that call target (looked up at call time) with a no-op
that logs what was skipped.
"""

from __future__ import annotations

import logging

from ketta.patching import Patch

log = logging.getLogger("ketta")


def download(info_or_id: str | None = None, *args: object, **kwargs: object) -> bool:
    log.info("Ketta: skipped NLTK download of %r (no downloads at run time)", info_or_id)
    return False


PATCHES = [
    Patch(
        target="nltk:download",
        replacement=download,
        fingerprint="7b73f6a208a00db2",
        setting="offline",
        why="Letta's lifespan downloads NLTK data at every start; Ketta never leaves the machine at run time.",
    ),
]
