"""The machinery behind Ketta's declared monkey patches.

A :class:`Patch` names its target as ``"module:Attr.attr"``, carries the replacement,
the setting that turns it on, and a fingerprint (sha256 of the upstream source it was
written against). Applying is explicit, ordered and idempotent; originals are kept so a
patch can call through to them and so everything can be undone (tests, ``stock`` mode).

A patch is of one of two kinds: a ``feature`` (what Ketta does differently on purpose) or a
``fix`` (a bug of Letta 0.16.8 that upstream will never release a fix for: no Letta server
release comes after 0.16.8); a fix names the upstream report or pull request it answers.

Mode ``exception_handler`` reaches what an attribute swap cannot: an exception handler Letta
defines as a closure inside its app factory. The target is the closure's qualified name
(``letta.server.rest_api.app:create_application.<locals>.llm_rate_limit_error_handler``), the
fingerprint covers the factory's source (read as text: importing Letta's app module builds the
app), and :func:`install_exception_handlers` swaps the handler on the built app, found by that
name, whatever exception type Letta registered it for.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MISSING = object()

KINDS = ("feature", "fix")
UPSTREAM_REFERENCE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+#[0-9]+")
LOCALS = ".<locals>."


@dataclass(frozen=True)
class Patch:
    """One replaced attribute of an upstream module or class."""

    target: str
    replacement: Any
    fingerprint: str
    setting: str
    why: str
    # "replace" swaps an existing attribute; "add" creates one upstream lacks; "enum_member"
    # adds a member (value = replacement) to an Enum. For "add"/"enum_member" the fingerprint
    # covers the owner, so a Letta that grows the attribute itself is noticed.
    mode: str = "replace"
    # "feature": Ketta's own behaviour. "fix": a Letta bug fixed in Ketta; ``upstream`` names the
    # report or pull request it answers ("letta-ai/letta#3144"). Fixes are on by default
    # (KETTA_LETTA_FIXES, KETTA_SKIP_FIXES) and listed apart by ``ketta patches``.
    kind: str = "feature"
    upstream: str = ""
    # A target outside Letta (the openai/anthropic SDKs) names the distribution range it was written
    # for ("openai>=2.54,<3"), as OpenTelemetry's instrumentors do: another version is drift.
    requires: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.target}: kind must be one of {KINDS}, not {self.kind!r}")
        if self.kind == "fix" and not UPSTREAM_REFERENCE.fullmatch(self.upstream):
            raise ValueError(f"{self.target}: a fix names the upstream report it answers as 'owner/name#N', not {self.upstream!r}")
        if self.mode == "exception_handler" and LOCALS not in self.target:
            raise ValueError(f"{self.target}: an exception_handler target is 'module:factory.<locals>.handler'")

    @property
    def upstream_number(self) -> str:
        """The number of the upstream report ('3144'), or '' for a feature."""
        return self.upstream.rsplit("#", 1)[-1] if self.upstream else ""

    @property
    def factory_path(self) -> list[str]:
        """For an exception_handler: the attribute path of the factory that defines the handler."""
        return self.target.split(":", 1)[1].split(LOCALS, 1)[0].split(".")

    @property
    def module_name(self) -> str:
        return self.target.split(":", 1)[0]

    @property
    def attr_path(self) -> list[str]:
        return self.target.split(":", 1)[1].split(".")


HOOK_KINDS = ("environment", "wrapper", "app", "subclass")


@dataclass(frozen=True)
class Hook:
    """A change to Letta or its process that is not an attribute swap, declared so the registry is
    the whole map: an environment edit, a run-time wrapper of a Letta object, an app-level change
    (middleware, handlers, routes, logging), or a subclass overriding Letta's methods.

    ``installed_by`` is the Ketta function (or class) that makes the change; ``upstream`` the Letta
    code it relies on or overrides, with its ``fingerprint`` (as for a patch) where there is one,
    so a drifted hook is reported by ``ketta patches verify`` and refuses the start. ``setting`` is
    the switch ("" for always on).
    """

    name: str
    kind: str
    installed_by: str
    setting: str
    why: str
    upstream: str = ""
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.kind not in HOOK_KINDS:
            raise ValueError(f"{self.name}: kind must be one of {HOOK_KINDS}, not {self.kind!r}")
        if bool(self.upstream) != bool(self.fingerprint):
            raise ValueError(f"{self.name}: an upstream target and its fingerprint go together")

    def as_patch(self) -> "Patch":
        """The upstream code as a patch declaration, for the drift check."""
        return Patch(target=self.upstream, replacement=None, fingerprint=self.fingerprint, setting=self.setting or "unified_providers",
                     why=self.why)


def hook_drift(hook: Hook) -> str | None:
    """None if the hook's upstream code is as written against (or it has none), else what changed."""
    return drift(hook.as_patch()) if hook.upstream else None


