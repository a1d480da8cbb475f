"""Patches of ``letta/services/run_manager.py`` and ``job_manager.py``: callbacks pass the URL guard.

A run's (and a batch job's) ``callback_url`` was POSTed to whatever address it named, and the
answer's status shown on the run. See :mod:`ketta.security.callback_urls`.
"""

from __future__ import annotations

from typing import Any

from ketta.core import patching
from ketta.core.patching import Patch
from ketta.security.callback_urls import refusal, refused_result

RUN_TARGET = "letta.services.run_manager:RunManager._dispatch_callback_async"
JOB_TARGET = "letta.services.job_manager:JobManager._dispatch_callback_async"


async def dispatch_run_callback(self: Any, callback_info: dict, *args: Any, **kwargs: Any) -> dict:
    """Letta's POST to the run's callback_url, once the URL passed the guard."""
    reason = await refusal(callback_info.get("callback_url"))
    if reason is not None:
        return refused_result(reason)
    return await patching.original(RUN_TARGET)(self, callback_info, *args, **kwargs)


async def dispatch_job_callback(self: Any, callback_info: dict, *args: Any, **kwargs: Any) -> dict:
    """Letta's POST to the batch job's callback_url, once the URL passed the guard."""
    reason = await refusal(callback_info.get("callback_url"))
    if reason is not None:
        return refused_result(reason)
    return await patching.original(JOB_TARGET)(self, callback_info, *args, **kwargs)


PATCHES = [
    Patch(
        target=RUN_TARGET,
        replacement=dispatch_run_callback,
        fingerprint="1c6eb449c705a852",
        setting="url_guard",
        why="A run's callback_url passes the URL guard before the server POSTs to it (SSRF into the server's network).",
    ),
    Patch(
        target=JOB_TARGET,
        replacement=dispatch_job_callback,
        fingerprint="82a15e6773bc74c1",
        setting="url_guard",
        why="A batch job's callback_url passes the URL guard before the server POSTs to it.",
    ),
]
