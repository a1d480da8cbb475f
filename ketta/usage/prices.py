"""What a call cost, in US dollars: the operator's price for that provider and model, else the
maintained catalog of the ``genai-prices`` package, else unknown (NULL, never 0).

The catalog (pydantic's genai-prices, bundled data; its auto-update that downloads newer prices
is never started: Ketta sends nothing out at run time) knows OpenAI, Anthropic and Moonshot/Kimi
models among many. A provider is matched to the catalog by its API URL (``api.openai.com``,
``api.moonshot.ai``/``.cn``, ``api.anthropic.com``, ...); a provider without a base_url by its
type. A custom endpoint (a self-hosted vLLM or Ollama, a proxy) matches nothing in the catalog,
so a model of the same name there is not priced as OpenAI's: its calls are counted with cost
unknown until the operator sets a price (``PUT /v1/ketta/prices``, table ``ketta_usage_prices``,
applied in the ledger's INSERT itself, see :mod:`ketta.usage.ledger`).
"""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from typing import Any

from ketta.usage.tokens import Tokens

log = logging.getLogger("ketta.usage")

# Ketta/Letta provider type -> genai-prices provider id, used when the provider has no base_url.
CATALOG_PROVIDER = {
    "openai": "openai",
    "anthropic": "anthropic",
    "kimi": "moonshotai",
    "deepseek": "deepseek",
    "groq": "groq",
    "google_ai": "google",
    "xai": "x-ai",
    "mistral": "mistral",
    "together": "together",
}

_cache: dict[tuple[str | None, str | None, str], bool] = {}  # (type, base_url, model) -> known to the catalog
_lock = threading.Lock()


def warm() -> None:
    """Import the catalog (about 0.4 s) off the first call's path."""
    threading.Thread(target=_import, name="ketta-usage-prices", daemon=True).start()


def _import() -> Any:
    import genai_prices

    return genai_prices


def catalog_cost(provider_type: str | None, base_url: str | None, model: str | None, tokens: Tokens) -> Decimal | None:
    """The catalog's price of these tokens, or None when the provider/model is not in it or the
    provider reported no usage."""
    if not model or not tokens.reported:
        return None
    key = (provider_type, base_url or None, model)
    with _lock:
        if _cache.get(key) is False:
            return None
    genai_prices = _import()
    where: dict[str, str] = {}
    if base_url:
        where["provider_api_url"] = base_url
    elif provider_type in CATALOG_PROVIDER:
        where["provider_id"] = CATALOG_PROVIDER[provider_type]
    else:
        with _lock:
            _cache[key] = False
        return None
    usage = genai_prices.Usage(
        input_tokens=tokens.prompt or 0,
        cache_read_tokens=tokens.cached_input or 0,
        cache_write_tokens=tokens.cache_write or 0,
        output_tokens=tokens.completion or 0,
    )
    try:
        price = genai_prices.calc_price(usage, model, **where)
    except LookupError:
        with _lock:
            _cache[key] = False
        return None
    except Exception as exc:  # noqa: BLE001 - a price is never worth failing a call
        log.warning("No catalog price for %s (%s): %s", model, provider_type, exc)
        return None
    with _lock:
        _cache[key] = True
    return Decimal(price.total_price)
