"""Anthropic's Messages API (`POST /v1/messages`) as a surface the gateway serves.

Its shapes: a request has `max_tokens` (required), `messages` of `user`/`assistant`
turns whose content is a string or a list of typed blocks, and a top-level `system`;
its end user is `metadata.user_id`. An answer is a `message` whose `content` is a list
of blocks (text, tool_use, thinking, ...), with a `stop_reason` and a `usage` counting
uncached input, cache reads and cache writes apart. A stream is named SSE events,
`event: <type>` then `data: <json with the same type>`: `message_start` (the message
with empty content and the input side of the usage), for each block
`content_block_start`, `content_block_delta`s (`text_delta`, `input_json_delta`,
`thinking_delta`, `signature_delta`, `citations_delta`) and `content_block_stop`,
then `message_delta` (stop_reason, stop_sequence, cumulative usage) and
`message_stop`; `ping`s may come anywhere and an `error` event ends a broken stream.
Errors are `{"type": "error", "error": {"type": ..., "message": ...}}`, the type
following the status.

Usage leaves this module normalised to the chat shape (`normalise_usage`): the
prompt counts cached input too, as the rest of the gateway expects.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import orjson

from proxy import sse
from proxy.dialects.base import Dialect, Inbound, Usage
from proxy.errors import InvalidRequest, ProxyError
from proxy.validation import check_name

ROLES = ("user", "assistant")
TOOL_CHOICES = ("auto", "any", "tool", "none")

# The error type Anthropic's API gives with each status. The SDK picks its exception
# class from the status alone (anthropic._error_classes.ERROR_CLASSES, when the body
# has no `error.details.error_code`): 400 BadRequestError, 401 AuthenticationError,
# 403 PermissionDeniedError, 404 NotFoundError, 408 RequestTimeoutError, 413
# ContentTooLargeError, 429 RateLimitError, 503 ServiceUnavailableError, 504
# GatewayTimeoutError, 529 OverloadedError, any other 5xx InternalServerError.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """The `error.type` Anthropic's API says with an HTTP status."""
    known = ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "api_error" if status >= 500 else "invalid_request_error"


def error_payload(status: int, message: str) -> bytes:
    """An Anthropic-shaped error body for `status`."""
    return orjson.dumps({"type": "error", "error": {"type": error_type(status), "message": message}})


def frame(type_: str, **fields: Any) -> bytes:
    """One event as Anthropic frames it: its type on an `event:` line (the SDK skips events
    without one), then its JSON, which says the type again."""
    return b"event: " + type_.encode() + b"\ndata: " + orjson.dumps({"type": type_, **fields}) + b"\n\n"


def normalise_usage(usage: Mapping[str, Any]) -> Usage:
    """Anthropic's usage (input apart from cache reads and writes) in the chat shape."""
    cache_read = _count(usage.get("cache_read_input_tokens"))
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    prompt = _count(usage.get("input_tokens")) + cache_read + cache_write
    completion = _count(usage.get("output_tokens"))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cache_read}}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def parse_event(event: bytes) -> tuple[str, dict[str, Any] | None]:
    """(type, data) of one event split by `sse.EventSplitter`: the `event:` line names the
    type, else the data's own `type`; data None when it is not a JSON object."""
    kind = ""
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            kind = line[6:].strip().decode(errors="replace")
    payload = sse.event_data(event)
    if payload is None:
        return kind, None
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return kind, None
    if not isinstance(data, dict):
        return kind, None
    if not kind and isinstance(data.get("type"), str):
        kind = data["type"]
    return kind, data


# ---------------------------------------------------------------- the dialect


