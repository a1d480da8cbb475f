"""Patches of ``letta/services/run_manager.py`` and ``job_manager.py``: callbacks pass the URL guard;
a run is created without loading its agent's relationships; a finished run's agent update is one
statement.

A run's (and a batch job's) ``callback_url`` was POSTed to whatever address it named, and the
answer's status shown on the run. See :mod:`ketta.security.callback_urls`.

``RunManager.create_run`` reads the agent row only for its ``project_id`` (``session.get(Agent,
id)``), and the agent's ten ``selectin`` relationships come with it: eleven statements per
message for one column. Letta's method runs unchanged, with agent loads limited to columns
(:class:`ketta.db.round_trips.columns_only`); the run and its metrics are stored as before.

``RunManager.update_run_by_id_async`` sets the agent's ``last_stop_reason`` through
``AgentManager.update_agent_async`` and discards the answer; within it, that update is one UPDATE
(:func:`ketta.db.direct_writes.set_agent_columns`; the agent-manager patch takes that path).
Each session of that method writes one statement (the run, the agent, the run's metrics: one
UPDATE each), so none sends BEGIN/COMMIT (:class:`ketta.db.round_trips.writes_alone`).
"""

from __future__ import annotations

from typing import Any

from ketta.core import patching
from ketta.core.patching import Patch
from ketta.db.direct_writes import agent_update_result_unused
from ketta.db.round_trips import columns_only, writes_alone
from ketta.security.callback_urls import refusal, refused_result

RUN_TARGET = "letta.services.run_manager:RunManager._dispatch_callback_async"
JOB_TARGET = "letta.services.job_manager:JobManager._dispatch_callback_async"
CREATE_RUN_TARGET = "letta.services.run_manager:RunManager.create_run"
UPDATE_RUN_TARGET = "letta.services.run_manager:RunManager.update_run_by_id_async"


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


async def create_run(self: Any, pydantic_run: Any, actor: Any) -> Any:
    """Letta's create_run, its agent read without relationships."""
    from letta.orm.agent import Agent

    with columns_only(Agent):
        return await patching.original(CREATE_RUN_TARGET)(self, pydantic_run, actor)


async def update_run_by_id_async(self: Any, *args: Any, **kwargs: Any) -> Any:
    """Letta's run update; the agent update it makes (``last_stop_reason``) is known to have its
    answer discarded, so it is stored as one UPDATE (:mod:`ketta.db.direct_writes`); each of its
    sessions writes one statement (the run; the agent; the run's metrics), sent without BEGIN/COMMIT."""
    with agent_update_result_unused(), writes_alone():
        return await patching.original(UPDATE_RUN_TARGET)(self, *args, **kwargs)


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
    Patch(
        target=CREATE_RUN_TARGET,
        replacement=create_run,
        fingerprint="150969674a59aefb",
        setting="db_fewer_round_trips",
        why="A run is created with its agent's project_id read alone, not the agent with its ten relationships "
        "(eleven statements per message down to one).",
    ),
    Patch(
        target=UPDATE_RUN_TARGET,
        replacement=update_run_by_id_async,
        fingerprint="429df1e445848abc",
        setting="db_fewer_round_trips",
        why="The agent update a finished run makes (last_stop_reason; its answer unused) is one UPDATE, not the agent "
        "read with its relationships, updated and read again (twenty-one statements per message); the run's, the "
        "agent's and the metrics' UPDATEs (one per session) are sent without BEGIN/COMMIT.",
    ),
]
