"""A route's pydantic ``TypeAdapter``s built when the route first needs them, not when it is made.

FastAPI makes a ``ModelField`` for every parameter, body and response of a route and builds its
``TypeAdapter`` (a pydantic core schema, validator and serializer) in ``__post_init__``. Letta's
app makes ~770 routes at import, ~4,300 fields: ~1.7 s of CPU of every start (17 % of
``create_app``), mostly for routes a server never serves. Here the adapter is built by FastAPI's
own ``__post_init__`` at the field's first read of ``_type_adapter`` (validating a request,
serializing a response, the OpenAPI document): the same adapter, later. The instance attribute
it sets then shadows the descriptor, so later reads cost nothing.
"""

from __future__ import annotations

from typing import Any, Callable


def nothing_at_construction(field: Any) -> None:
    """Replaces ``ModelField.__post_init__``: the adapter waits for :class:`TypeAdapterAtFirstUse`."""


class TypeAdapterAtFirstUse:
    """A non-data descriptor for ``ModelField._type_adapter``: the first read on a field runs
    ``build`` (FastAPI's ``__post_init__``), which stores the adapter on the field itself."""

    def __init__(self, build: Callable[[Any], None]) -> None:
        self._build = build

    def __get__(self, field: Any, owner: type | None = None) -> Any:
        if field is None:
            return self
        self._build(field)
        return field.__dict__["_type_adapter"]
