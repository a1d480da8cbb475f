"""The map of what Ketta changes in Letta: every patch, in the order it is applied.

Each module here mirrors the Letta module it patches (``services/provider_manager.py``
patches ``letta/services/provider_manager.py``) and exports ``PATCHES``, a list of
:class:`ketta.core.patching.Patch`. Modules are imported lazily and in this order: the enum
patch comes first because pydantic freezes an enum's members into every schema built
from it, and most of Letta builds its schemas on import. A module may define
``after_apply()``, run once its patches are done (enabled or not).
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from typing import Iterator

from ketta.core import patching
from ketta.core.patching import Hook, Patch
from ketta.core.settings import KettaSettings

PATCH_MODULES: tuple[str, ...] = (
    "ketta.letta_modifications.schemas.enums",
    "ketta.letta_modifications.server.rest_api.route_fields",  # second: before any Letta route is made
    "ketta.letta_modifications.config",
    "ketta.letta_modifications.schemas.providers.openai",
    "ketta.letta_modifications.schemas.model",
    "ketta.letta_modifications.services.provider_manager",
    "ketta.letta_modifications.server.db",
    "ketta.letta_modifications.server.server",
    "ketta.letta_modifications.server.rest_api.app",
    "ketta.letta_modifications.server.rest_api.streaming_response",
    "ketta.letta_modifications.llm_api.llm_client_base",
    "ketta.letta_modifications.llm_api.openai_client",
    "ketta.letta_modifications.llm_api.anthropic_client",
    "ketta.letta_modifications.llm_api.openai",
    "ketta.letta_modifications.llm_api.google_ai_client",
    "ketta.letta_modifications.llm_api.azure_client",
    "ketta.letta_modifications.agents.agent_loop",
    "ketta.letta_modifications.schemas.providers",
    "ketta.letta_modifications.schemas.providers.base",
    "ketta.letta_modifications.llm_api.llm_client",
    "ketta.letta_modifications.services.agent_manager",
    "ketta.letta_modifications.adapters.letta_llm_stream_adapter",
    "ketta.letta_modifications.adapters.letta_llm_adapter",
    "ketta.letta_modifications.agents.letta_agent_v2",
    "ketta.letta_modifications.services.step_manager",
    "ketta.letta_modifications.helpers.crypto_utils",
    "ketta.letta_modifications.schemas.providers.anthropic",
    "ketta.letta_modifications.services.conversation_manager",
    "ketta.letta_modifications.services.message_manager",
    "ketta.letta_modifications.services.group_manager",
    "ketta.letta_modifications.services.identity_manager",
    "ketta.letta_modifications.services.run_manager",
    "ketta.letta_modifications.services.provider_trace_backends.postgres",
    "ketta.letta_modifications.services.files_agents_manager",
    "ketta.letta_modifications.services.organization_manager",
    "ketta.letta_modifications.services.user_manager",
    "ketta.letta_modifications.services.streaming_service",
    "ketta.letta_modifications.services.file_processor.embedder.openai_embedder",
    "ketta.letta_modifications.agents.helpers",
    "ketta.letta_modifications.helpers.message_helper",
    "ketta.letta_modifications.services.tool_executor.builtin_tool_executor",
    "ketta.letta_modifications.services.tool_sandbox.local_sandbox",
    "ketta.letta_modifications.schemas.providers.ollama",
    "ketta.letta_modifications.schemas.providers.azure",
    "ketta.letta_modifications.schemas.tool",
)


log = logging.getLogger("ketta")

# Patches skipped at start because their upstream target drifted (KETTA_ALLOW_PATCH_DRIFT=true).
skipped: list[Patch] = []


class PatchDriftError(RuntimeError):
    """The installed Letta no longer matches what some patches were written against."""


@dataclass(frozen=True)
class PatchStatus:
    patch: Patch
    module: str
    enabled: bool
    applied: bool
    problem: str | None


def iter_patches() -> Iterator[tuple[str, Patch]]:
    """(declaring module, patch), in application order; imports the modules."""
    for module_name in PATCH_MODULES:
        module = importlib.import_module(module_name)
        for patch in module.PATCHES:
            yield module_name, patch


def enabled(patch: Patch, settings: KettaSettings) -> bool:
    """A patch's setting is on; a fix's upstream reference is also not in KETTA_SKIP_FIXES."""
    if patch.kind == "fix" and settings.fix_skipped(patch.upstream):
        return False
    return bool(getattr(settings, patch.setting))


def status(settings: KettaSettings) -> list[PatchStatus]:
    return [
        PatchStatus(p, module, enabled(p, settings), patching.is_applied(p), patching.drift(p))
        for module, p in iter_patches()
    ]


def status_from_source(settings: KettaSettings) -> list[PatchStatus]:
    """Like :func:`status`, read from source text without importing Letta (``ketta patches``).

    Declarations and upstream fingerprints come from :mod:`ketta.core.patch_source`; whatever it
    cannot settle from text (a fingerprint that differs, a computed target) is checked by
    importing, so a drift is never missed. Replacements are not loaded (``replacement=None``).
    """
    from ketta.core import patch_source

    rows: list[PatchStatus] = []
    for module_name in PATCH_MODULES:
        try:
            declared = patch_source.declared_patches(module_name)
        except patch_source.NotStatic:
            declared = None
        if declared is None:
            module = importlib.import_module(module_name)
            rows += [PatchStatus(p, module_name, enabled(p, settings), patching.is_applied(p), patching.drift(p)) for p in module.PATCHES]
            continue
        for found in declared:
            patch = Patch(target=found.target, replacement=None, fingerprint=found.fingerprint, setting=found.setting,
                          why=found.why, mode=found.mode, kind=found.kind, upstream=found.upstream, requires=found.requires)
            try:
                problem = patch_source.drift(found)
            except patch_source.NotStatic:
                problem = patching.drift(patch)  # imports the target: the slow, certain answer
            rows.append(PatchStatus(patch, module_name, enabled(patch, settings), patching.is_applied(patch), problem))
    return rows


@dataclass(frozen=True)
class HookStatus:
    hook: Hook
    enabled: bool
    problem: str | None


def declared_hooks() -> list[Hook]:
    """The declared hooks (:mod:`.hooks`): environment edits, run-time wrappers, app-level changes, subclasses."""
    from ketta.letta_modifications.hooks import HOOKS

    return list(HOOKS)


def hook_enabled(hook: Hook, settings: KettaSettings) -> bool:
    return not hook.setting or bool(getattr(settings, hook.setting))


def hook_status(settings: KettaSettings, from_source: bool = False) -> list[HookStatus]:
    """Each hook, whether its switch is on, and whether the Letta code it relies on drifted
    (``from_source``: read as text like ``ketta patches``, importing only what text cannot settle)."""
    from ketta.core import patch_source

    rows = []
    for hook in declared_hooks():
        problem = None
        if hook.upstream and from_source:
            declared = patch_source.Declared(target=hook.upstream, fingerprint=hook.fingerprint, setting=hook.setting, why=hook.why)
            try:
                problem = patch_source.drift(declared)
            except patch_source.NotStatic:
                problem = patching.hook_drift(hook)
        elif hook.upstream:
            problem = patching.hook_drift(hook)
        rows.append(HookStatus(hook, hook_enabled(hook, settings), problem))
    return rows


def check_hooks(settings: KettaSettings) -> None:
    """Refuse the start when an enabled hook's upstream code drifted: a hook (a subclass, a wrapper)
    cannot be skipped alone, so its setting must be turned off to run Letta's own code."""
    for row in hook_status(settings):
        if row.problem and row.enabled:
            raise PatchDriftError(
                f"Hook {row.hook.name} ({row.hook.installed_by}): {row.problem}. Run 'ketta patches verify' and review it "
                f"against the installed Letta, or set KETTA_{row.hook.setting.upper()}=false to start without it."
            )


