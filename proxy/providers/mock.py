"""`type: mock`: a built-in provider that answers offline and deterministically, shaped
like OpenAI's Chat Completions and Embeddings APIs so SDK features work against it.

The answer depends only on the request, so the same request always gets the same
answer. Usage is estimated at about four characters a token, the way real tokenizers
average on English. Streams are real SSE, paced by `chunk_interval_ms`, after
`latency_ms` before the first byte.

Chat:
- Text: "This is a mock answer from {model}. You said: {last user message}".
  `max_tokens`/`max_completion_tokens` cut it with `finish_reason: length`.
- Tools (`tools` of type function; legacy `functions`/`function_call` are ignored and
  get a text answer). A tool call is answered when `tool_choice` names a function or is
  `required`, or is `auto`/absent and the last message is not a tool result. The tool:
  the named one; otherwise the first whose name (or the name with `_`/`-` as spaces)
  appears in the last user message, case-insensitively; otherwise the first. A name
  not among the tools counts as `auto`; `allowed_tools` narrows the list and gives the
  mode. The call (always one; `parallel_tool_calls` is ignored) has id `call_` + a
  digest of the request and arguments that validate against the tool's `parameters`
  (see `schema_example`). After a tool result, without a forced choice, the answer is
  text quoting it ("... The tool returned: {result}"), so agent loops end.
- `response_format`: `json_object` → `{"answer": <the text>}`; `json_schema` → an
  instance of its `schema` (without one, as `json_object`). JSON and tool calls are never cut by `max_tokens` (a cut
  would be invalid JSON): they finish whole, with their usual finish reason.
- `n` gives n identical choices, streamed interleaved (each choice's role chunk,
  deltas and finish chunk in turn, round-robin, as OpenAI interleaves them).
- Tool calls stream as OpenAI's do: a first delta with id, name and empty arguments,
  then argument fragments, then an empty delta with `finish_reason: tool_calls`.
- Usage: prompt tokens count messages (text, tool calls, tool results), tool
  definitions and the response schema; completion tokens count the content, or the
  call's name and arguments, times n. Streams report the same (`include_usage`).

Embeddings: stable unit vectors (`dimensions`, default 16); `encoding_format: base64`
sends each as base64 of little-endian float32, as OpenAI does; others than
`float`/`base64` get a 400.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import orjson

from proxy import sse
from proxy.dialects import chat
from proxy.providers.base import Adapter, UpstreamRequest, UpstreamResponse
from proxy.providers.schema_example import Json, example

_JSON = [("content-type", "application/json")]
_SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
_FRAGMENT = 8  # characters of tool-call arguments per streamed chunk
_SNIPPET = 160  # characters of the user's message or a tool result quoted back


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _text_of(content: Json) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _message_text(message: dict[str, Any]) -> str:
    """What a message costs to read: its content plus any tool calls it made."""
    parts = [_text_of(message.get("content"))]
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append(f"{function.get('name', '')}{function.get('arguments', '')}")
    return " ".join(p for p in parts if p)


def prompt_tokens(messages: list[Json]) -> int:
    # 3 tokens of framing per message plus 3 to prime the answer, as OpenAI counts
    return 3 + sum(3 + estimate_tokens(_message_text(m)) for m in messages if isinstance(m, dict))


def request_prompt_tokens(body: dict[str, Any]) -> int:
    """The messages, plus the tool definitions and response schema the model also reads."""
    fmt = body.get("response_format")
    extra = [body.get("tools"), fmt.get("json_schema") if isinstance(fmt, dict) else None]
    read = sum(estimate_tokens(_dumps(e)) for e in extra if isinstance(e, (list, dict)))
    return prompt_tokens(body.get("messages") or []) + read


def _snippet(text: str) -> str:
    return " ".join(text.split())[:_SNIPPET]


def answer_text(model: str, messages: list[dict[str, Any]]) -> str:
    last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    return f"This is a mock answer from {model}. You said: {_snippet(last_user) or '(nothing)'}"


def _after_tool_text(model: str, messages: list[dict[str, Any]]) -> str:
    result = _snippet(_text_of(messages[-1].get("content")))
    return f"This is a mock answer from {model}. The tool returned: {result or '(nothing)'}"


def _dumps(value: Json) -> str:
    # compact like OpenAI's own JSON; key order kept, as the schema lists properties
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _limit(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _n(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def _digest(value: Json) -> str:
    return hashlib.blake2b(orjson.dumps(value, option=orjson.OPT_SORT_KEYS), digest_size=12).hexdigest()


# ------------------------------------------------------------------ tools


def _function_tools(tools: Json) -> list[dict[str, Any]]:
    """The `function` part of each function tool offered."""
    if not isinstance(tools, list):
        return []
    return [
        t["function"]
        for t in tools
        if isinstance(t, dict)
        and t.get("type", "function") == "function"
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    ]


def _named(choice: Json) -> str | None:
    """The function name a tool choice (or allowed-tools entry) names, if any."""
    if not isinstance(choice, dict) or choice.get("type") != "function":
        return None
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else choice.get("name")  # Responses style
    return name if isinstance(name, str) else None


def _last_role(messages: list[Json]) -> str | None:
    role = messages[-1].get("role") if messages and isinstance(messages[-1], dict) else None
    return role if isinstance(role, str) else None


def _mentioned(tools: list[dict[str, Any]], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    said = last_user.lower()
    for tool in tools:
        name = tool["name"].lower()
        if name in said or name.replace("_", " ").replace("-", " ") in said:
            return tool
    return None


def choose_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function (`{"name", "parameters", ...}`) the answer calls, or None for text."""
    tools = _function_tools(body.get("tools"))
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = listed if isinstance(listed := choice.get("allowed_tools"), dict) else {}
        names = {_named(t) for t in allowed.get("tools") or ()}
        tools = [t for t in tools if t["name"] in names]
        choice = allowed.get("mode", "auto")
    if not tools or choice == "none":
        return None
    forced = next((t for t in tools if t["name"] == _named(choice)), None)
    if forced is not None:
        return forced
    messages = body.get("messages") or []
    if choice != "required" and _last_role(messages) in ("tool", "function"):
        return None  # the tool has answered: say so in text, so agent loops end
    return _mentioned(tools, messages) or tools[0]


