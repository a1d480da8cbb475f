"""Patch of ``letta/services/provider_trace_backends/postgres.py``: a provider trace is one INSERT
without BEGIN/COMMIT.

Every LLM call stores its request and response in ``provider_traces`` (a background task): one
INSERT in a session of its own, which cost ``BEGIN; INSERT; COMMIT``. Letta's method runs
unchanged, its session outside a transaction block (:class:`ketta.db.round_trips.writes_alone`):
the INSERT is its own transaction, the row the same.
"""

from __future__ import annotations

from typing import Any

from ketta.core import patching
from ketta.core.patching import Patch
from ketta.db.round_trips import writes_alone

TARGET = "letta.services.provider_trace_backends.postgres:PostgresProviderTraceBackend._create_full_async"


async def create_full_async(self: Any, *args: Any, **kwargs: Any) -> Any:
    """Letta's provider-trace write, its one INSERT sent without BEGIN/COMMIT."""
    with writes_alone():
        return await patching.original(TARGET)(self, *args, **kwargs)


PATCHES = [
    Patch(
        target=TARGET,
        replacement=create_full_async,
        fingerprint="70c24e6ad3b49357",
        setting="db_fewer_round_trips",
        why="A provider trace (one per LLM call) is one INSERT: sent without BEGIN/COMMIT, as its own transaction.",
    ),
]
