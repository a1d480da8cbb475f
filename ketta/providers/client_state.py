"""What routing knows about one Letta LLM client, kept beside it rather than on it.

Routing (:mod:`ketta.providers.routing`) and fallback (:mod:`ketta.providers.fallback`) need a
few facts per client instance: whether its methods are wrapped, the agent's fallback handles, the
arguments its last request was built from, and which fallback answered. Stored as ``_ketta_*``
attributes they were state on Letta's objects; here they live in a weak map keyed by the client,
so Letta's objects carry only the wrapped methods and the state goes when the client does.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ClientState:
    instrumented: bool = False
    fallbacks: list[str] = field(default_factory=list)
    build_recorded: bool = False
    build_arguments: dict[str, Any] | None = None
    # (fallback client, its config, the response it gave) for the last request a fallback answered
    answer: tuple[Any, Any, Any] | None = None


_states: "weakref.WeakKeyDictionary[Any, ClientState]" = weakref.WeakKeyDictionary()


def state_of(client: Any) -> ClientState:
    """The client's state, made on first use."""
    state = _states.get(client)
    if state is None:
        state = _states[client] = ClientState()
    return state


def known(client: Any) -> ClientState | None:
    """The client's state if routing has seen it, else None (nothing is made)."""
    return _states.get(client)