class PatchTargetMissing(LookupError):
    pass


def resolve_owner(patch: Patch) -> tuple[Any, str]:
    """Return (object holding the attribute, attribute name) for a target."""
    owner: Any = importlib.import_module(patch.module_name)
    *parents, name = patch.attr_path
    for part in parents:
        owner = getattr(owner, part, _MISSING)
        if owner is _MISSING:
            raise PatchTargetMissing(f"{patch.target}: '{part}' not found")
    return owner, name


def source_fingerprint(obj: Any) -> str:
    """sha256 (first 16 hex) of an object's source, dedented; a value's repr if it has none.

    With a fingerprint cache in use (:func:`use_fingerprint_cache`, the start's drift check), an
    object whose source file is unchanged since it was last read (same path, size and mtime) gets
    the fingerprint computed then: reading a class's source parses its whole file, ~0.8 s of CPU
    per start for Letta's patched targets.
    """
    obj = inspect.unwrap(obj)
    key = _cache_key(obj) if _fingerprint_cache is not None else None
    if key is not None and key in _fingerprint_cache:
        return _fingerprint_cache[key]
    try:
        text = textwrap.dedent(inspect.getsource(obj))
    except (TypeError, OSError):
        text = repr(obj)
    found = hashlib.sha256(text.encode()).hexdigest()[:16]
    if key is not None:
        _fingerprint_cache[key] = found
        _fingerprint_cache_dirty.append(key)
    return found


# The start's fingerprint cache: key (see _cache_key) -> fingerprint; None when not in use (the
# default, and always for `ketta patches verify`, which reads every source afresh).
_fingerprint_cache: dict[str, str] | None = None
_fingerprint_cache_dirty: list[str] = []
_fingerprint_cache_path: Path | None = None
_CACHE_FORMAT = 1


