"""The machinery behind Ketta's declared monkey patches.

A :class:`Patch` names its target as ``"module:Attr.attr"``, carries the replacement,
the setting that turns it on, and a fingerprint (sha256 of the upstream source it was
written against). Applying is explicit, ordered and idempotent; originals are kept so a
patch can call through to them and so everything can be undone (tests, ``stock`` mode).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any

_MISSING = object()


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

    @property
    def module_name(self) -> str:
        return self.target.split(":", 1)[0]

    @property
    def attr_path(self) -> list[str]:
        return self.target.split(":", 1)[1].split(".")


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
    """sha256 (first 16 hex) of an object's source, dedented; a value's repr if it has none."""
    try:
        text = textwrap.dedent(inspect.getsource(inspect.unwrap(obj)))
    except (TypeError, OSError):
        text = repr(obj)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    obj = upstream_object(patch)
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    return source_fingerprint(obj)


def drift(patch: Patch) -> str | None:
    """None if the installed upstream still matches the patch, else what changed."""
    try:
        found = current_fingerprint(patch)
    except (PatchTargetMissing, ImportError) as exc:
        return f"target missing: {exc}"
    if found != patch.fingerprint:
        return f"upstream source changed (expected {patch.fingerprint}, found {found})"
    if patch.mode != "replace" and patch.target not in _originals:
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


def revert(patch: Patch) -> bool:
    """Undo one patch; returns False if it was not applied."""
    raw = _originals.pop(patch.target, _MISSING)
    if raw is _MISSING:
        return False
    owner, name = resolve_owner(patch)
    if patch.mode == "enum_member":
        _remove_enum_member(owner, name)
    elif raw is _ABSENT:
        delattr(owner, name)
    else:
        setattr(owner, name, raw)
    return True


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