def verify() -> list[PatchStatus]:
    """Every declared patch whose target is missing or whose upstream source changed."""
    return [s for s in status(KettaSettings(allow_patch_drift=True)) if s.problem]


def apply_all(settings: KettaSettings) -> list[Patch]:
    """Apply every enabled patch, module by module. A drifted patch is never applied blind: the
    start is refused, or with KETTA_ALLOW_PATCH_DRIFT=true that patch is skipped (Letta's own code
    runs for its target) with one warning line naming it. Hooks are checked after the patches:
    checking them imports Letta, which must not happen before the enum patches (pydantic freezes
    an enum's members into every schema Letta builds at import)."""
    if settings.patch_fingerprint_cache:
        patching.use_fingerprint_cache(settings.home_dir / FINGERPRINT_CACHE_FILE)
    try:
        return _apply_all(settings)
    finally:
        patching.save_fingerprint_cache()
        patching.stop_fingerprint_cache()


# The start's drift check: fingerprints of unchanged upstream sources (ketta.core.patching).
FINGERPRINT_CACHE_FILE = "patch_fingerprints.json"

# Modules stock Letta imports only when a request needs them (an OpenAI call builds its client's
# resources; the lifespan imports nltk to download data). Their patches are applied at their first
# import instead of importing them at start (~1 s of CPU), drift checked from the source text.
APPLIED_ON_IMPORT: tuple[str, ...] = ("openai.resources", "nltk")