def _cache_key(obj: Any) -> str | None:
    """What an object's source depends on: its file (path, size, mtime in ns), the name getsource
    looks up in it and, for code, the first line. None (no caching) when any of it is unknown."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)):
        return None  # modules, properties' values, constants: cheap or read by repr
    try:
        path = inspect.getsourcefile(obj)
        stat = os.stat(path) if path else None
    except (TypeError, OSError):
        return None
    if stat is None:
        return None
    code = getattr(obj, "__code__", None)
    first_line = code.co_firstlineno if code is not None else ""
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{getattr(obj, '__module__', '')}:{obj.__qualname__}|{first_line}"


def use_fingerprint_cache(path: Path) -> None:
    """Read the fingerprints cached in ``path`` (a missing or unreadable file is an empty cache)."""
    global _fingerprint_cache, _fingerprint_cache_path
    try:
        stored = json.loads(path.read_text())
        cache = dict(stored["fingerprints"]) if stored.get("format") == _CACHE_FORMAT else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        cache = {}
    _fingerprint_cache, _fingerprint_cache_path = cache, path
    _fingerprint_cache_dirty.clear()


def save_fingerprint_cache() -> None:
    """Write the cache back if it learned anything (best effort: a read-only home only costs time),
    keeping only entries whose file is still the same, so it does not grow across upgrades."""
    if _fingerprint_cache is None or _fingerprint_cache_path is None or not _fingerprint_cache_dirty:
        return
    kept = {}
    for key, value in _fingerprint_cache.items():
        path, size, mtime = key.split("|")[:3]
        try:
            stat = os.stat(path)
        except OSError:
            continue
        if str(stat.st_size) == size and str(stat.st_mtime_ns) == mtime:
            kept[key] = value
    temporary = _fingerprint_cache_path.with_name(f".{_fingerprint_cache_path.name}.{os.getpid()}")
    try:
        temporary.write_text(json.dumps({"format": _CACHE_FORMAT, "fingerprints": kept}))
        os.replace(temporary, _fingerprint_cache_path)
    except OSError:
        temporary.unlink(missing_ok=True)
    _fingerprint_cache_dirty.clear()


def stop_fingerprint_cache() -> None:
    global _fingerprint_cache, _fingerprint_cache_path
    _fingerprint_cache, _fingerprint_cache_path = None, None
    _fingerprint_cache_dirty.clear()


def upstream_object(patch: Patch) -> Any:
    """The upstream object the fingerprint covers (the original even when patched)."""
    owner, name = resolve_owner(patch)
    if patch.mode in ("add", "enum_member"):
        return owner
    original = _originals.get(patch.target, _MISSING)
    if original is not _MISSING:
        return original
    value = inspect.getattr_static(owner, name, _MISSING)
    if value is _MISSING:
        raise PatchTargetMissing(f"{patch.target}: '{name}' not found")
    return value


def current_fingerprint(patch: Patch) -> str:
    if patch.mode == "exception_handler":
        # From the installed file's text: importing the factory's module may build the app.
        from ketta.core import patch_source

        return patch_source.fingerprint(patch_source.Declared(target=patch.target, fingerprint="", setting="", why="",
                                                              mode=patch.mode))
    obj = upstream_object(patch)
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    return source_fingerprint(obj)


def requirement_problem(requires: str) -> str | None:
    """None if the installed distribution satisfies ``requires`` ("openai>=2.54,<3"), else what differs."""
    if not requires:
        return None
    from importlib import metadata

    from packaging.requirements import Requirement

    wanted = Requirement(requires)
    try:
        installed = metadata.version(wanted.name)
    except metadata.PackageNotFoundError:
        return f"written for {requires}, {wanted.name} is not installed"
    if not wanted.specifier.contains(installed, prereleases=True):
        return f"written for {requires}, installed {wanted.name} {installed}"
    return None


def drift(patch: Patch) -> str | None:
    """None if the installed upstream still matches the patch (and its declared version range), else what changed."""
    problem = requirement_problem(patch.requires)
    if problem:
        return problem
    try:
        found = current_fingerprint(patch)
    except (PatchTargetMissing, ImportError) as exc:
        return f"target missing: {exc}"
    except LookupError as exc:  # patch_source.NotStatic: the factory or its handler is gone
        return f"target missing: {exc}"
    if found != patch.fingerprint:
        return f"upstream source changed (expected {patch.fingerprint}, found {found})"
    if patch.mode in ("add", "enum_member") and patch.target not in _originals:
        owner, name = resolve_owner(patch)
        own = vars(owner) if isinstance(owner, type) else {n: None for n in dir(owner)}
        if name in own:
            return "attribute now exists upstream"
    return None


# target -> original attribute (raw, as found in the owner's __dict__ for classes)
_originals: dict[str, Any] = {}
_ABSENT = object()  # recorded for patches that add what upstream lacks


def is_applied(patch: Patch) -> bool:
    return patch.target in _originals


def original(target: str) -> Any:
    """The upstream attribute a patch replaced, for patches that call through."""
    raw = _originals[target]
    return raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw


def apply(patch: Patch) -> bool:
    """Apply one patch; returns False if it was already applied (idempotent)."""
    if patch.target in _originals:
        return False
    if patch.mode == "exception_handler":
        _originals[patch.target] = _ABSENT
        register_exception_handler(patch)  # installed on the built app by install_exception_handlers
        return True
    owner, name = resolve_owner(patch)
    if patch.mode == "enum_member":
        _add_enum_member(owner, name, patch.replacement)
        _originals[patch.target] = _ABSENT
    else:
        raw = owner.__dict__.get(name, _ABSENT) if isinstance(owner, type) else getattr(owner, name, _ABSENT)
        if raw is _ABSENT and patch.mode == "replace":
            raise PatchTargetMissing(f"{patch.target}: '{name}' not found")
        _originals[patch.target] = raw
        setattr(owner, name, patch.replacement)
    return True


# module name -> patches waiting for that module's first import (apply_on_import)
_pending_on_import: dict[str, list[Patch]] = {}


def apply_on_import(patch: Patch) -> bool:
    """Apply ``patch`` now if its target's module is imported (returns True), else right after that
    module's first import, before the importer or anything else sees the module (returns False).

    For targets in modules stock Letta imports only when a request needs them (the OpenAI SDK's
    resources, nltk): the start does not import them just to patch them.
    """
    name = patch.module_name
    if name in sys.modules:
        return apply(patch)
    if not any(isinstance(finder, _ApplyOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ApplyOnImport())
    waiting = _pending_on_import.setdefault(name, [])
    if patch not in waiting:
        waiting.append(patch)
    return False


def pending_on_import(patch: Patch) -> bool:
    return patch in _pending_on_import.get(patch.module_name, [])


class _ApplyOnImport:
    """Meta path finder: the spec of a module with patches waiting gets its loader's exec_module
    wrapped, so the patches are applied as soon as the module's code has run."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _pending_on_import:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader, fullname)
        return spec