class MessagesDialect(Dialect):
    name = "messages"
    endpoint = "messages"
    operation = "chat"
    anthropic_errors = True

    def parse(self, body: dict[str, Any]) -> Inbound:
        check_name(body.get("model"), "model")
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise InvalidRequest("Missing required parameter: 'max_tokens'.", param="max_tokens")
        _int(max_tokens, "max_tokens", 1)
        _check_messages(body.get("messages"))
        _check_system(body.get("system"))
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise InvalidRequest(f"'stream' must be a boolean, not {_kind(stream)}.", param="stream")
        for field in ("temperature", "top_p"):
            if body.get(field) is not None:
                _number(body[field], field, 0, 1)
        if body.get("top_k") is not None:
            _int(body["top_k"], "top_k", 0)
        _check_stop_sequences(body.get("stop_sequences"))
        _check_tools(body.get("tools"))
        _check_tool_choice(body.get("tool_choice"))
        user = _check_metadata(body.get("metadata"))
        return Inbound(model=body.get("model"), stream=stream is True, user=user, output_cap=max_tokens)

    def classifier_view(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The conversation as chat messages: `system` first, each turn's text; a user
        turn's tool results as `tool` messages, so the last user text stays the prompt."""
        messages: list[dict[str, Any]] = []
        system = _text_of(body.get("system"))
        if system:
            messages.append({"role": "system", "content": system})
        for turn in body.get("messages") or ():
            if not isinstance(turn, dict):
                continue
            content = turn.get("content")
            if isinstance(content, list):
                for block in content:
                    if isinstance(block, dict) and block.get("type") == "tool_result":
                        messages.append({"role": "tool", "content": _text_of(block.get("content"))})
                if not any(isinstance(b, dict) and b.get("type") != "tool_result" for b in content):
                    continue
            messages.append({"role": turn.get("role"), "content": _text_of(content)})
        return {"messages": messages}

    def usage(self, answer: Mapping[str, Any]) -> Usage | None:
        usage = answer.get("usage")
        return normalise_usage(usage) if isinstance(usage, dict) else None

    def stream_observer(self, capture: bool) -> MessagesObserver:
        return MessagesObserver(capture)

    def cacheable(self, answer: Mapping[str, Any]) -> bool:
        return answer.get("stop_reason") is not None

    def replay(self, answer: Mapping[str, Any], body: Mapping[str, Any]) -> list[bytes]:
        return replay_events(answer)

    def error_body(self, exc: ProxyError) -> bytes:
        return error_payload(exc.status, exc.message)

    def stream_error(self, exc: ProxyError) -> bytes:
        return b"event: error\ndata: " + error_payload(exc.status, exc.message) + b"\n\n"


def _text_of(content: Any) -> str:
    """The text of a string or of a list of blocks (text blocks, and the text inside tool results)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
    return "\n".join(parts)


# ---------------------------------------------------------------- request checks


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _int(value: Any, param: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{param}' must be an integer, not {_kind(value)}.", param=param)
    if value < low:
        raise InvalidRequest(f"'{param}' must be at least {low}, got {value}.", param=param)


def _number(value: Any, param: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"'{param}' must be a number, not {_kind(value)}.", param=param)
    if not low <= value <= high:
        raise InvalidRequest(f"'{param}' must be between {low} and {high}, got {value}.", param=param)


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{param}' must be an object, not {_kind(value)}.", param=param)
    return value


def _list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequest(f"'{param}' must be an array, not {_kind(value)}.", param=param)
    return value


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if not _list(messages, "messages"):
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        _object(message, where)
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"'{where}.role' must be 'user' or 'assistant'.", param=f"{where}.role")
        content = message.get("content")
        if content is None:
            raise InvalidRequest(f"Missing required parameter: '{where}.content'.", param=f"{where}.content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise InvalidRequest(f"'{where}.content' must be a string or an array of content blocks, "
                                 f"not {_kind(content)}.", param=f"{where}.content")
        for j, block in enumerate(content):
            _check_block(block, f"{where}.content[{j}]")


def _check_block(block: Any, where: str) -> None:
    _object(block, where)
    kind = block.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidRequest(f"'{where}.type' must be a string naming the block's type.", param=f"{where}.type")


def _check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    for i, block in enumerate(_list_or_string(system, "system")):
        where = f"system[{i}]"
        _object(block, where)
        if block.get("type") != "text":
            raise InvalidRequest(f"'{where}.type' must be 'text': a system prompt is text.", param=f"{where}.type")
        if not isinstance(block.get("text"), str):
            raise InvalidRequest(f"'{where}.text' must be a string.", param=f"{where}.text")


def _list_or_string(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequest(f"'{param}' must be a string or an array of text blocks, not {_kind(value)}.",
                             param=param)
    return value


def _check_stop_sequences(stops: Any) -> None:
    if stops is None:
        return
    for i, stop in enumerate(_list(stops, "stop_sequences")):
        if not isinstance(stop, str):
            raise InvalidRequest(f"'stop_sequences[{i}]' must be a string, not {_kind(stop)}.",
                                 param=f"stop_sequences[{i}]")


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    for i, tool in enumerate(_list(tools, "tools")):
        where = f"tools[{i}]"
        _object(tool, where)
        name, kind = tool.get("name"), tool.get("type")
        if kind is not None and not isinstance(kind, str):
            raise InvalidRequest(f"'{where}.type' must be a string.", param=f"{where}.type")
        if name is None and kind in (None, "custom"):
            raise InvalidRequest(f"'{where}' needs a 'name' (a client tool) or a 'type' (a server tool).",
                                 param=f"{where}.name")
        if name is not None and (not isinstance(name, str) or not name):
            raise InvalidRequest(f"'{where}.name' must be a non-empty string.", param=f"{where}.name")


def _check_tool_choice(choice: Any) -> None:
    if choice is None:
        return
    _object(choice, "tool_choice")
    kind = choice.get("type")
    if kind not in TOOL_CHOICES:
        raise InvalidRequest("'tool_choice.type' must be one of auto, any, tool, none.", param="tool_choice.type")
    if kind == "tool" and (not isinstance(choice.get("name"), str) or not choice["name"]):
        raise InvalidRequest("'tool_choice.name' must name the tool to use.", param="tool_choice.name")
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest("'tool_choice.disable_parallel_tool_use' must be a boolean.",
                             param="tool_choice.disable_parallel_tool_use")


def _check_metadata(metadata: Any) -> str | None:
    if metadata is None:
        return None
    user = _object(metadata, "metadata").get("user_id")
    check_name(user, "metadata.user_id")
    return user


# ---------------------------------------------------------------- streams


class MessagesObserver:
    """Reads a Messages event stream as the client gets it: its usage (the input side from
    `message_start`, the cumulative counts a `message_delta` says), and with `capture`
    the whole message, rebuilt as the SDK's stream accumulator does."""

    __slots__ = ("usage", "_capture", "_splitter", "_message", "_usage", "_blocks", "_json", "_done", "_failed")

    def __init__(self, capture: bool) -> None:
        self.usage: Usage | None = None
        self._capture = capture
        self._splitter = sse.EventSplitter()
        self._message: dict[str, Any] | None = None
        self._usage: dict[str, Any] = {}  # Anthropic's usage, as the stream said it so far
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}  # input_json_delta fragments per block
        self._done = False
        self._failed = False

    def feed(self, chunk: bytes) -> None:
        for event in self._splitter.feed(chunk):
            kind, data = parse_event(event)
            if data is not None:
                self._event(kind, data)

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "message_start":
            message = data.get("message")
            if not isinstance(message, dict):
                return
            usage = message.get("usage")
            self._usage = dict(usage) if isinstance(usage, dict) else {}
            self.usage = normalise_usage(self._usage)
            if self._capture:
                self._message = copy.deepcopy(message)
        elif kind == "message_delta":
            usage = data.get("usage")
            if isinstance(usage, dict):
                # cumulative counts: a number replaces the one said before; one left out or
                # null leaves it (a message_delta with "input_tokens": null is not 0 input)
                self._usage.update({k: v for k, v in usage.items() if v is not None})
                self.usage = normalise_usage(self._usage)
            delta = data.get("delta")
            if self._message is not None and isinstance(delta, dict):
                self._message.update(delta)
        elif kind == "message_stop":
            self._done = True
        elif kind == "error":
            self._failed = True
        elif self._capture and kind.startswith("content_block_"):
            self._block_event(kind, data)

    def _block_event(self, kind: str, data: dict[str, Any]) -> None:
        index = data.get("index")
        if not isinstance(index, int):
            return
        if kind == "content_block_start":
            block = data.get("content_block")
            if isinstance(block, dict):
                self._blocks[index] = copy.deepcopy(block)
            return
        block = self._blocks.get(index)
        if block is None:
            return
        if kind == "content_block_stop":
            parts = self._json.pop(index, None)
            if parts is not None and "".join(parts).strip():
                try:
                    block["input"] = orjson.loads("".join(parts))
                except orjson.JSONDecodeError:
                    self._failed = True  # a tool input that is not JSON: not an answer to store
            return
        delta = data.get("delta")
        if kind != "content_block_delta" or not isinstance(delta, dict):
            return
        match delta.get("type"):
            case "text_delta":
                block["text"] = block.get("text", "") + str(delta.get("text", ""))
            case "input_json_delta":
                self._json.setdefault(index, []).append(str(delta.get("partial_json", "")))
            case "thinking_delta":
                block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
            case "signature_delta":
                block["signature"] = delta.get("signature", "")
            case "citations_delta":
                block["citations"] = [*(block.get("citations") or ()), delta.get("citation")]

    def answer(self) -> dict[str, Any] | None:
        if not self._capture or not self._done or self._failed or self._message is None:
            return None
        message = dict(self._message)
        message["content"] = [self._blocks[i] for i in sorted(self._blocks)]
        message["usage"] = dict(self._usage)
        return message


