"""``KimiClient``: Letta's OpenAI client with the adjustments Moonshot needs.

Kimi models are listed as ``openai`` endpoint models (see ``schemas/providers/kimi.py``), so
Letta builds their requests with its OpenAI client. Moonshot refuses some of what that client
sends; the request is adjusted just before it is sent, by provider *type*, never by host name:

- ``temperature`` clamped to [0, 1]; models that accept one value get it (kimi-k2.5/k2.6: 1.0
  with thinking, 0.6 without; kimi-k2.7-code and kimi-k3: 1.0).
- ``tool_choice="required"`` is not supported, and thinking models refuse a named tool choice:
  both become ``"auto"``. Letta's memgpt-style loop needs a tool call on every step, so when a
  forced call was relaxed and the model answers in plain text, the answer is turned into the
  ``send_message`` call it stands for (streaming and not).
- Thinking models must get every earlier assistant tool-call message back with its
  ``reasoning_content``; Letta keeps it as ``ReasoningContent`` in the message but its OpenAI
  conversion drops it when it is the only content part, so it is re-attached.
- Letta-internal message fields (reasoning signatures) are not sent.
- Streams are wrapped (:class:`MoonshotStream`): the model's ``reasoning_content`` is recorded
  for the memgpt-style stream adapter, which otherwise keeps only the inner thoughts (see
  ``adapters/letta_llm_stream_adapter.py``), and ``send_message`` arguments are re-cut so that
  adapter's parser shows the message whatever the token boundaries.
- Moonshot's 429 (rate limit, engine overloaded, quota) and content-filter errors become Letta
  errors the REST layer answers with a clear status and Moonshot's text.

:class:`OpenAICompatibleClient` is what the ``openai`` endpoint type gets: the same client,
applying the rules only when the LLM config's provider is a ``kimi`` provider in the database.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, List, Optional

import openai

from letta.errors import ErrorCode, LLMBadRequestError, LLMInsufficientCreditsError, LLMProviderOverloaded, LLMRateLimitError
from letta.llm_api.openai_client import OpenAIClient
from letta.log import get_logger
from letta.schemas.enums import AgentType, ProviderCategory
from letta.schemas.letta_message_content import ReasoningContent, TextContent
from letta.schemas.llm_config import LLMConfig
from letta.schemas.message import Message as PydanticMessage
from letta.schemas.openai.chat_completion_response import ChatCompletionResponse
from letta.settings import INNER_THOUGHTS_KWARG

from ketta.providers.kimi import KIMI_PROVIDER_TYPE, is_thinking_model
from ketta.llm.http import timeout_error
from ketta.llm.streams import StreamProxy
from ketta.providers.keys import provider_type_async

logger = get_logger("ketta.kimi")

SEND_MESSAGE_TOOL = "send_message"
SWITCHABLE_THINKING = ("kimi-k2.5", "kimi-k2.6")  # thinking on by default, off with thinking={"type": "disabled"}
INTERNAL_MESSAGE_FIELDS = ("reasoning_content_signature", "redacted_reasoning_content", "omitted_reasoning_content")


def fixed_temperature(model: str, thinking: bool) -> float | None:
    """The one temperature Moonshot accepts for ``model``, or None if any value in [0, 1] is fine."""
    name = model.lower()
    if name.startswith(("kimi-k2.7-code", "kimi-k3")):
        return 1.0
    if name.startswith(("kimi-k2.5", "kimi-k2.6")):
        return 1.0 if thinking else 0.6
    return None


def thinking_enabled(llm_config: LLMConfig) -> bool:
    """Whether the model will think: k2.5/k2.6 can be switched off, the others always think."""
    if llm_config.model.lower().startswith(SWITCHABLE_THINKING):
        return llm_config.enable_reasoner is not False
    return is_thinking_model(llm_config.model)


@dataclass
class BuildContext:
    """What ``build_request_data`` knew that the request dict no longer says."""

    agent_type: AgentType | None
    messages: list[PydanticMessage]


@dataclass
class MoonshotAdjustment:
    """What was changed in one request, for the reply handling."""

    relaxed_forced_call: bool = False  # a forced tool call became "auto"
    tool_names: list[str] = field(default_factory=list)
    send_message_parameters: set[str] = field(default_factory=set)


def _reasoning_by_tool_call_id(messages: list[PydanticMessage]) -> dict[str, str]:
    """tool call id -> the reasoning Letta stored with the assistant message that made the call."""
    found: dict[str, str] = {}
    for message in messages:
        if message.role != "assistant" or not message.tool_calls or not message.content:
            continue
        reasoning = "\n".join(part.reasoning for part in message.content if isinstance(part, ReasoningContent) and part.reasoning)
        if not reasoning:  # memgpt-style inner thoughts are the model's reasoning too
            reasoning = "\n".join(part.text for part in message.content if isinstance(part, TextContent) and part.text)
        if reasoning:
            for tool_call in message.tool_calls:
                found[tool_call.id] = reasoning
    return found


def adjust_chat_request(request_data: dict, llm_config: LLMConfig, context: BuildContext | None) -> MoonshotAdjustment:
    """Make a Chat Completions request (in place) one Moonshot accepts; see the module docstring."""
    adjustment = MoonshotAdjustment()
    model = str(request_data.get("model") or llm_config.model)
    thinking = thinking_enabled(llm_config)

    if model.lower().startswith(SWITCHABLE_THINKING) and not thinking:
        request_data.setdefault("extra_body", {})["thinking"] = {"type": "disabled"}

    fixed = fixed_temperature(model, thinking)
    if fixed is not None:
        request_data["temperature"] = fixed
    elif request_data.get("temperature") is not None:
        request_data["temperature"] = min(1.0, max(0.0, float(request_data["temperature"])))

    tools = request_data.get("tools") or []
    adjustment.tool_names = [tool["function"]["name"] for tool in tools if isinstance(tool, dict) and "function" in tool]
    for tool in tools:
        if isinstance(tool, dict) and tool.get("function", {}).get("name") == SEND_MESSAGE_TOOL:
            adjustment.send_message_parameters = set((tool["function"].get("parameters") or {}).get("properties", {}))
    choice = request_data.get("tool_choice")
    if choice == "required" or (isinstance(choice, dict) and thinking):
        request_data["tool_choice"] = "auto"
        adjustment.relaxed_forced_call = True

    messages = request_data.get("messages") or []
    reasoning = _reasoning_by_tool_call_id(context.messages) if context else {}
    for message in messages:
        if not isinstance(message, dict):
            continue
        for internal in INTERNAL_MESSAGE_FIELDS:
            message.pop(internal, None)
        if thinking and message.get("role") == "assistant" and message.get("tool_calls") and not message.get("reasoning_content"):
            ids = [call.get("id") for call in message["tool_calls"] if isinstance(call, dict)]
            message["reasoning_content"] = next((reasoning[i] for i in ids if i in reasoning), "") or "(reasoning not recorded)"
    return adjustment


def _send_message_argument_pieces(text: str, reasoning: str | None, parameters: set[str]) -> list[str]:
    """send_message arguments, cut where Letta's memgpt-style streaming parser needs the cuts (see
    :class:`_SendMessagePieces`): inner thoughts first, then the ``message`` key, then its value."""
    message = ['"message": ', json.dumps(text, ensure_ascii=False) + "}"]
    if INNER_THOUGHTS_KWARG not in parameters:
        return ["{" + message[0], message[1]]
    return ["{" + f"{json.dumps(INNER_THOUGHTS_KWARG)}: {json.dumps(reasoning or '', ensure_ascii=False)}, ", *message]


def _send_message_arguments(text: str, reasoning: str | None, parameters: set[str]) -> str:
    """Arguments of the send_message call a plain-text answer stands for."""
    return "".join(_send_message_argument_pieces(text, reasoning, parameters))


def _synthetic_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class MoonshotStream(StreamProxy):
    """Wraps a Moonshot Chat Completions stream. It records the model's ``reasoning_content``
    (:attr:`reasoning`), which Letta's memgpt-style streaming interface ignores. If a relaxed
    forced call ends as plain text, that text is delivered as a ``send_message`` tool call
    instead (text chunks are held back until a tool call shows up, so nothing is shown twice)."""

    def __init__(self, stream: Any, adjustment: MoonshotAdjustment):
        super().__init__(stream)
        self._adjustment = adjustment
        self._reasoning: list[str] = []

    @property
    def reasoning(self) -> str:
        """The model's reasoning_content streamed so far."""
        return "".join(self._reasoning)

    def _record(self, chunk: Any) -> None:
        choice = chunk.choices[0] if getattr(chunk, "choices", None) else None
        text = getattr(choice.delta, "reasoning_content", None) if choice is not None and choice.delta is not None else None
        if text:
            self._reasoning.append(text)

    def __aiter__(self) -> AsyncIterator[Any]:
        return _SendMessagePieces(self._adjustment).chunks(self._chunks() if self._adjustment.relaxed_forced_call else self._recorded())

    async def _recorded(self) -> AsyncIterator[Any]:
        async for chunk in self._stream:
            self._record(chunk)
            yield chunk

    async def _chunks(self) -> AsyncIterator[Any]:
        held: list[Any] = []
        text: list[str] = []
        reasoning = self._reasoning
        saw_tool_call = False
        template = None
        async for chunk in self._stream:
            self._record(chunk)
            choice = chunk.choices[0] if chunk.choices else None
            if choice is None or saw_tool_call:
                if choice is None and not saw_tool_call and held:
                    # usage chunk after the finish: the answer was plain text
                    for extra in self._fallback(template, text, reasoning, held):
                        yield extra
                    held, saw_tool_call = [], True
                yield chunk
                continue
            template = chunk
            delta = choice.delta
            if delta.tool_calls:
                saw_tool_call = True
                for earlier in held:
                    yield earlier
                held = []
                yield chunk
                continue
            if delta.content:
                text.append(delta.content)
                delta.content = None  # the text goes into send_message if no tool call comes
            held.append(chunk)
        if held and not saw_tool_call:
            for extra in self._fallback(template, text, reasoning, held):
                yield extra

    def _fallback(self, template: Any, text: list[str], reasoning: list[str], held: list[Any]) -> list[Any]:
        """The held chunks, with a send_message call carrying the text before the finishing chunk."""
        answer = "".join(text)
        if not answer or SEND_MESSAGE_TOOL not in self._adjustment.tool_names or template is None:
            for chunk in held:  # nothing to stand in for: give the text back as it came
                if chunk.choices and chunk.choices[0].finish_reason is None and not chunk.choices[0].delta.content and answer:
                    chunk.choices[0].delta.content, answer = answer, ""
            return held
        call = template.model_copy(deep=True)
        call.choices[0].finish_reason = None
        call.choices[0].delta = type(template.choices[0].delta).model_validate(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "index": 0,
                        "id": _synthetic_call_id(),
                        "type": "function",
                        "function": {
                            "name": SEND_MESSAGE_TOOL,
                            "arguments": _send_message_arguments(answer, "".join(reasoning), self._adjustment.send_message_parameters),
                        },
                    }
                ],
            }
        )
        finishing = [c for c in held if c.choices and c.choices[0].finish_reason]
        for chunk in finishing:
            chunk.choices[0].finish_reason = "tool_calls"
        return [c for c in held if c not in finishing] + [call] + finishing


