"""Patches of FastAPI's ``ModelField`` (``fastapi/_compat/v2.py``), which builds Letta's routes.

Letta's ``letta/server/rest_api`` makes its ~770 routes at import; FastAPI builds a pydantic
``TypeAdapter`` for each of their ~4,300 fields right then. These patches defer each adapter to
the field's first use (:mod:`ketta.api.route_fields`). Declared second in ``PATCH_MODULES`` (after the enum patch, whose import of
Letta makes no route) so that every route Letta makes, its routers' own and the app's copies, gets them.
"""

from __future__ import annotations

from typing import Any

from ketta.api.route_fields import TypeAdapterAtFirstUse, nothing_at_construction
from ketta.core import patching
from ketta.core.patching import Patch

POST_INIT = "fastapi._compat.v2:ModelField.__post_init__"
FASTAPI = "fastapi>=0.141,<0.142"
WHY = ("FastAPI built a pydantic TypeAdapter for each of the ~4,300 fields of Letta's routes when the routes were made "
       "(~1.7 s of CPU per start, 17 % of create_app); each is built by FastAPI's own code at the field's first use.")


def _build_with_fastapis_post_init(field: Any) -> None:
    patching.original(POST_INIT)(field)


PATCHES = [
    Patch(target=POST_INIT, replacement=nothing_at_construction, fingerprint="0553534200a3b0d0", setting="route_fields_at_first_use",
          requires=FASTAPI, why=WHY),
    Patch(target="fastapi._compat.v2:ModelField._type_adapter", replacement=TypeAdapterAtFirstUse(_build_with_fastapis_post_init),
          fingerprint="a614a294aaafb3fb", setting="route_fields_at_first_use", mode="add", requires=FASTAPI, why=WHY),
]
