"""Patches of ``letta/services/step_manager.py``: a step answered by a fallback names it.

The step row is written before the LLM call with the agent's own model; when a fallback handle
answered instead (:mod:`ketta.providers.fallback`), saving the step's success also records that
handle's ``model_handle``, ``model`` and ``model_endpoint`` (Letta's own resolved-model update).
"""

from __future__ import annotations

from ketta.core import patching
from ketta.providers import fallback as provider_fallback
from ketta.core.patching import Patch

TARGET = "letta.services.step_manager:StepManager.update_step_success_async"


async def update_step_success_async(self, actor, step_id, usage, stop_reason=None):
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


PATCHES = [
    Patch(
        target=TARGET,
        replacement=update_step_success_async,
        fingerprint="3a14d7040e2551f9",
        setting="provider_fallback",
        why="A step answered by a fallback handle records that handle, model and endpoint, not the agent's own.",
    ),
]
