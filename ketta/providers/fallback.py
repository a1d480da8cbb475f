"""Fallback handles: when an agent's provider fails, the same request goes to the next handle.

An agent names its fallbacks in its ``metadata`` under :data:`METADATA_KEY` (an ordered list of
handles, checked on create and update: each must resolve like ``model`` does, 400 otherwise).
Metadata is where this fits Letta's data model without breaking clients: it is free-form JSON
every SDK and Klui already round-trips, it lives with the agent (the same provider may be a
primary for one agent and a last resort for another), and no schema or column changes.

Only a failure that another provider may not share is retried elsewhere: a connection error,
a timeout, 429 or 5xx, raised before any token was streamed (when the response opens, or by a
stream that breaks before its first token: :class:`ketta.providers.routing.RecordedStream`).
Other 4xx answers (a bad request, a refused key) are the caller's to see. The fallback request
is built by the fallback's own client from the same inputs (``build_request_data`` is recorded
on the agent's client), so its provider's key, endpoint and rules (Kimi's) apply; the response
is then converted by that client too. Only handles of the same endpoint type (the same wire
format, e.g. openai and kimi models) are tried, and none that is cooling down after a 429
(:func:`ketta.providers.health.cooling_until`, shared by every worker); a primary that is cooling
down is tried after its fallbacks, not before. The step records the answering handle
(``model_handle``, ``model``, ``model_endpoint`` of ``GET /v1/steps/{id}``).
"""

from __future__ import annotations

import inspect
import logging
from contextvars import ContextVar
from typing import Any

from fastapi import HTTPException

from ketta.providers import health as provider_health
from ketta.providers.client_state import known, state_of

log = logging.getLogger("ketta.fallback")

METADATA_KEY = "ketta_fallback_handles"
MAX_FALLBACKS = 5
RETRIABLE = frozenset({"429", "5xx", "timeout", "connection"})

# The fallback config that answered the current step's LLM call (read when the step is saved).
answered_by: ContextVar[Any] = ContextVar("ketta_fallback_answered_by", default=None)


class FallbackInputError(HTTPException):
    def __init__(self, message: str):
        super().__init__(status_code=400, detail=message)


def handles_of(metadata: dict | None) -> list[str]:
    """The agent's fallback handles (already validated when stored)."""
    value = (metadata or {}).get(METADATA_KEY)
    return [h for h in value if isinstance(h, str)] if isinstance(value, list) else []


async def validate(metadata: dict | None, actor: Any, primary_handle: str | None, primary_type: str | None) -> None:
    """400 naming what to fix unless the metadata's fallback list is a list of existing handles."""
    if not metadata or METADATA_KEY not in metadata:
        return
    value = metadata[METADATA_KEY]
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(h, str) and h.strip() for h in value):
        raise FallbackInputError(f"metadata.{METADATA_KEY} must be a list of model handles ('provider name/model'), e.g. [\"backup/gpt-4o-mini\"].")
    if len(value) > MAX_FALLBACKS:
        raise FallbackInputError(f"metadata.{METADATA_KEY} names {len(value)} handles; at most {MAX_FALLBACKS} are allowed.")
    for handle in value:
        if handle == primary_handle:
            raise FallbackInputError(f"metadata.{METADATA_KEY}: '{handle}' is the agent's own model; name other handles.")
        try:
            config = await resolve(handle, actor)
        except Exception:
            raise FallbackInputError(
                f"metadata.{METADATA_KEY}: no model with handle '{handle}' (see GET /v1/models/); create its provider first or fix the handle."
            ) from None
        if primary_type and config.model_endpoint_type != primary_type:
            raise FallbackInputError(
                f"metadata.{METADATA_KEY}: '{handle}' speaks '{config.model_endpoint_type}', the agent's model '{primary_type}'; "
                "a fallback must use the same API format (e.g. openai and kimi models)."
            )


async def resolve(handle: str, actor: Any) -> Any:
    """The LLM config of a handle, the way Letta resolves an agent's ``model``."""
    from letta.services.provider_manager import ProviderManager

    return await ProviderManager().get_llm_config_from_handle(handle=handle, actor=actor)


def retriable(exc: BaseException) -> bool:
    return provider_health.status_class(exc) in RETRIABLE


