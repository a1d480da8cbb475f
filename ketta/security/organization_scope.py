"""Queries Letta forgot to scope to the caller's organization, scoped by SQLAlchemy itself.

Letta 0.16.8's ``MessageManager.list_messages`` filters by organization only through the agent it
is given (``validate_agent_exists_async``); without ``agent_id`` (``GET /v1/messages/``, "messages
across all agents for the current user") its query has no organization filter at all, so any
user token listed every organization's messages. Rather than copy Letta's query, the call runs
inside :func:`organization_only`, and a ``do_orm_execute`` hook adds SQLAlchemy's
``with_loader_criteria`` (its documented multi-tenancy filter) for the ``messages`` table to every
ORM SELECT made meanwhile, cursor look-ups included: another organization's rows are not there.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

from sqlalchemy import event
from sqlalchemy.orm import Session, with_loader_criteria

_organization: ContextVar[str | None] = ContextVar("ketta_organization_scope", default=None)
_installed = False


@contextmanager
def organization_only(organization_id: str | None) -> Iterator[None]:
    """ORM SELECTs of messages in this block see only ``organization_id``'s rows."""
    install()
    token = _organization.set(organization_id)
    try:
        yield
    finally:
        _organization.reset(token)


def _scope(state: Any) -> None:
    organization_id = _organization.get()
    if organization_id is None or not state.is_select:
        return
    from letta.orm.message import Message as MessageRow

    state.statement = state.statement.options(
        with_loader_criteria(MessageRow, MessageRow.organization_id == organization_id, include_aliases=True)
    )


def install() -> None:
    """Register the hook once (on every Session, so AsyncSessions' sync sessions too)."""
    global _installed
    if not _installed:
        event.listen(Session, "do_orm_execute", _scope)
        _installed = True
