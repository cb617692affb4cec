"""Chat Completions in, Anthropic's Messages API out, and back: the translator for a chat
(or, chained, a Responses) request routed to a `type: anthropic` provider.

Request: system/developer messages become `system`; user and assistant turns become
content blocks (text, images from data: or http(s) URLs, `tool_use` for assistant tool
calls, `tool_result` for `tool` messages), consecutive turns of one role merged; tools,
tool_choice (and `parallel_tool_calls: false` as `disable_parallel_tool_use`),
max_tokens (4096 when absent, as Anthropic requires one), temperature (capped at
Anthropic's 1), top_p, stop → stop_sequences, user → metadata.user_id. What Anthropic
has no equivalent for (response_format, seed, logprobs, penalties, logit_bias,
service_tier) is dropped and named in `x-switchyard-dropped-fields`.

Answer: text blocks joined as the message content, `tool_use` blocks as tool_calls,
stop_reason mapped to finish_reason, usage with cache reads and writes counted as
prompt tokens (cache reads also as `cached_tokens`). A stream's events
(`message_start`, `content_block_*` incl. `input_json_delta`, `message_delta`,
`message_stop`) become `chat.completion.chunk` events as they arrive; a
`message_delta` that says `input_tokens: null` does not erase the count
`message_start` gave. Anthropic's error bodies become OpenAI-shaped ones.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from proxy import sse
from proxy.dialects import chat
from proxy.dialects.messages import parse_event
from proxy.errors import InvalidRequest, InvalidResponse, UpstreamError
from proxy.translate.base import Translator

DEFAULT_MAX_TOKENS = 4096
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "pause_turn": "stop", "refusal": "content_filter"}
ERROR_TYPES = {"invalid_request_error": "invalid_request_error", "authentication_error": "invalid_request_error",
               "permission_error": "invalid_request_error", "not_found_error": "invalid_request_error",
               "request_too_large": "invalid_request_error",
               "rate_limit_error": "requests", "overloaded_error": "api_error", "api_error": "api_error"}
# chat fields Anthropic has nothing for: dropped, and said so
UNTRANSLATED = ("response_format", "seed", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty",
                "logit_bias", "service_tier", "prediction", "audio", "modalities", "web_search_options")


class ChatToAnthropic(Translator):
    passthrough = False

    def __init__(self) -> None:
        super().__init__("messages")

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        return to_messages(body)

    def answer(self, answer: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        try:
            return to_chat_completion(answer)
        except (KeyError, TypeError, AttributeError):
            raise InvalidResponse("the provider answered with a body that is not a Messages API answer") from None

    def stream(self, chunks: AsyncIterator[bytes], body: dict[str, Any], provider: str) -> AsyncIterator[bytes]:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return translate_stream(chunks, include_usage, provider)

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        return openai_error(status, body)

    def dropped(self, body: dict[str, Any]) -> list[str]:
        return [name for name in UNTRANSLATED if body.get(name) is not None]


# ---------------------------------------------------------------- request


def to_messages(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat body as an Anthropic Messages request."""
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        raise InvalidRequest("Anthropic answers one choice per request; n must be 1.", param="n")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
            continue
        if role == "tool":
            block = {"type": "tool_result", "tool_use_id": message.get("tool_call_id") or "",
                     "content": _text(message.get("content"))}
            _append(turns, "user", [block])
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message))
        else:
            _append(turns, "user", _user_blocks(message.get("content")))
    out: dict[str, Any] = {
        "model": body.get("model"),
        "messages": turns,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS,
    }
    if system:
        out["system"] = "\n\n".join(s for s in system if s)
    if isinstance(body.get("temperature"), (int, float)):
        out["temperature"] = min(float(body["temperature"]), 1.0)
    if isinstance(body.get("top_p"), (int, float)):
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream") is True:
        out["stream"] = True
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    tools = _tools(body.get("tools"))
    choice = body.get("tool_choice")
    if tools and choice != "none":
        out["tools"] = tools
        mapped = _tool_choice(choice)
        if body.get("parallel_tool_calls") is False:  # Anthropic's way to ask for one call at a time
            mapped = {**(mapped or {"type": "auto"}), "disable_parallel_tool_use": True}
        if mapped is not None:
            out["tool_choice"] = mapped
    return out


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:  # Anthropic wants turns to alternate
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content or []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            blocks.append(_image(url))
    return blocks


