"""What a caller is told when an LLM provider refuses a call: the provider's own words.

Letta 0.16.8 answers every rate-limit error with one fixed sentence ("Rate limit exceeded for LLM
model provider. Please wait before making another request.") and hides the provider's text in
``detail``. Providers answer 429 for more than request rates (Zhipu's "Insufficient balance or no
resource package. Please recharge.", quota and overload kinds), and waiting does not help with
those; the caller must see what the provider said (letta-ai/letta#3304).
"""

from __future__ import annotations

from typing import Any

RATE_LIMIT_PREFIX = "Rate limited by the LLM provider"


def provider_text(details: Any) -> str | None:
    """The provider's own error text from a Letta error's ``details`` (the API's error body), if any."""
    if not isinstance(details, dict):
        return None
    for candidate in (details, details.get("error")):
        if isinstance(candidate, dict):
            message = candidate.get("message")
            if isinstance(message, str) and message.strip():
                return message.strip()
    return None


def rate_limit_message(exc: Any) -> str:
    """The message for a rate-limit error: the provider's text when its body gave one, else the
    error's own message (which names the provider and carries the status line)."""
    text = provider_text(getattr(exc, "details", None))
    if text:
        return f"{RATE_LIMIT_PREFIX}: {text}"
    return str(getattr(exc, "message", "") or exc)