class FunctionCall(TypedDict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(TypedDict):
    """One entry of an assistant message's `tool_calls`."""

    id: str
    type: Literal["function"]
    function: FunctionCall


def tool_call(body: dict[str, Any], function: dict[str, Any]) -> ToolCall:
    """One call of `function` with arguments valid against its `parameters` schema."""
    parameters = function.get("parameters")
    arguments = example(parameters, function["name"]) if isinstance(parameters, dict) and parameters else {}
    text = _dumps(arguments if isinstance(arguments, dict) else {})
    call_id = "call_" + _digest([body.get("model"), body.get("messages"), function["name"], text])
    return {"id": call_id, "type": "function", "function": {"name": function["name"], "arguments": text}}


# ------------------------------------------------------------------ the answer


@dataclass(frozen=True, slots=True)
class Reply:
    """What each of the n (identical) choices says, and the usage of all of them."""

    content: str | None
    call: ToolCall | None
    finish_reason: str
    usage: dict[str, int]

    def message(self) -> dict[str, Any]:
        if self.call is None:
            return {"role": "assistant", "content": self.content}
        return {"role": "assistant", "content": None, "tool_calls": [self.call]}


def _structured(body: dict[str, Any], text: str) -> str | None:
    """The JSON content `response_format` asks for, or None for plain text."""
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
    if kind == "json_schema" and isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
        return _dumps(example(spec["schema"], str(spec.get("name") or "answer")))
    if kind in ("json_object", "json_schema"):
        return _dumps({"answer": text})
    return None


def reply(body: dict[str, Any]) -> Reply:
    model = body.get("model", "mock")
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    n = _n(body)
    prompt = request_prompt_tokens(body)
    function = choose_tool(body)
    if function is not None:
        call = tool_call(body, function)
        spent = estimate_tokens(call["function"]["name"] + call["function"]["arguments"]) * n
        return Reply(None, call, "tool_calls", _usage(prompt, spent))
    after_tool = _last_role(messages) in ("tool", "function")
    text = _after_tool_text(model, messages) if after_tool else answer_text(model, messages)
    content, finish = _structured(body, text), "stop"
    if content is None:
        content, finish = _truncate(text, _limit(body))
    return Reply(content, None, finish, _usage(prompt, estimate_tokens(content) * n))


def _truncate(text: str, limit: int | None) -> tuple[str, str]:
    if limit is not None and estimate_tokens(text) > limit:
        return text[: limit * 4], "length"
    return text, "stop"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion_id(body: dict[str, Any]) -> str:
    return "chatcmpl-mock" + _digest(body.get("messages"))


def _meta(body: dict[str, Any]) -> dict[str, Any]:
    return chat.chunk_meta(_completion_id(body), int(time.time()), body.get("model", "mock"), "fp_mock")


def completion(body: dict[str, Any]) -> dict[str, Any]:
    answer = reply(body)
    meta = _meta(body)
    choices = [
        {"index": i, "message": answer.message(), "finish_reason": answer.finish_reason, "logprobs": None}
        for i in range(_n(body))
    ]
    return {"id": meta["id"], "object": "chat.completion", "created": meta["created"], "model": meta["model"],
            "system_fingerprint": meta["system_fingerprint"], "choices": choices, "usage": answer.usage}


# ------------------------------------------------------------------ streams


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p if i == len(parts) - 1 else p + " " for i, p in enumerate(parts)]


