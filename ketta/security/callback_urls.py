"""A run's or batch job's ``callback_url`` passes the URL guard before Letta POSTs to it.

Letta 0.16.8 POSTs a run's status to the ``callback_url`` of ``POST /v1/agents/{id}/messages/async``
(and of ``POST /v1/messages/batches``) when it ends, to any address, and shows the answer's
status code or the connection error on ``GET /v1/runs/{id}``: a user token could make the server
send requests into its own network and read whether something answers (server-side request
forgery). Here the URL is checked like a provider's ``base_url`` (:mod:`ketta.security.url_guard`,
``KETTA_ALLOW_PRIVATE_HOSTS``); a refused one is not called and the run records why
(``callback_error``). Redirects are not followed (httpx's default, which Letta keeps).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Optional

log = logging.getLogger("ketta.callbacks")


async def refusal(url: Any) -> Optional[str]:
    """Why ``url`` may not be called (None: it may)."""
    from ketta.core.settings import get_settings
    from ketta.security.url_guard import UnsafeURL, check_url_async

    if not get_settings().url_guard:
        return None
    try:
        await check_url_async(url, "callback_url")
    except UnsafeURL as exc:
        return str(exc.detail)
    return None


def refused_result(reason: str) -> dict[str, Any]:
    """What Letta stores for a callback that was not sent (its own result keys)."""
    log.warning("A callback was not sent: %s", reason)
    return {"callback_sent_at": datetime.now(timezone.utc).replace(tzinfo=None), "callback_error": f"Not sent: {reason}"}
