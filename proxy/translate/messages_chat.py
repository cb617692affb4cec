"""Anthropic Messages in, Chat Completions out, and back: the translator for a Messages
API request routed to an OpenAI-compatible provider (or the mock).

Request: `system` (a string or text blocks) becomes the first, system, message. A user
turn's `tool_result` blocks become `tool` messages (a result's text blocks joined, an
error said in its text), placed before what else the turn says; its text and images
(base64 or URL sources) become the user message, a lone text block as plain content.
An assistant turn's text becomes its content and its `tool_use` blocks its tool_calls;
thinking blocks are dropped. Client tools become function tools, `tool_choice` maps
(auto, any → required, tool → the function, none; `disable_parallel_tool_use` →
`parallel_tool_calls: false`); max_tokens, stop_sequences → stop, temperature, top_p,
metadata.user_id → user, stream (asking for usage). What chat has nothing for (top_k,
thinking, service_tier, container, cache_control, ...) is dropped and named; what
cannot be said at all (documents, server tools and their blocks) is a 400 naming it.

Answer: a `message` with a text block and a tool_use block per tool call, stop_reason
from finish_reason (a stop sequence hit cannot be told from a natural end in chat:
both are end_turn), usage with cached prompt tokens as cache reads. A stream's chunks
become Messages events as they arrive: message_start at the first chunk, a text block
opened at the first text, a tool_use block per tool call fed input_json_deltas, each
block closed before the next opens, then message_delta (the stop reason and, from the
usage chunk, the counts, input included) and message_stop at `[DONE]`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from proxy import sse
from proxy.dialects.messages import error_payload, frame
from proxy.errors import InvalidRequest, InvalidResponse, UpstreamError, provider_message
from proxy.translate.base import Translator

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
# Messages fields chat has nothing for: dropped, and said so
UNTRANSLATED = ("top_k", "thinking", "service_tier", "container", "mcp_servers", "context_management",
                "output_config", "output_format", "inference_geo", "speed", "diagnostics", "cache_control")


class MessagesToChat(Translator):
    passthrough = False

    def __init__(self) -> None:
        super().__init__("chat/completions")

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        return to_chat(body)

    def answer(self, answer: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        return to_message(answer, body)

    async def stream(self, chunks: AsyncIterator[bytes], body: dict[str, Any],
                     provider: str) -> AsyncIterator[bytes]:
        translator = StreamTranslator(body)
        splitter = sse.EventSplitter()
        async for chunk in chunks:
            out: list[bytes] = []
            for event in splitter.feed(chunk):
                data = sse.event_data(event)
                if data is None or translator.done:
                    continue
                try:
                    out += translator.event(data)
                except UpstreamError:
                    if out:  # what came before the failure, in the same read, still goes out
                        yield b"".join(out)
                    raise
            if out:
                yield b"".join(out)
        if not translator.done:
            raise UpstreamError(f"provider {provider} ended the stream before [DONE]", kind="stream_cut")

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        return status, error_payload(status, provider_message(body) or f"the provider answered {status}")

    def dropped(self, body: dict[str, Any]) -> list[str]:
        fields = [f for f in UNTRANSLATED if body.get(f) is not None]
        if "cache_control" not in fields and _has_cache_control(body):
            fields.append("cache_control")
        return fields


def _has_cache_control(body: Mapping[str, Any]) -> bool:
    """Whether a block, a system block or a tool asks for a cache breakpoint."""
    places: list[Any] = list(body.get("tools") or ())
    if isinstance(body.get("system"), list):
        places += body["system"]
    for turn in body.get("messages") or ():
        if isinstance(turn, dict) and isinstance(turn.get("content"), list):
            places += turn["content"]
    return any(isinstance(p, dict) and p.get("cache_control") is not None for p in places)


# ---------------------------------------------------------------- request


def to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Messages request as a Chat Completions one (a body `MessagesDialect.parse` passed)."""
    messages: list[dict[str, Any]] = []
    system = _system(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(body.get("messages") or ()):
        content = turn.get("content")
        if turn.get("role") == "assistant":
            messages += _assistant(content, f"messages[{i}]")
        else:
            messages += _user(content, f"messages[{i}]")
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            out[field] = body[field]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            if choice.get("type") == "tool":
                out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
            elif choice.get("type") in TOOL_CHOICES:
                out["tool_choice"] = TOOL_CHOICES[choice["type"]]
            if choice.get("disable_parallel_tool_use") is True:
                out["parallel_tool_calls"] = False
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _system(system: Any) -> str:
    if isinstance(system, str):
        return system
    return "\n\n".join(b["text"] for b in system or () if isinstance(b, dict) and isinstance(b.get("text"), str))


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content or ()):
        at = f"{where}.content[{j}]"
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), at)}})
        elif kind == "tool_result":
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id", ""),
                            "content": _tool_result_text(block, at)})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's own blocks, never a user's: nothing to say
        else:
            raise _untranslatable(kind, f"{at}.type")
    if not parts:
        return results
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*results, {"role": "user", "content": parts[0]["text"]}]
    return [*results, {"role": "user", "content": parts}]