_START_USAGE_LEAVES = ("output_tokens", "output_tokens_details", "server_tool_use")  # said by message_delta
_STREAMED: dict[str, dict[str, Any]] = {  # block type: its start event's empty fields, filled by deltas
    "text": {"text": ""},
    "thinking": {"thinking": "", "signature": ""},
    "tool_use": {"input": {}},
    "server_tool_use": {"input": {}},
}


def replay_events(message: Mapping[str, Any]) -> list[bytes]:
    """A stored message as the stream Anthropic would have sent for it."""
    raw = message.get("usage")
    usage: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    output = _count(usage.get("output_tokens"))
    start_usage = {k: v for k, v in usage.items() if k not in _START_USAGE_LEAVES}
    start_usage.setdefault("input_tokens", 0)
    start_usage["output_tokens"] = min(output, 1)
    start = {k: v for k, v in message.items() if k not in ("content", "usage", "stop_reason", "stop_sequence",
                                                           "stop_details", "container")}
    start.update({"content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage})
    events = [frame("message_start", message=start)]
    for index, block in enumerate(message.get("content") or ()):
        events += _block_events(index, block)
    delta: dict[str, Any] = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    for key in ("stop_details", "container"):
        if message.get(key) is not None:
            delta[key] = message[key]
    delta_usage: dict[str, Any] = {"output_tokens": output}
    for key in ("output_tokens_details", "server_tool_use"):
        if usage.get(key) is not None:
            delta_usage[key] = usage[key]
    events.append(frame("message_delta", delta=delta, usage=delta_usage))
    events.append(frame("message_stop"))
    return events


def _block_events(index: int, block: Mapping[str, Any]) -> list[bytes]:
    kind = block.get("type")
    empty = _STREAMED.get(kind) if isinstance(kind, str) else None
    if empty is None:  # redacted thinking, server tool results: whole in their start event
        first, deltas = dict(block), []
    else:
        first = {**block, **empty}
        if block.get("citations") is not None:
            first["citations"] = []  # each one follows as a citations_delta
        deltas = _deltas(block)
    events = [frame("content_block_start", index=index, content_block=first)]
    events += [frame("content_block_delta", index=index, delta=d) for d in deltas]
    events.append(frame("content_block_stop", index=index))
    return events


def _deltas(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    kind = block.get("type")
    if kind == "text":
        out: list[dict[str, Any]] = []
        if block.get("text"):
            out.append({"type": "text_delta", "text": block["text"]})
        out += [{"type": "citations_delta", "citation": c} for c in block.get("citations") or ()]
        return out
    if kind == "thinking":
        out = [{"type": "thinking_delta", "thinking": block["thinking"]}] if block.get("thinking") else []
        return out + [{"type": "signature_delta", "signature": block.get("signature") or ""}]
    # tool_use, server_tool_use: the input as JSON text
    return [{"type": "input_json_delta", "partial_json": orjson.dumps(block.get("input") or {}).decode()}]
