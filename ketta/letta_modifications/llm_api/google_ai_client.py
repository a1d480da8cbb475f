"""Patches of ``letta/llm_api/google_ai_client.py``: Gemini model listing through Ketta's URL guard.

Both listing helpers make a plain ``httpx.AsyncClient`` when not given one; here they get a
guarded one (see :mod:`ketta.letta_modifications.llm_api.openai`).
"""

from __future__ import annotations

from typing import Any

from ketta.letta_modifications.llm_api.openai import call_with_guarded_client
from ketta.core.patching import Patch

LIST_TARGET = "letta.llm_api.google_ai_client:google_ai_get_model_list_async"
DETAILS_TARGET = "letta.llm_api.google_ai_client:google_ai_get_model_details_async"


async def google_ai_get_model_list_async(*args: Any, **kwargs: Any) -> Any:
    return await call_with_guarded_client(LIST_TARGET, *args, **kwargs)


async def google_ai_get_model_details_async(*args: Any, **kwargs: Any) -> Any:
    return await call_with_guarded_client(DETAILS_TARGET, *args, **kwargs)


WHY = "Gemini model listings connect only to addresses the URL guard allows."

PATCHES = [
    Patch(target=LIST_TARGET, replacement=google_ai_get_model_list_async, fingerprint="6fdabb17577f7113", setting="url_guard", why=WHY),
    Patch(target=DETAILS_TARGET, replacement=google_ai_get_model_details_async, fingerprint="875e390cfcd32025", setting="url_guard", why=WHY),
]
