"""The OpenAI SDK's request-body transform, skipped where it cannot change the body.

Before every call the SDK walks the request body against its ``TypedDict`` parameter types
(``async_maybe_transform``) to rename aliased keys, format dates and files and dump pydantic
models. For a chat completion that walk found nothing to change in any body Letta builds
(plain JSON: strings, numbers, lists, dicts), yet it cost about a quarter of a message's
server CPU (profiled with ``bench/profile_messages.py``: 29 % of busy samples under
``OpenAIClient.request_async``, most in ``typing``'s introspection of the parameter types).

:func:`transform_is_identity` walks a parameter type once per process: when nothing in it
carries a ``PropertyInfo`` alias or format, the SDK's transform of plain JSON returns the same
values, minus the keys left unset (``omit``/``NOT_GIVEN``), which :func:`plain_body` drops the
same way: the JSON sent is byte for byte the same. Anything else (a date, a model, bytes, an unset
value deeper down, a type with an alias) goes through the SDK's own transform.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable

log = logging.getLogger("ketta.llm")

_JSON_SCALARS = (str, int, float, bool, type(None))


def is_plain_json(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is made only of dicts with string keys, lists or tuples and JSON scalars.

    A tuple is sent as a JSON array either way (Letta's tool schemas hold ``enum`` tuples): the
    SDK turns one into a list only under a typed field, and serialises the rest with ``json``."""
    if isinstance(value, _JSON_SCALARS):
        return True
    if depth > 64:
        return False
    if type(value) is list or type(value) is tuple:
        return all(is_plain_json(item, depth + 1) for item in value)
    if type(value) is dict:
        return all(type(key) is str and is_plain_json(item, depth + 1) for key, item in value.items())
    return False


@functools.lru_cache(maxsize=64)
def transform_is_identity(expected_type: Any) -> bool:
    """Whether the SDK's transform leaves plain JSON of this type as it is (no alias, no format
    anywhere in the type). An error while walking the type answers False: the SDK transforms."""
    try:
        return not _may_transform(expected_type, set())
    except Exception:  # noqa: BLE001 - an unexpected typing construct: let the SDK do its work
        log.debug("OpenAI SDK type %r not walked; its transform runs", expected_type, exc_info=True)
        return False


def _may_transform(tp: Any, seen: set[int]) -> bool:
    """True if some part of ``tp`` carries an alias or a format the SDK's transform applies."""
    import typing

    import typing_extensions
    from openai._utils._transform import PropertyInfo, get_type_hints

    if id(tp) in seen:
        return False
    seen.add(id(tp))
    metadata = getattr(tp, "__metadata__", None)
    if metadata is not None:  # Annotated[T, ...]
        if any(isinstance(m, PropertyInfo) and (m.alias or m.format) for m in metadata):
            return True
        return _may_transform(tp.__origin__, seen)
    if typing_extensions.is_typeddict(tp):
        return any(_may_transform(hint, seen) for hint in get_type_hints(tp, include_extras=True).values())
    if typing.get_origin(tp) in (typing.Literal, typing_extensions.Literal):
        return False
    if isinstance(tp, (str, typing.ForwardRef)):
        return True  # unresolved: cannot tell
    return any(_may_transform(arg, seen) for arg in typing.get_args(tp))


def plain_body(data: Any, expected_type: Any) -> dict[str, Any] | None:
    """The body the SDK's transform would produce, when it is certain without running it; else None."""
    from openai._utils._utils import is_given

    if type(data) is not dict or not transform_is_identity(expected_type):
        return None
    body = {key: value for key, value in data.items() if is_given(value)}
    if not is_plain_json(body):
        return None
    return body


async def transform_unless_identity(sdk_transform: Callable[[Any, Any], Awaitable[Any]], data: Any, expected_type: Any) -> Any:
    """What the SDK's ``async_maybe_transform(data, expected_type)`` returns: a plain body as is, anything else transformed."""
    body = plain_body(data, expected_type)
    if body is not None:
        return body
    return await sdk_transform(data, expected_type)