def _untranslatable(kind: Any, param: str) -> InvalidRequest:
    what = f"'{kind}' blocks" if isinstance(kind, str) else "this block"
    return InvalidRequest(f"{what} cannot be sent to a Chat Completions provider; they need an Anthropic provider.",
                          param=param)


def _image_url(source: Any, where: str) -> str:
    if isinstance(source, dict):
        if source.get("type") == "base64":
            return f"data:{source.get('media_type', '')};base64,{source.get('data', '')}"
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return str(source["url"])
    raise InvalidRequest("an image for a Chat Completions provider must have a base64 or url source.",
                         param=f"{where}.source")


def _tool_result_text(block: Mapping[str, Any], where: str) -> str:
    content = block.get("content")
    if isinstance(content, str):
        text = content
    else:
        texts = []
        for k, part in enumerate(content or ()):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else None
                raise InvalidRequest(f"a tool result for a Chat Completions provider can hold text only, "
                                     f"not {kind!r} blocks.", param=f"{where}.content[{k}].type")
            texts.append(str(part.get("text", "")))
        text = "\n".join(texts)
    if block.get("is_error") is True:
        return f"Error: {text}" if text else "Error"
    return text


def _assistant(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content or ()):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append({"id": block.get("id", ""), "type": "function",
                          "function": {"name": block.get("name", ""),
                                       "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # signed for Anthropic alone; another model cannot read them
        else:
            raise _untranslatable(kind, f"{where}.content[{j}].type")
    if not texts and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools or ()):
        if tool.get("type") not in (None, "custom"):
            raise InvalidRequest(f"the server tool {tool['type']!r} needs an Anthropic provider; this model is "
                                 "served by a Chat Completions one.", param=f"tools[{i}]")
        function: dict[str, Any] = {
            "name": tool.get("name"),
            "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
        }
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


# ---------------------------------------------------------------- answers


def message_id(chat_id: Any) -> str:
    """A Messages id for a chat answer's id (the same for its stream and its JSON answer)."""
    if isinstance(chat_id, str) and chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex[:24]


def message_usage(usage: Any) -> dict[str, int]:
    """Chat usage as Anthropic's: cached prompt tokens as cache reads, the rest as input."""
    if not isinstance(usage, dict):
        usage = {}
    prompt = _count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = min(_count(details.get("cached_tokens")) if isinstance(details, dict) else 0, prompt)
    return {"input_tokens": prompt - cached, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
            "output_tokens": _count(usage.get("completion_tokens"))}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def stop_reason(finish_reason: Any) -> str:
    return STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def to_message(completion: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """A `chat.completion` as a Messages API `message`."""
    choices = completion.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise InvalidResponse("the provider answered with a body that is not a chat completion")
    choice = choices[0] if choices else {}
    reply = _dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    text = _reply_text(reply)
    if text:
        content.append({"type": "text", "text": text})
    for call in reply.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{len(content)}",
                        "name": function.get("name") or "", "input": _arguments(function.get("arguments"))})
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model") or body.get("model") or "",
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": message_usage(completion.get("usage")),
    }