def _applied_on_import(patch: Patch) -> bool:
    name = patch.module_name
    return patch.mode != "exception_handler" and any(name == p or name.startswith(p + ".") for p in APPLIED_ON_IMPORT)


def _drift_from_source(patch: Patch) -> str | None:
    """The drift check without importing the target's module; imports it when the text cannot tell."""
    from ketta.core import patch_source

    declared = patch_source.Declared(target=patch.target, fingerprint=patch.fingerprint, setting=patch.setting,
                                     why=patch.why, mode=patch.mode, kind=patch.kind, upstream=patch.upstream,
                                     requires=patch.requires)
    try:
        return patch_source.drift(declared)
    except patch_source.NotStatic:
        return patching.drift(patch)


def _apply_all(settings: KettaSettings) -> list[Patch]:
    applied: list[Patch] = []
    for module_name in PATCH_MODULES:
        module = importlib.import_module(module_name)
        for patch in module.PATCHES:
            if not enabled(patch, settings):
                continue
            on_import = settings.patch_on_import and _applied_on_import(patch)
            problem = _drift_from_source(patch) if on_import else patching.drift(patch)
            if problem and not settings.allow_patch_drift:
                raise PatchDriftError(
                    f"Patch {patch.target} ({module_name}): {problem}. Run 'ketta patches verify' and review the "
                    "patch against the installed Letta, or set KETTA_ALLOW_PATCH_DRIFT=true to start with the drifted "
                    "patches skipped (Letta's own code runs for them)."
                )
            if problem:
                log.warning("Patch %s (%s) SKIPPED: %s; Letta's own code runs for it (KETTA_ALLOW_PATCH_DRIFT=true, "
                            "setting %s). Review it with 'ketta patches verify'.", patch.target, module_name, problem,
                            patch.setting)
                skipped.append(patch)
                continue
            if on_import:
                patching.apply_on_import(patch)  # now, or at the module's first import
                applied.append(patch)
            elif patching.apply(patch):
                applied.append(patch)
        finish = getattr(module, "after_apply", None)
        if finish is not None:
            finish()
    check_hooks(settings)
    return applied


def revert_all() -> None:
    """Undo every applied patch, last first (tests; stock behaviour)."""
    for _, patch in reversed(list(iter_patches())):
        patching.revert(patch)


UPSTREAM_TESTS_FILE = "upstream_tests.json"


def upstream_tests() -> dict[str, list[str]]:
    """target -> Letta's own tests (sdist ``tests/`` node ids) that call that patch's code.

    Recorded by ``tests/upstream/run.py --record``; a reviewer of a cherry-picked Letta fix to a
    patched target reruns these. Empty if never recorded.
    """
    from importlib import resources

    try:
        text = resources.files(__name__).joinpath(UPSTREAM_TESTS_FILE).read_text()
    except FileNotFoundError:
        return {}
    return dict(json.loads(text).get("patches", {}))