def _deltas(answer: Reply) -> list[tuple[dict[str, Any], str | None]]:
    """One choice's stream: (delta, finish_reason) from the role chunk to the finish."""
    steps: list[tuple[dict[str, Any], str | None]]
    if answer.call is None:
        text = answer.content or ""
        steps = [({"role": "assistant", "content": ""}, None)]
        steps += [({"content": word}, None) for word in _words(text) if word]
    else:
        function = answer.call["function"]
        head = {"index": 0, "id": answer.call["id"], "type": "function",
                "function": {"name": function["name"], "arguments": ""}}
        steps = [({"role": "assistant", "content": None, "tool_calls": [head]}, None)]
        arguments = function["arguments"]
        steps += [
            ({"tool_calls": [{"index": 0, "function": {"arguments": arguments[i : i + _FRAGMENT]}}]}, None)
            for i in range(0, len(arguments), _FRAGMENT)
        ]
    return [*steps, ({}, answer.finish_reason)]


def stream_events(body: dict[str, Any]) -> list[bytes]:
    answer = reply(body)
    meta = _meta(body)
    steps = _deltas(answer)
    # round-robin over the choices, as OpenAI interleaves them
    events = [sse.encode(chat.chunk(meta, delta, index=i, finish_reason=finish))
              for delta, finish in steps for i in range(_n(body))]
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        events.append(sse.encode(chat.usage_chunk(meta, answer.usage)))
    events.append(sse.DONE)
    return events


# ------------------------------------------------------------------ embeddings


_ENCODINGS = ("float", "base64")


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)) else raw
    dims = asked if isinstance(asked := body.get("dimensions"), int) and asked > 0 else 16
    as_base64 = body.get("encoding_format") == "base64"
    data: list[dict[str, Any]] = []
    tokens = 0
    for i, item in enumerate(inputs or []):
        text = item if isinstance(item, str) else " ".join(map(str, item))
        tokens += estimate_tokens(text) if isinstance(item, str) else len(item)
        vector = _vector(text, dims)
        data.append({"object": "embedding", "index": i, "embedding": _base64(vector) if as_base64 else vector})
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", "mock"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _base64(vector: list[float]) -> str:
    # what OpenAI sends and the SDKs decode: little-endian float32, base64
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _vector(text: str, dims: int) -> list[float]:
    values: list[float] = []
    counter = 0
    while len(values) < dims:
        block = hashlib.sha256(f"{counter}\x00{text}".encode()).digest()
        values.extend(v / 2**31 for v in struct.unpack(">8i", block))
        counter += 1
    values = values[:dims]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _bad_request(message: str, param: str) -> UpstreamResponse:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return UpstreamResponse(400, list(_JSON), body=orjson.dumps({"error": error}))


# ------------------------------------------------------------------ the adapter


class MockAdapter(Adapter):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if self.spec.latency_ms:
            await asyncio.sleep(self.spec.latency_ms / 1000)
        if request.endpoint == "embeddings":
            fmt = request.body.get("encoding_format")
            if fmt is not None and fmt not in _ENCODINGS:
                return _bad_request(f"'encoding_format' must be one of {', '.join(_ENCODINGS)}.", "encoding_format")
            return UpstreamResponse(200, list(_JSON), body=orjson.dumps(embeddings(request.body)))
        if request.stream:
            return UpstreamResponse(200, list(_SSE), chunks=self._stream(request.body))
        answer = completion(request.body)
        return UpstreamResponse(200, list(_JSON), body=orjson.dumps(answer), answer=answer)

    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        interval = self.spec.chunk_interval_ms / 1000
        for i, event in enumerate(stream_events(body)):
            if i and interval:
                await asyncio.sleep(interval)
            yield event