def _reply_text(reply: Mapping[str, Any]) -> str:
    content = reply.get("content")
    if isinstance(content, list):  # some providers answer in parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if isinstance(content, str) and content:
        return content
    refusal = reply.get("refusal")
    return refusal if isinstance(refusal, str) else ""


def _arguments(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the input object; what is not a JSON object is {}."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------- streams


class StreamTranslator:
    """Chat chunk events (their data) in, Messages events (bytes) out."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.model = body.get("model") or ""
        self.started = False
        self.done = False
        self.blocks = 0  # content blocks opened so far
        self.open: int | None = None  # the index of the open block
        self.text_open = False  # the open block is a text block
        self.tools: dict[int, int] = {}  # chat tool call index -> content block index
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None

    def event(self, data: bytes) -> list[bytes]:
        if data.strip() == b"[DONE]":
            return self._end()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("the provider's stream held an event that is not JSON", kind="stream_cut") from None
        if not isinstance(chunk, dict):
            raise UpstreamError("the provider's stream held an event that is not a chunk", kind="stream_cut")
        if chunk.get("error") is not None:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else None
            raise UpstreamError(f"the provider's stream failed: {message or 'unknown error'}", kind="stream_cut")
        out: list[bytes] = []
        if not self.started:
            self.started = True
            out.append(self._start(chunk))
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # a Messages answer is one choice
            delta = _dict(choice.get("delta"))
            for piece in (delta.get("content"), delta.get("refusal")):
                if isinstance(piece, str) and piece:
                    out += self._text(piece)
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out += self._tool(call)
            if choice.get("finish_reason"):
                self.finish = stop_reason(choice["finish_reason"])
        return out

    def _start(self, chunk: Mapping[str, Any]) -> bytes:
        message: dict[str, Any] = {
            "id": message_id(chunk.get("id")), "type": "message", "role": "assistant",
            "model": chunk.get("model") or self.model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},  # the counts come in message_delta
        }
        return frame("message_start", message=message)

    def _open(self, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.open = self.blocks
        self.blocks += 1
        self.text_open = block["type"] == "text"
        out.append(frame("content_block_start", index=self.open, content_block=block))
        return out

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        index, self.open, self.text_open = self.open, None, False
        return [frame("content_block_stop", index=index)]

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return frame("content_block_delta", index=index, delta=delta)

    def _text(self, text: str) -> list[bytes]:
        out = [] if self.text_open else self._open({"type": "text", "text": ""})
        out.append(self._delta(self.blocks - 1, {"type": "text_delta", "text": text}))  # the open block
        return out

    def _tool(self, call: Mapping[str, Any]) -> list[bytes]:
        position = call.get("index", len(self.tools))
        function = _dict(call.get("function"))
        out: list[bytes] = []
        if position not in self.tools:  # a new call: its id and name come first
            out += self._open({"type": "tool_use", "id": call.get("id") or f"toolu_{self.blocks}",
                               "name": function.get("name") or "", "input": {}})
            self.tools[position] = self.blocks - 1
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # a fragment of an earlier call (chat streams them in order, so never in practice)
            # still goes to its own block
            out.append(self._delta(self.tools[position], {"type": "input_json_delta", "partial_json": arguments}))
        return out

    def _end(self) -> list[bytes]:
        if self.finish is None:
            raise UpstreamError("the provider's stream ended without a finish reason", kind="stream_cut")
        self.done = True
        out = self._close()
        usage: dict[str, Any] = message_usage(self.usage) if self.usage is not None else {"output_tokens": 0}
        out.append(frame("message_delta", delta={"stop_reason": self.finish, "stop_sequence": None}, usage=usage))
        out.append(frame("message_stop"))
        return out
