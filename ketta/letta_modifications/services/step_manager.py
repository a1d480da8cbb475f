"""Patches of ``letta/services/step_manager.py``: a step answered by a fallback names it.

The step row is written before the LLM call with the agent's own model; when a fallback handle
answered instead (:mod:`ketta.providers.fallback`), saving the step's success also records that
handle's ``model_handle``, ``model`` and ``model_endpoint`` (Letta's own resolved-model update).

With KETTA_DB_FEWER_ROUND_TRIPS (read per call), a step's success and its metrics row are each
stored by one statement (:mod:`ketta.db.direct_writes`) instead of a read, a write and
BEGIN/COMMIT; Letta's method runs when no row matched, for its error. The step's own row, one
INSERT, is sent without BEGIN/COMMIT (:class:`ketta.db.round_trips.writes_alone`).
"""

from __future__ import annotations

from ketta.core import patching
from ketta.core.settings import get_settings
from ketta.db import direct_writes
from ketta.db.round_trips import writes_alone
from ketta.providers import fallback as provider_fallback
from ketta.core.patching import Patch

TARGET = "letta.services.step_manager:StepManager.update_step_success_async"


async def update_step_success_async(self, actor, step_id, usage, stop_reason=None):
    step = None
    if get_settings().db_fewer_round_trips:
        step = await direct_writes.update_step_success(actor, step_id, usage, stop_reason)
        if step is not None:
            from letta.services.webhook_service import WebhookService

            await WebhookService().notify_step_complete(step_id)  # as Letta's method does
    if step is None:
        step = await patching.original(TARGET)(self, actor, step_id, usage, stop_reason)
    config = provider_fallback.answered_by.get()
    if config is not None:
        provider_fallback.answered_by.set(None)
        await self.update_step_resolved_model_async(
            actor=actor, step_id=step_id, provider_name=config.model_endpoint_type,
            provider_category=config.provider_category or "byok", model=config.model,
            model_endpoint=config.model_endpoint, model_handle=config.handle,
        )
    return step


METRICS_TARGET = "letta.services.step_manager:StepManager.record_step_metrics_async"
METRIC_FIELDS = ("llm_request_ns", "tool_execution_ns", "step_ns", "agent_id", "run_id", "project_id", "template_id", "base_template_id")


async def record_step_metrics_async(self, actor, step_id, *args, **kwargs):
    """A step's metrics row created or updated by one statement; Letta's method for what that
    does not cover (``allow_partial``, positional fields) and when no row matched (its error)."""
    if not args and not kwargs.get("allow_partial") and set(kwargs) <= {*METRIC_FIELDS, "allow_partial"}:
        metrics = await direct_writes.record_step_metrics(actor, step_id, kwargs)
        if metrics is not None:
            return metrics
    return await patching.original(METRICS_TARGET)(self, actor, step_id, *args, **kwargs)


LOG_STEP_TARGET = "letta.services.step_manager:StepManager.log_step_async"


async def log_step_async(self, *args, **kwargs):
    """Letta's method, its one INSERT (after reading the run) sent without BEGIN/COMMIT."""
    with writes_alone():
        return await patching.original(LOG_STEP_TARGET)(self, *args, **kwargs)


PATCHES = [
    Patch(
        target=TARGET,
        replacement=update_step_success_async,
        fingerprint="3a14d7040e2551f9",
        setting="provider_fallback",
        why="A step answered by a fallback handle records that handle, model and endpoint, not the agent's own. "
        "With KETTA_DB_FEWER_ROUND_TRIPS the success is stored by one UPDATE ... RETURNING.",
    ),
    Patch(
        target=METRICS_TARGET,
        replacement=record_step_metrics_async,
        fingerprint="435a780d74bd7d8b",
        setting="db_fewer_round_trips",
        why="A step's metrics row is created or updated by one INSERT ... ON CONFLICT DO UPDATE, not read the step, "
        "the row and the run, insert and read back (twelve statements per step to two).",
    ),
    Patch(
        target=LOG_STEP_TARGET,
        replacement=log_step_async,
        fingerprint="ef2e4b09ce982486",
        setting="db_fewer_round_trips",
        why="A step's row is one INSERT (after reading its run): sent without BEGIN/COMMIT, as its own transaction.",
    ),
]