def _message_start(parameters: set[str]) -> re.Pattern[str]:
    """Where the ``message`` value starts in send_message arguments (inner thoughts, if any, before it)."""
    from letta.settings import INNER_THOUGHTS_KWARG

    thoughts = rf'"{INNER_THOUGHTS_KWARG}"\s*:\s*"(?:[^"\\]|\\.)*"\s*,\s*' if INNER_THOUGHTS_KWARG in parameters else ""
    return re.compile(rf'\A\s*\{{\s*{thoughts}(?P<key>"message"\s*:\s*)(?=")', re.DOTALL)


class _SendMessagePieces:
    """Re-cuts the streamed arguments of a ``send_message`` call so that Letta's memgpt-style
    streaming parser shows the message. That parser mixes raw fragments with its own re-parsed
    output: it loses the message when a key is split across fragments (token streams split them),
    when the inner thoughts and the message key come in one fragment, and it takes a fragment
    ending in an escaped quote for the end of the message. The arguments are held until the
    message value starts, then released as (inner thoughts, ``"message": ``, ``"``, value so
    far); the rest passes as it comes, except that a tail of whitespace, a backslash or an escaped
    quote waits for the next fragment. If the message comes before the inner thoughts, everything is
    held to the end of the call and given inner thoughts first."""

    def __init__(self, adjustment: MoonshotAdjustment):
        self._start = _message_start(adjustment.send_message_parameters)
        self._parameters = adjustment.send_message_parameters
        self._index: int | None = None  # the send_message call being re-cut
        self._held: list[str] = []
        self._released = False  # the message value has started: only an unsafe tail is held
        self._template: Any = None

    async def chunks(self, source: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for chunk in source:
            for out in self._cut(chunk):
                yield out
        for out in self._release_all():
            yield out

    def _piece(self, text: str, index: int | None = None) -> Any:
        chunk = self._template.model_copy(deep=True)
        if getattr(chunk, "usage", None) is not None:
            chunk.usage = None
        choice = chunk.choices[0]
        choice.finish_reason = None
        choice.delta = type(choice.delta).model_validate({"tool_calls": [{"index": self._index if index is None else index, "function": {"arguments": text}}]})
        return chunk

    def _release_all(self) -> list[Any]:
        """What is still held of a finished call (before the message started: inner thoughts first)."""
        text, released, index = "".join(self._held), self._released, self._index
        self._index, self._held, self._released = None, [], False
        if not text or index is None:
            return []
        if released:
            return [self._piece(text, index)]
        try:
            arguments = json.loads(text)
            if set(arguments) - {"message", INNER_THOUGHTS_KWARG} or (INNER_THOUGHTS_KWARG in arguments) != (INNER_THOUGHTS_KWARG in self._parameters):
                raise ValueError("not the arguments send_message was offered with")
            pieces = _send_message_argument_pieces(str(arguments["message"]), arguments.get(INNER_THOUGHTS_KWARG), self._parameters)
        except (ValueError, KeyError, TypeError, AttributeError):
            pieces = [text]
        return [self._piece(piece, index) for piece in pieces]

    def _take(self, text: str) -> list[str]:
        """The pieces ``text`` (a new fragment of the call being re-cut) lets out."""
        self._held.append(text)
        held = "".join(self._held)
        if not self._released:
            found = self._start.match(held)
            if not found:
                return []
            key, value = found.start("key"), found.end("key")
            self._released, self._held = True, []
            return [piece for piece in (held[:key], held[key:value], '"', *self._take(held[value + 1 :])) if piece]
        # Letta strips trailing whitespace off every fragment it shows and reads a fragment ending in
        # \" as the end of the message: such a tail waits for the next fragment
        safe, before = held, None
        while safe != before:
            before, safe = safe, safe.rstrip()
            safe = (safe[:-1] if safe.endswith('\\"') else safe).rstrip("\\")
        self._held = [held[len(safe) :]] if len(safe) < len(held) else []
        return [safe] if safe else []

    def _cut(self, chunk: Any) -> list[Any]:
        choice = chunk.choices[0] if getattr(chunk, "choices", None) else None
        calls = (choice.delta.tool_calls or []) if choice is not None and choice.delta is not None else []
        before: list[Any] = []
        after: list[Any] = []
        for call in calls:
            function = call.function
            if self._index is not None and call.index != self._index:
                before += self._release_all()
            if function is not None and function.name == SEND_MESSAGE_TOOL:
                before += self._release_all()
                self._index, self._template = call.index, chunk
            if call.index != self._index or function is None or not function.arguments:
                continue
            pieces = self._take(function.arguments)
            function.arguments = None
            after += [self._piece(piece) for piece in pieces]
        if choice is not None and choice.finish_reason:
            return [*before, *after, *self._release_all(), chunk]
        return [*before, chunk, *after]


class KimiClient(OpenAIClient):
    """Letta's OpenAI client, adjusted for Moonshot on every request (see the module docstring)."""

    async def follows_moonshot_rules(self, llm_config: LLMConfig) -> bool:
        """Whether this request goes to Moonshot; always, for a client made for the kimi type."""
        return True

    # Letta builds the request (sync) and sends it later (async); the messages needed for the
    # adjustment are remembered between the two, per request dict.
    def _build_contexts(self) -> "OrderedDict[int, BuildContext]":
        contexts = self.__dict__.get("_ketta_build_contexts")
        if contexts is None:
            contexts = self.__dict__["_ketta_build_contexts"] = OrderedDict()
        return contexts

    def build_request_data(
        self,
        agent_type: AgentType,
        messages: List[PydanticMessage],
        llm_config: LLMConfig,
        tools: Optional[List[dict]] = None,
        force_tool_call: Optional[str] = None,
        requires_subsequent_tool_call: bool = False,
        tool_return_truncation_chars: Optional[int] = None,
        system: Optional[str] = None,
    ) -> dict:
        request_data = super().build_request_data(
            agent_type, messages, llm_config, tools, force_tool_call, requires_subsequent_tool_call, tool_return_truncation_chars, system
        )
        contexts = self._build_contexts()
        contexts[id(request_data)] = BuildContext(agent_type=agent_type, messages=list(messages))
        while len(contexts) > 8:  # built but never sent (e.g. token counting)
            contexts.popitem(last=False)
        return request_data

    def _streams(self) -> OrderedDict[int, MoonshotStream]:
        streams = self.__dict__.get("_ketta_streams")
        if streams is None:
            streams = self.__dict__["_ketta_streams"] = OrderedDict()
        return streams

    def streamed_reasoning(self, request_data: dict) -> str | None:
        """The reasoning_content Moonshot streamed for ``request_data`` (None if that stream did not go
        to Moonshot); asked once, by the memgpt-style stream adapter once the stream is done."""
        stream = self._streams().pop(id(request_data), None)
        return stream.reasoning if stream is not None else None

    async def _adjust(self, request_data: dict, llm_config: LLMConfig) -> MoonshotAdjustment | None:
        context = self._build_contexts().pop(id(request_data), None)
        if "messages" not in request_data or not await self.follows_moonshot_rules(llm_config):
            self.__dict__["_ketta_last_adjustment"] = None
            return None
        adjustment = adjust_chat_request(request_data, llm_config, context)
        self.__dict__["_ketta_last_adjustment"] = adjustment
        self.__dict__.setdefault("_ketta_moonshot_configs", set()).add(llm_config.handle)
        return adjustment

    async def request_async(self, request_data: dict, llm_config: LLMConfig) -> dict:
        await self._adjust(request_data, llm_config)
        return await super().request_async(request_data, llm_config)

    async def stream_async(self, request_data: dict, llm_config: LLMConfig, *args: Any, **kwargs: Any) -> Any:
        adjustment = await self._adjust(request_data, llm_config)
        stream = await super().stream_async(request_data, llm_config, *args, **kwargs)
        if adjustment is None:
            return stream
        wrapped = MoonshotStream(stream, adjustment)
        streams = self._streams()
        streams[id(request_data)] = wrapped
        while len(streams) > 8:  # streams whose adapter does not ask (letta_v1 reads reasoning itself)
            streams.popitem(last=False)
        return wrapped

    def request(self, request_data: dict, llm_config: LLMConfig) -> dict:
        """Deprecated sync path: only a client made for the kimi type can know it talks to Moonshot."""
        if type(self) is KimiClient and "messages" in request_data:
            context = self._build_contexts().pop(id(request_data), None)
            self.__dict__["_ketta_last_adjustment"] = adjust_chat_request(request_data, llm_config, context)
        return super().request(request_data, llm_config)

    async def convert_response_to_chat_completion(
        self, response_data: dict, input_messages: List[PydanticMessage], llm_config: LLMConfig
    ) -> ChatCompletionResponse:
        response = await super().convert_response_to_chat_completion(response_data, input_messages, llm_config)
        adjustment: MoonshotAdjustment | None = self.__dict__.get("_ketta_last_adjustment")
        if not adjustment or not adjustment.relaxed_forced_call or SEND_MESSAGE_TOOL not in adjustment.tool_names:
            return response
        message = response.choices[0].message if response.choices else None
        if message is None or message.tool_calls or not message.content:
            return response
        from letta.schemas.openai.chat_completion_response import FunctionCall, ToolCall

        arguments = _send_message_arguments(message.content, message.reasoning_content, adjustment.send_message_parameters)
        message.tool_calls = [ToolCall(id=_synthetic_call_id(), type="function", function=FunctionCall(name=SEND_MESSAGE_TOOL, arguments=arguments))]
        message.content = None
        response.choices[0].finish_reason = "tool_calls"
        return response

    def handle_llm_error(self, e: Exception, llm_config: Optional[LLMConfig] = None) -> Exception:
        """Moonshot's 429 kinds and content filter as Letta errors with Moonshot's text; a timeout
        (Ketta's bounds, see ketta.llm.http) as a 504 naming the provider."""
        if isinstance(e, openai.APITimeoutError) and llm_config is not None:
            return timeout_error(llm_config.provider_name, llm_config.model_endpoint, e)
        moonshot_configs = self.__dict__.get("_ketta_moonshot_configs", set())
        if llm_config is not None and llm_config.handle in moonshot_configs:
            mapped = moonshot_error(e, llm_config)
            if mapped is not None:
                return mapped
        return super().handle_llm_error(e, llm_config)


def moonshot_error(e: Exception, llm_config: LLMConfig) -> Exception | None:
    """The Letta error for a Moonshot refusal that Letta's generic mapping would blur, else None."""
    if not isinstance(e, openai.APIStatusError):
        return None
    body = e.body if isinstance(e.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    kind = str(error.get("type") or "") if isinstance(error, dict) else ""
    text = str(error.get("message") or e.message) if isinstance(error, dict) else e.message
    details = {"is_byok": llm_config.provider_category == ProviderCategory.byok, "provider": llm_config.provider_name, "moonshot_error_type": kind}
    where = f"Moonshot ({llm_config.provider_name})"
    if e.status_code == 429 and "quota" in kind:
        return LLMInsufficientCreditsError(message=f"{where} quota exceeded [{kind}]: {text}", code=ErrorCode.RATE_LIMIT_EXCEEDED, details=details)
    if e.status_code == 429 and kind == "engine_overloaded_error":
        return LLMProviderOverloaded(message=f"{where} is overloaded [{kind}]: {text}", code=ErrorCode.RATE_LIMIT_EXCEEDED, details=details)
    if e.status_code == 429:
        return LLMRateLimitError(message=f"{where} rate limit reached [{kind or 'rate_limit'}]: {text}", code=ErrorCode.RATE_LIMIT_EXCEEDED, details=details)
    if e.status_code == 400 and ("content_filter" in kind or "high risk" in text.lower()):
        return LLMBadRequestError(message=f"{where} refused the content [content_filter]: {text}", code=ErrorCode.INVALID_ARGUMENT, details=details)
    return None


class OpenAICompatibleClient(KimiClient):
    """The client of the ``openai`` endpoint type: Moonshot's rules only for a kimi provider's models."""

    async def follows_moonshot_rules(self, llm_config: LLMConfig) -> bool:
        if self.actor is None or not llm_config.provider_name:
            return False
        return await provider_type_async(llm_config.provider_name, self.actor.organization_id) == KIMI_PROVIDER_TYPE
