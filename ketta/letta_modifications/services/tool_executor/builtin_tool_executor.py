"""Patch of ``letta/services/tool_executor/builtin_tool_executor.py``: the built-in
``fetch_webpage`` tool fetches only what the URL guard allows.

Any user may attach Letta's built-in ``fetch_webpage`` to an agent, and the LLM chooses its URL:
with a provider of the user's own (a server they run), the user chooses it. Stock Letta fetches
it in the server process with ``trafilatura``/``requests``, following redirects to any address,
and returns the page as the tool's result into the agent's history: a user could read the
server's loopback (the embedded database's neighbours, Ketta's own API with whatever it trusts
locally), its private network and cloud metadata (SSRF, as CVE-2026-4964 for images). Here the
page is fetched like an image of a message (:func:`ketta.security.image_fetch.fetch_checked`: every hop
checked, the connection guarded, ``KETTA_ALLOW_PRIVATE_HOSTS`` the only opening) and converted to
text locally. Exa's content API is not used: its key would be the operator's (``EXA_API_KEY``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ketta.security import image_fetch
from ketta.core.patching import Patch

TARGET = "letta.services.tool_executor.builtin_tool_executor:LettaBuiltinToolExecutor.fetch_webpage"
MAX_PAGE_BYTES = 5 * 1024 * 1024
TIMEOUT_S = 30.0


def _to_text(html: str) -> str:
    """The page as markdown (trafilatura), else readability's main part as text (html2text)."""
    from trafilatura import extract

    text = extract(html, output_format="markdown")
    if text:
        return text
    import html2text
    from readability import Document

    return html2text.html2text(Document(html).summary(html_partial=True))


async def fetch_webpage(self: Any, agent_state: Any, url: str) -> str:
    """The page at ``url`` as text; refused (an error naming the address and the setting) where
    the URL guard refuses a provider's base_url."""
    try:
        body, content_type = await image_fetch.fetch_checked(url, TIMEOUT_S, MAX_PAGE_BYTES, "Mozilla/5.0 (compatible; LettaBot/1.0)",
                                                             "the page")
    except image_fetch.ImageRefused as exc:
        raise ValueError(f"fetch_webpage refused {url!r}: {exc}") from None
    charset = "utf-8"
    if content_type and "charset=" in content_type:
        charset = content_type.split("charset=", 1)[1].split(";", 1)[0].strip() or "utf-8"
    html = body.decode(charset, errors="replace")
    return await asyncio.to_thread(_to_text, html)


PATCHES = [
    Patch(
        target=TARGET,
        replacement=fetch_webpage,
        fingerprint="3762bae292da95dd",
        setting="url_guard",
        why="The built-in fetch_webpage tool (its URL chosen by the LLM, i.e. by whoever runs the agent's provider) fetches only "
            "addresses the URL guard allows, each redirect hop checked, instead of any address from the server.",
    ),
]
