"""Tokens of one LLM call, read from the provider's own usage report (blocking or streamed).

One shape for every wire format, with OpenAI's meaning: ``prompt`` is every input token
(cached reads and cache writes included), ``completion`` every output token (reasoning
included); ``cached_input``, ``cache_write`` and ``reasoning`` are the parts of those that
providers price apart, kept apart here. A field the provider did not report is None (unknown),
never 0: a sum over calls then says what it does not know.

Wire formats read:

- OpenAI Chat Completions (and OpenAI-compatible servers: Kimi/Moonshot, Ollama's /v1, vLLM,
  DeepSeek): ``usage.prompt_tokens``/``completion_tokens``, ``prompt_tokens_details.cached_tokens``,
  ``completion_tokens_details.reasoning_tokens``; Moonshot's top-level ``usage.cached_tokens``;
  DeepSeek's ``prompt_cache_hit_tokens``. Streamed: the last chunk's ``usage`` (asked for with
  ``stream_options.include_usage``, which Letta's OpenAI client sends), or Moonshot's usage
  inside the final choice.
- OpenAI Responses: ``input_tokens`` (cached included) / ``output_tokens`` and their details.
- Anthropic Messages (and Anthropic-compatible APIs): ``input_tokens`` counts only uncached
  input, so prompt = input + cache_read_input_tokens + cache_creation_input_tokens. Streamed:
  ``message_start`` carries the input side, each ``message_delta`` the output count so far.
- Ollama's native API: ``prompt_eval_count`` / ``eval_count``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Tokens:
    prompt: int | None = None
    completion: int | None = None
    cached_input: int | None = None
    cache_write: int | None = None
    reasoning: int | None = None

    @property
    def reported(self) -> bool:
        return self.prompt is not None or self.completion is not None

    @property
    def total(self) -> int | None:
        if not self.reported:
            return None
        return (self.prompt or 0) + (self.completion or 0)


def _get(obj: Any, name: str) -> Any:
    """A field of a dict or of an SDK object (pydantic, incl. its extra fields)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    value = getattr(obj, name, None)
    if value is None:
        extra = getattr(obj, "model_extra", None)
        if isinstance(extra, dict):
            value = extra.get(name)
    return value


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    return None


def _sum(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def from_usage(usage: Any) -> Tokens:
    """Tokens from a usage object of any of the formats above (None: nothing reported)."""
    if usage is None:
        return Tokens()
    if _get(usage, "prompt_eval_count") is not None or _get(usage, "eval_count") is not None:  # Ollama native
        return Tokens(prompt=_int(_get(usage, "prompt_eval_count")), completion=_int(_get(usage, "eval_count")))
    if _get(usage, "prompt_tokens") is not None or _get(usage, "completion_tokens") is not None:  # Chat Completions
        prompt_details = _get(usage, "prompt_tokens_details")
        completion_details = _get(usage, "completion_tokens_details")
        cached = _int(_get(prompt_details, "cached_tokens"))
        if cached is None:
            cached = _int(_get(usage, "cached_tokens"))  # Moonshot
        if cached is None:
            cached = _int(_get(usage, "prompt_cache_hit_tokens"))  # DeepSeek
        return Tokens(
            prompt=_int(_get(usage, "prompt_tokens")),
            completion=_int(_get(usage, "completion_tokens")),
            cached_input=cached,
            cache_write=_int(_get(prompt_details, "cache_write_tokens")) or _int(_get(prompt_details, "cache_creation_tokens")),
            reasoning=_int(_get(completion_details, "reasoning_tokens")),
        )
    input_details = _get(usage, "input_tokens_details")
    if input_details is not None or _get(usage, "output_tokens_details") is not None:  # Responses API: input includes cached
        return Tokens(
            prompt=_int(_get(usage, "input_tokens")),
            completion=_int(_get(usage, "output_tokens")),
            cached_input=_int(_get(input_details, "cached_tokens")),
            reasoning=_int(_get(_get(usage, "output_tokens_details"), "reasoning_tokens")),
        )
    if _get(usage, "input_tokens") is not None or _get(usage, "output_tokens") is not None:  # Anthropic: input excludes cache
        cache_read = _int(_get(usage, "cache_read_input_tokens"))
        cache_write = _int(_get(usage, "cache_creation_input_tokens"))
        return Tokens(
            prompt=_sum(_int(_get(usage, "input_tokens")), cache_read, cache_write),
            completion=_int(_get(usage, "output_tokens")),
            cached_input=cache_read,
            cache_write=cache_write,
        )
    return Tokens()


def from_response(response: Any) -> Tokens:
    """Tokens of a blocking answer (the dict Letta's clients return, or an SDK object)."""
    usage = _get(response, "usage")
    if usage is None and (_get(response, "prompt_eval_count") is not None or _get(response, "eval_count") is not None):
        usage = response  # Ollama native: the counts sit at the top level
    return from_usage(usage)


class StreamTally:
    """Reads the usage a stream reports as its items pass (the items are not changed)."""

    def __init__(self) -> None:
        self.tokens = Tokens()
        self._anthropic_input: Tokens | None = None

    def see(self, item: Any) -> None:
        kind = _get(item, "type")
        if kind == "message_start":  # Anthropic: the input side (and a first output count)
            usage = _get(_get(item, "message"), "usage")
            if usage is not None:
                self._anthropic_input = from_usage(usage)
                self.tokens = Tokens(**vars(self._anthropic_input))
            return
        if kind == "message_delta":  # Anthropic: output tokens so far (cumulative); may restate input
            usage = _get(item, "usage")
            if usage is None:
                return
            base = self._anthropic_input or Tokens()
            if _get(usage, "input_tokens") is not None or _get(usage, "cache_read_input_tokens") is not None:
                restated = from_usage(usage)
                base = Tokens(prompt=restated.prompt if restated.prompt is not None else base.prompt,
                              cached_input=restated.cached_input if restated.cached_input is not None else base.cached_input,
                              cache_write=restated.cache_write if restated.cache_write is not None else base.cache_write)
            output = _int(_get(usage, "output_tokens"))
            self.tokens = Tokens(prompt=base.prompt, completion=output if output is not None else base.completion,
                                 cached_input=base.cached_input, cache_write=base.cache_write)
            return
        if kind in ("response.completed", "response.incomplete"):  # Responses API stream
            self._take(from_usage(_get(_get(item, "response"), "usage")))
            return
        usage = _get(item, "usage")
        if usage is None:
            choices = _get(item, "choices")
            if isinstance(choices, list):
                for choice in choices:  # Moonshot puts the usage in the final choice
                    usage = _get(choice, "usage") or usage
        if usage is not None:
            self._take(from_usage(usage))
        elif _get(item, "done") is True:  # Ollama native stream
            self._take(from_response(item))

    def _take(self, tokens: Tokens) -> None:
        if tokens.reported:
            self.tokens = tokens