def _image(url: str) -> dict[str, Any]:
    if url.startswith("data:") and ";base64," in url:
        media, _, data = url[5:].partition(";base64,")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            raise InvalidRequest("a tool call's arguments are not valid JSON.", param="messages") from None
        blocks.append({"type": "tool_use", "id": call.get("id") or "", "name": function.get("name") or "",
                       "input": arguments})
    return blocks


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for tool in tools or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            continue
        entry = {"name": function.get("name", ""),
                 "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
        if function.get("description"):
            entry["description"] = function["description"]
        out.append(entry)
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "tool", "name": choice["function"].get("name", "")}
    return None


# ---------------------------------------------------------------- answers


def usage(anthropic: dict[str, Any]) -> dict[str, Any]:
    cache_read = anthropic.get("cache_read_input_tokens") or 0
    cache_write = anthropic.get("cache_creation_input_tokens") or 0
    prompt = (anthropic.get("input_tokens") or 0) + cache_read + cache_write
    completion = anthropic.get("output_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cache_read}}


def to_chat_completion(message: dict[str, Any]) -> dict[str, Any]:
    texts, calls = [], []
    for block in message["content"]:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"),
                                       "arguments": orjson.dumps(block.get("input", {})).decode()}})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model"),
        "choices": [{"index": 0, "message": reply, "finish_reason": FINISH.get(str(message.get("stop_reason")), "stop"),
                     "logprobs": None}],
        "usage": usage(message.get("usage") or {}),
    }


def openai_error(status: int, body: bytes) -> tuple[int, bytes]:
    """Anthropic's error body as OpenAI's, with the status a client of OpenAI expects."""
    kind, message = "api_error", f"Anthropic answered {status}"
    try:
        error = orjson.loads(body).get("error") or {}
        kind = error.get("type") or kind
        message = error.get("message") or message
    except (orjson.JSONDecodeError, AttributeError):
        pass
    payload = {"error": {"message": message, "type": ERROR_TYPES.get(kind, "api_error"), "param": None,
                         "code": kind}}
    return 503 if status == 529 else status, orjson.dumps(payload)


# ---------------------------------------------------------------- streams


class StreamTranslator:
    """Anthropic stream events in, OpenAI chunk events (bytes) out."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.base: dict[str, Any] = chat.chunk_meta("", int(time.time()), "")
        self.tool_index: dict[int, int] = {}  # Anthropic content block index -> tool_calls index
        self.usage: dict[str, Any] = {}
        self.finish: str | None = None

    def event(self, kind: str, data: dict[str, Any]) -> list[bytes]:
        if kind == "message_start":
            message = data.get("message") or {}
            self.base["id"] = message.get("id", "")
            self.base["model"] = message.get("model", "")
            self._count(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self.tool_index.setdefault(data.get("index", 0), len(self.tool_index))
                call = {"index": index, "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name"), "arguments": ""}}
                return [self._chunk({"tool_calls": [call]})]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                index = self.tool_index.get(data.get("index", 0), 0)
                return [self._chunk({"tool_calls": [{"index": index,
                                                      "function": {"arguments": delta.get("partial_json", "")}}]})]
            return []
        if kind == "message_delta":
            self.finish = FINISH.get(str((data.get("delta") or {}).get("stop_reason")), "stop")
            self._count(data.get("usage"))
            return []
        if kind == "message_stop":
            out = [self._chunk({}, self.finish or "stop")]
            if self.include_usage:
                out.append(sse.encode(chat.usage_chunk(self.base, usage(self.usage))))
            return out + [sse.DONE]
        if kind == "error":
            error = data.get("error") or {}
            raise UpstreamError(f"Anthropic stream error: {error.get('message') or error.get('type') or 'unknown'}",
                                kind="stream_cut")
        return []  # ping, and event types added later

    def _count(self, usage: Any) -> None:
        """Take the counts an event gives; a null (message_delta's `input_tokens: null`)
        leaves the count an earlier event gave."""
        if isinstance(usage, dict):
            self.usage.update({k: v for k, v in usage.items() if v is not None})

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse.encode(chat.chunk(self.base, delta, finish_reason=finish))


async def translate_stream(raw: AsyncIterator[bytes], include_usage: bool, provider: str) -> AsyncIterator[bytes]:
    translator = StreamTranslator(include_usage)
    splitter = sse.EventSplitter()
    finished = False
    async for chunk in raw:
        out: list[bytes] = []
        for event in splitter.feed(chunk):
            kind, data = parse_event(event)
            if data is None:
                continue
            out += translator.event(kind, data)
            finished = finished or kind == "message_stop"
        if out:
            yield b"".join(out)
    if not finished:
        raise UpstreamError(f"provider {provider} ended the stream before message_stop", kind="stream_cut")
