"""Results of pure functions computed once per process and handed out as copies.

For upstream functions that rebuild the same value on every call (Letta regenerates each built-in
tool's JSON schema from its docstring every time a ``Tool`` is validated: several per message).
Callers get a deep copy, so one that changes its value cannot change anyone else's.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable


def computed_once(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` computed once per (hashable) arguments; every call returns a deep copy of the result.

    An exception is not cached: the next call computes again (and raises again).
    """
    cached = functools.lru_cache(maxsize=512)(func)

    @functools.wraps(func)
    def copy_of_result(*args: Any, **kwargs: Any) -> Any:
        return copy.deepcopy(cached(*args, **kwargs))

    copy_of_result.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return copy_of_result
