"""The start's heap: Letta imported with the cyclic garbage collector paused, then frozen.

Importing Letta builds ~700,000 long-lived objects (modules, classes, pydantic schemas, FastAPI
routes). While they are being built the collector runs again and again over the growing heap and
finds almost nothing (~6,000 objects of cyclic garbage in all): ~1 s of a start's ~10 s of CPU.
Frozen afterwards (``gc.freeze``), they are also left out of every later full collection, which
then scans only what serving created (a full collection of the whole heap took ~0.5 s). The
imports' few thousand garbage objects are kept (frozen) rather than paying a full collection
to find them. KETTA_FREEZE_HEAP_AT_START=false leaves the collector as Python sets it.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def collector_paused_then_frozen(enabled: bool) -> Iterator[None]:
    """Run the block with the collector paused; what exists when it ends is frozen, then the
    collector runs again (if it was on). The freeze happens even if the block raises: a start
    that fails exits anyway."""
    if not enabled or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