class _PatchingLoader:
    """The module's own loader; after it runs the module, the patches waiting for it are applied."""

    def __init__(self, loader: Any, name: str):
        self._loader = loader
        self._name = name

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # as if imported plainly
        self._loader.exec_module(module)
        for patch in _pending_on_import.pop(self._name, []):
            apply(patch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def revert(patch: Patch) -> bool:
    """Undo one patch (or cancel it while it waits for its module's import); returns False if it was not applied."""
    waiting = _pending_on_import.get(patch.module_name, [])
    if patch in waiting:
        waiting.remove(patch)
        if not waiting:
            _pending_on_import.pop(patch.module_name, None)
    raw = _originals.pop(patch.target, _MISSING)
    if raw is _MISSING:
        return False
    if patch.mode == "exception_handler":
        _handler_patches.pop(patch.target, None)
        for app, key, handler in _installed_handlers.pop(patch.target, []):
            app.exception_handlers[key] = handler
        return True
    owner, name = resolve_owner(patch)
    if patch.mode == "enum_member":
        _remove_enum_member(owner, name)
    elif raw is _ABSENT:
        delattr(owner, name)
    else:
        setattr(owner, name, raw)
    return True


# exception_handler patches applied, by target; and where each was installed: (app, key, original)
_handler_patches: dict[str, Patch] = {}
_installed_handlers: dict[str, list[tuple[Any, Any, Any]]] = {}


def original_handler(target: str, app: Any) -> Any:
    """The handler an exception_handler patch replaced on ``app``, for replacements that call through."""
    for installed_app, _key, handler in _installed_handlers.get(target, []):
        if installed_app is app:
            return handler
    raise PatchTargetMissing(f"{target}: not installed on this app")


def register_exception_handler(patch: Patch) -> None:
    """Remember an applied exception_handler patch for :func:`install_exception_handlers`."""
    _handler_patches[patch.target] = patch


def install_exception_handlers(app: Any) -> int:
    """Swap each applied exception_handler patch's closure on a built app; returns how many.

    The handler is found by its qualified name among ``app.exception_handlers``; one that is not
    there (Letta no longer registers it) is refused like any missing target.
    """
    installed = 0
    for target, patch in _handler_patches.items():
        module, qualname = target.split(":", 1)
        found = [(key, handler) for key, handler in app.exception_handlers.items()
                 if getattr(handler, "__qualname__", None) == qualname and getattr(handler, "__module__", None) == module]
        if not found:
            raise PatchTargetMissing(f"{target}: no exception handler of that name on the app")
        for key, handler in found:
            app.exception_handlers[key] = patch.replacement
            _installed_handlers.setdefault(target, []).append((app, key, handler))
            installed += 1
    return installed


def _add_enum_member(enum_cls: Any, name: str, value: str) -> None:
    """Add a member to a str-valued Enum. Must run before pydantic builds schemas using it."""
    member = str.__new__(enum_cls, value) if issubclass(enum_cls, str) else object.__new__(enum_cls)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    member.__init__(value)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    type.__setattr__(enum_cls, name, member)


def _remove_enum_member(enum_cls: Any, name: str) -> None:
    member = enum_cls._member_map_.pop(name)
    enum_cls._value2member_map_.pop(member._value_, None)
    enum_cls._member_names_.remove(name)
    type.__delattr__(enum_cls, name)
