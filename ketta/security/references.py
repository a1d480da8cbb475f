"""Ids a request names inside its body must be of the caller's organization.

Letta 0.16.8 checks the organization of the object a route is *about* (``/agents/{id}``), but not
of the ids a body *refers to*: an agent created or updated with another organization's
``block_ids``, ``folder_ids``/``source_ids``, ``identity_ids``, ``tool_ids`` or ``message_ids``
(pivot rows inserted by id, or looked up by id alone), a group with another organization's
``agent_ids``/``shared_block_ids``/``manager_agent_id``, an identity with another organization's
``agent_ids``/``block_ids``. Through them a user token of organization B read A's memory blocks,
files and whole agents (``GET /v1/identities/{id}/blocks``), and made A's agents members of B's
groups. :func:`require_own` is called before Letta stores anything: an id of another
organization answers 404 exactly as an id that does not exist (nothing is said about it).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import sqlalchemy as sa

# kind -> (table, what a 404 calls it)
TABLES = {
    "agents": ("agents", "Agent"),
    "blocks": ("block", "Block"),
    "sources": ("sources", "Folder"),
    "identities": ("identities", "Identity"),
    "tools": ("tools", "Tool"),
    "messages": ("messages", "Message"),
}


def _ids(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str) and v]


async def require_own(actor: Any, refs: dict[str, Iterable[str] | str | None]) -> None:
    """Raise Letta's ``NoResultFound`` (404) for the first id in ``refs`` (kind -> ids) that is not a
    row of ``actor``'s organization; one query per kind named."""
    from letta.orm.errors import NoResultFound
    from letta.server.db import db_registry

    organization_id: Optional[str] = getattr(actor, "organization_id", None)
    wanted = {kind: list(dict.fromkeys(_ids(ids))) for kind, ids in refs.items()}
    wanted = {kind: ids for kind, ids in wanted.items() if ids}
    if not wanted:
        return
    async with db_registry.async_session() as session:
        for kind, ids in wanted.items():
            table, label = TABLES[kind]
            found = set((await session.execute(
                sa.text(f"SELECT id FROM {table} WHERE id = ANY(CAST(:ids AS varchar[])) AND organization_id = :org"),
                {"ids": ids, "org": organization_id})).scalars().all())
            missing = [i for i in ids if i not in found]
            if missing:
                raise NoResultFound(f"{label} not found: '{missing[0]}'.")


def agent_refs(request: Any) -> dict[str, Any]:
    """What an agent create/update body refers to (CreateAgent, UpdateAgent)."""
    return {
        "blocks": getattr(request, "block_ids", None),
        "tools": getattr(request, "tool_ids", None),
        "sources": [*_ids(getattr(request, "folder_ids", None)), *_ids(getattr(request, "source_ids", None))],
        "identities": getattr(request, "identity_ids", None),
        "messages": getattr(request, "message_ids", None),
    }


def group_refs(request: Any) -> dict[str, Any]:
    """What a group create/update body refers to (its agents, shared blocks, manager agent)."""
    manager = getattr(getattr(request, "manager_config", None), "manager_agent_id", None)
    return {"agents": [*_ids(getattr(request, "agent_ids", None)), *_ids(manager)], "blocks": getattr(request, "shared_block_ids", None)}


def identity_refs(request: Any) -> dict[str, Any]:
    """What an identity create/update/upsert body refers to."""
    return {"agents": getattr(request, "agent_ids", None), "blocks": getattr(request, "block_ids", None)}
