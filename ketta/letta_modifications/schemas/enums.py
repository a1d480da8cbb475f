"""Patches of ``letta/schemas/enums.py``: provider types Letta does not know.

pydantic copies an enum's members into every schema built from it, and ``import letta``
builds many (``letta/__init__.py`` imports AgentState, Message, ...). So this module loads
``letta/schemas/enums.py`` (it imports nothing but ``enum``) *before* the ``letta`` package
runs, the member is added, and only then is Letta imported: every schema, request and
response alike, and ``/openapi.json`` list ``kimi``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ketta.core.patching import Patch

ENUMS_MODULE = "letta.schemas.enums"


def load_enums_before_letta() -> ModuleType:
    """Import letta/schemas/enums.py without running letta/__init__.py (if Letta is not loaded yet)."""
    if ENUMS_MODULE in sys.modules or "letta" in sys.modules:
        return importlib.import_module(ENUMS_MODULE)
    package = importlib.util.find_spec("letta")
    if package is None or not package.submodule_search_locations:
        raise ImportError("letta is not installed")
    path = Path(next(iter(package.submodule_search_locations))) / "schemas" / "enums.py"
    spec = importlib.util.spec_from_file_location(ENUMS_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[ENUMS_MODULE] = module
    spec.loader.exec_module(module)
    return module


def link_enums_to_letta() -> None:
    """Now import Letta (its schemas see the new member) and bind the early-loaded module to its parent."""
    import letta.schemas  # noqa: F401 - runs letta/__init__.py

    parent = sys.modules["letta.schemas"]
    if getattr(parent, "enums", None) is not sys.modules[ENUMS_MODULE]:
        parent.enums = sys.modules[ENUMS_MODULE]


load_enums_before_letta()

PATCHES = [
    Patch(
        target="letta.schemas.enums:ProviderType.kimi",
        replacement="kimi",
        fingerprint="f9c932b655c6ac47",
        setting="kimi_provider",
        why="Moonshot AI as a provider type; added before Letta builds any pydantic schema.",
        mode="enum_member",
    ),
    Patch(
        target="letta.schemas.enums:ProviderType.pool",
        replacement="pool",
        fingerprint="f9c932b655c6ac47",
        setting="provider_pools",
        why="A provider pool (several providers of the same models under one handle, /v1/pools/) is a provider row of this type.",
        mode="enum_member",
    ),
]

after_apply = link_enums_to_letta  # called by apply_all once this module's patches are done
