"""Fix of letta-ai/letta#3156 (``letta/agents/helpers.py``): an approval request whose run was
cancelled or failed no longer blocks its agent or conversation for good.

Letta refuses a new message (409 "waiting for approval") while the last in-context message is a
tool call awaiting approval. ``RunManager.cancel_run`` closes such a request with denials, but it
looks only at the agent's own message list: a conversation's request (``/v1/conversations``)
stays open after its run is cancelled (upstream issue letta-ai/letta#3176), and a run that failed
after asking leaves one too. Nobody can answer it any more, so the 409 never ends.

The patch lets Letta refuse as before, and only when the pending request's run is ``cancelled``
or ``failed`` prepares the message again with that request denied first (the denial text Letta's
own cancel writes), so the model sees each orphaned call answered before the new message. A run
that is ``completed`` with ``requires_approval`` is the live, normal wait: still refused
(the proposal's first version wrongly skipped those too; its final one did not).

Letta's agent modules import the helper by name, so each of them is patched besides the helper's
own module.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ketta.core import patching
from ketta.core.patching import Patch

log = logging.getLogger("ketta")

HELPER = "_prepare_in_context_messages_no_persist_async"
MODULES = ("letta.agents.helpers", "letta.agents.letta_agent_v3", "letta.agents.letta_agent_v2", "letta.agents.letta_agent")
ORPHANING_STATUSES = ("cancelled", "failed")


async def orphaned_denial(pending_request_id: str | None, message_manager: Any, actor: Any) -> Any | None:
    """An approval input denying every tool call of the pending request, if its run is over
    (cancelled or failed); None if the request is live or cannot be checked (then Letta's 409 stands)."""
    from letta.constants import TOOL_CALL_DENIAL_ON_CANCEL
    from letta.schemas.letta_message import ApprovalReturn
    from letta.schemas.message import ApprovalCreate
    from letta.services.run_manager import RunManager

    if not pending_request_id:
        return None
    try:
        request = await message_manager.get_message_by_id_async(message_id=pending_request_id, actor=actor)
        if request is None or not request.run_id or not request.tool_calls:
            return None
        run = await RunManager().get_run_by_id(run_id=request.run_id, actor=actor)
    except Exception as exc:  # noqa: BLE001 - unknown state: keep Letta's refusal
        log.warning("Ketta: could not check the run of approval request %s (%s); it stays pending", pending_request_id, exc)
        return None
    status = getattr(run.status, "value", run.status)
    if status not in ORPHANING_STATUSES:
        return None
    log.info("Ketta: approval request %s of %s run %s closed as denied before a new message", request.id, status, run.id)
    return ApprovalCreate(approvals=[ApprovalReturn(tool_call_id=call.id, approve=False, reason=TOOL_CALL_DENIAL_ON_CANCEL)
                                     for call in request.tool_calls])


def closing_orphaned_approvals(target: str) -> Callable[..., Any]:
    """The helper as patched in one module: Letta's own, retried with the orphan denied first."""

    async def prepare(input_messages: list[Any], agent_state: Any, message_manager: Any, actor: Any,
                      *args: Any, **kwargs: Any) -> Any:
        from letta.errors import PendingApprovalError

        original = patching.original(target)
        try:
            return await original(input_messages, agent_state, message_manager, actor, *args, **kwargs)
        except PendingApprovalError as refusal:
            denial = await orphaned_denial(refusal.pending_request_id, message_manager, actor)
            if denial is None:
                raise
            return await original([denial, *input_messages], agent_state, message_manager, actor, *args, **kwargs)

    prepare.__name__ = prepare.__qualname__ = HELPER
    return prepare


WHY = ("A new message to an agent or conversation whose pending approval request belongs to a cancelled or failed run "
       "is answered (the request closed as denied first), instead of 409 'waiting for approval' for good.")

PATCHES = [
    Patch(target=f"letta.agents.helpers:{HELPER}", replacement=closing_orphaned_approvals(f"letta.agents.helpers:{HELPER}"),
          fingerprint="460180179ec00f3f", setting="letta_fixes", kind="fix", upstream="letta-ai/letta#3156", why=WHY),
    Patch(target=f"letta.agents.letta_agent_v3:{HELPER}", replacement=closing_orphaned_approvals(f"letta.agents.letta_agent_v3:{HELPER}"),
          fingerprint="460180179ec00f3f", setting="letta_fixes", kind="fix", upstream="letta-ai/letta#3156", why=WHY),
    Patch(target=f"letta.agents.letta_agent_v2:{HELPER}", replacement=closing_orphaned_approvals(f"letta.agents.letta_agent_v2:{HELPER}"),
          fingerprint="460180179ec00f3f", setting="letta_fixes", kind="fix", upstream="letta-ai/letta#3156", why=WHY),
    Patch(target=f"letta.agents.letta_agent:{HELPER}", replacement=closing_orphaned_approvals(f"letta.agents.letta_agent:{HELPER}"),
          fingerprint="460180179ec00f3f", setting="letta_fixes", kind="fix", upstream="letta-ai/letta#3156", why=WHY),
]