def attach(client: Any, handles: list[str]) -> None:
    """Give an agent's LLM client its fallback list, and remember how it builds requests."""
    state = state_of(client)
    state.fallbacks = list(handles)
    if state.build_recorded:
        return
    build = client.build_request_data
    signature = _named_signature(build)

    def recording_build(*args: Any, **kwargs: Any) -> Any:
        try:
            state.build_arguments = dict(signature.bind(*args, **kwargs).arguments)
        except TypeError:
            state.build_arguments = None
        return build(*args, **kwargs)

    convert = client.convert_response_to_chat_completion

    async def converting(response_data: Any, input_messages: Any, llm_config: Any) -> Any:
        answer = state.answer
        if answer is not None and answer[2] is response_data:
            fallback_client, fallback_config, _ = answer
            return await fallback_client.convert_response_to_chat_completion(response_data, input_messages, fallback_config)
        return await convert(response_data, input_messages, llm_config)

    client.build_request_data = recording_build
    client.convert_response_to_chat_completion = converting
    state.build_recorded = True


def _named_signature(build: Any) -> inspect.Signature:
    """The parameters ``build_request_data`` takes by name. A patched builder (Ketta's Anthropic
    patch takes ``*args, **kwargs``) would bind them as 'args'/'kwargs', which the fallback's
    builder does not take: then the base class's declaration names them (every client's is the same)."""
    signature = inspect.signature(build)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    if not any(p.kind in variadic for p in signature.parameters.values()):
        return signature
    from letta.llm_api.llm_client_base import LLMClientBase

    declared = inspect.signature(LLMClientBase.build_request_data)
    return declared.replace(parameters=list(declared.parameters.values())[1:])  # bound: no self


def _rebuilt(client: Any, fallback_client: Any, fallback_config: Any, request_data: dict) -> dict:
    state = known(client)
    arguments = state.build_arguments if state is not None else None
    if arguments:
        data = fallback_client.build_request_data(**{**arguments, "llm_config": fallback_config})
        if "parallel_tool_calls" in request_data and "parallel_tool_calls" in data:
            data["parallel_tool_calls"] = request_data["parallel_tool_calls"]
        return data
    import copy

    data = copy.deepcopy(request_data)
    data["model"] = fallback_config.model
    return data


class NoAnswer(Exception):
    """No fallback answered a request the primary was skipped for (it is cooling down)."""


async def send_elsewhere(client: Any, method_name: str, request_data: dict, llm_config: Any, error: BaseException | None,
                         extra: dict[str, Any]) -> Any:
    """The same request on the agent's fallback handles in order, skipping those cooling down;
    ``error`` again if none answers (:class:`NoAnswer` when there was none)."""
    from letta.llm_api.llm_client import LLMClient

    actor = client.actor
    for handle in state_of(client).fallbacks:
        if handle == llm_config.handle:
            continue
        try:
            config = await resolve(handle, actor)
        except Exception as exc:
            log.warning("Fallback %s skipped: %s", handle, provider_health.scrub(str(exc)))
            continue
        if provider_health.cooling_until(getattr(actor, "organization_id", None), config.provider_name):
            log.info("Fallback %s skipped: cooling down", handle)
            continue
        if config.model_endpoint_type != llm_config.model_endpoint_type:
            log.warning("Fallback %s skipped: %s API, the agent's is %s", handle, config.model_endpoint_type, llm_config.model_endpoint_type)
            continue
        fallback_client = LLMClient.create(provider_type=config.model_endpoint_type, put_inner_thoughts_first=True, actor=actor)
        data = _rebuilt(client, fallback_client, config, request_data)
        why = provider_health.status_class(error) if error is not None else "cooling down"
        log.warning("%s failed (%s): trying fallback %s", llm_config.handle, why, handle)
        try:
            result = await getattr(fallback_client, method_name)(data, config, **extra)
        except Exception as exc:
            if retriable(exc):
                continue
            raise
        state_of(client).answer = (fallback_client, config, result)
        answered_by.set(config)
        return result
    if error is None:
        raise NoAnswer()
    raise error


def fallbacks_of(client: Any) -> list[str] | None:
    state = known(client)
    return (state.fallbacks if state is not None else None) or None

