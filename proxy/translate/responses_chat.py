"""Responses API in, Chat Completions out, and back: serves `POST /v1/responses` from any
provider that speaks Chat Completions (and, chained with a chat → Messages translator,
from Anthropic).

Request: `instructions` becomes a system message first and `input` the messages: a
string one user message; `message` items a message of their role (text parts, images
by URL); `function_call` items an assistant message's `tool_calls`, adjacent calls and
that turn's assistant text in one message (chat wants the tool results right after it);
`function_call_output` items `tool` messages; reasoning items are left out. Function
tools, tool_choice, `text.format` (→ response_format), max_output_tokens
(→ max_completion_tokens), sampling, user and stream carry over, and a stream always
asks for usage (a Responses stream always reports it). What chat cannot do (hosted
tools, uploaded files, stored items) is a 400 naming the field; fields chat has no
equivalent for (reasoning, include, truncation, previous_response_id...) are not sent,
and `dropped` names them.

Answer: a `response` object with a message item (output_text, refusal) and function_call
items, status completed (incomplete, with its reason, when the output hit its cap or a
content filter), usage, and the request fields a response echoes. Every id derives from
the chat completion's, so a stream and a JSON answer of one completion agree.

Stream: chat chunks become Responses events as they arrive: `response.created` and
`response.in_progress` at the first chunk; a message item and its content part when the
first text (or refusal) comes, then a delta per chunk; a function_call item at a tool
call's first fragment, then its argument deltas; at `[DONE]` every item's done events
and the final `response.completed` (or `.incomplete`) with the whole response, shaped as
`answer` shapes it. A stream that ends before its finish and `[DONE]`, or carries an
error, raises UpstreamError(kind="stream_cut").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from proxy import sse
from proxy.dialects.responses import FINAL_EVENTS, TOOL_CHOICES, Events, count
from proxy.errors import InvalidRequest, UpstreamError, shown
from proxy.translate.base import Translator

NEEDS_RESPONSES = "needs a provider that serves the Responses API"
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}  # finish_reason → reason
SERVICE_TIERS = frozenset({"auto", "default", "flex", "scale", "priority"})
_IMAGE_DETAIL = frozenset({"auto", "low", "high"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_COPIED = ("temperature", "top_p", "user", "prompt_cache_key", "safety_identifier")
# fields `request` carries over, or that need nothing (store: nothing is stored either way;
# metadata: echoed in the response; stream_options: obfuscation, which nothing here adds)
_TRANSLATED = frozenset({
    "model", "input", "instructions", "stream", "stream_options", "max_output_tokens", "temperature", "top_p",
    "tools", "tool_choice", "parallel_tool_calls", "text", "user", "prompt_cache_key", "safety_identifier",
    "metadata", "store",
    "previous_response_id",  # the pipeline prepends the stored conversation (proxy/responses_store.py)
})
_DEFAULTS: dict[str, tuple[Any, ...]] = {"truncation": ("disabled",), "service_tier": ("auto", "default")}


class ResponsesToChat(Translator):
    passthrough = False

    def __init__(self) -> None:
        super().__init__("chat/completions")

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        return to_chat(body)

    def answer(self, answer: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        return to_response(answer, body)

    def stream(self, chunks: AsyncIterator[bytes], body: dict[str, Any], provider: str) -> AsyncIterator[bytes]:
        return translate_stream(chunks, body, provider)

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        return status, body  # chat's errors are already OpenAI's shape, which the Responses API shares

    def dropped(self, body: dict[str, Any]) -> list[str]:
        return [field for field, value in body.items() if field not in _TRANSLATED and not _default_ish(field, value)]


def _default_ish(field: str, value: Any) -> bool:
    if value in (None, False, "", [], {}):
        return True
    if isinstance(value, dict) and all(v is None for v in value.values()):
        return True  # reasoning: {"effort": null, "summary": null}
    return value in _DEFAULTS.get(field, ())


# ---------------------------------------------------------------- requests


def to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Responses request body as a Chat Completions one."""
    if body.get("conversation") is not None:
        raise InvalidRequest(f"conversation {NEEDS_RESPONSES}; chain requests with previous_response_id instead.",
                             param="conversation")
    out: dict[str, Any] = {}
    if body.get("model") is not None:
        out["model"] = body["model"]
    out["messages"] = _messages(body)
    tools = _tools(body.get("tools"))
    choice = _tool_choice(body.get("tool_choice"))
    if tools:  # chat refuses tool_choice and parallel_tool_calls without tools
        out["tools"] = tools
        if choice is not None:
            out["tool_choice"] = choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    text = body.get("text")
    if isinstance(text, dict):
        response_format = _response_format(text.get("format"))
        if response_format is not None:
            out["response_format"] = response_format
        if text.get("verbosity") is not None:
            out["verbosity"] = text["verbosity"]
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    for field in _COPIED:
        if body.get(field) is not None:
            out[field] = body[field]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    value = body.get("input")
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _add_item(messages, item, f"input[{i}]")
    return messages


def _add_item(messages: list[dict[str, Any]], item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise InvalidRequest(f"'{where}' must be an object.", param=where)
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role == "assistant":
            _add_assistant_text(messages, item.get("content"), where)
        elif role in ("user", "system", "developer"):
            messages.append({"role": role, "content": _content(item.get("content"), where, str(role))})
        else:
            raise InvalidRequest(f"'{where}.role' must be one of assistant, developer, system, user.",
                                 param=f"{where}.role")
    elif kind == "function_call":
        call = {"id": _string(item, "call_id", where), "type": "function",
                "function": {"name": _string(item, "name", where), "arguments": _string(item, "arguments", where)}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)  # one turn: its text and its calls
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", where),
                         "content": _tool_output(item.get("output"), where)})
    elif kind == "reasoning":
        return  # the model's own reasoning from an earlier turn: chat has no place for it
    elif kind is None:
        raise InvalidRequest(f"Missing required parameter: '{where}.type'.", param=f"{where}.type")
    else:
        raise InvalidRequest(f"input item type {shown(str(kind))} {NEEDS_RESPONSES}.", param=f"{where}.type")


def _string(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"Missing required parameter: '{where}.{key}' (a string).", param=f"{where}.{key}")
    return value


def _add_assistant_text(messages: list[dict[str, Any]], content: Any, where: str) -> None:
    text, refusal = _assistant_content(content, where)
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
        # text after the calls of one turn: the turn's tool results must follow its calls
        if text is not None:
            last["content"] = text if last.get("content") is None else _as_parts(last["content"]) + _as_parts(text)
        if refusal is not None:
            last["refusal"] = (last.get("refusal") or "") + refusal
        return
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if refusal is not None:
        message["refusal"] = refusal
    messages.append(message)


def _as_parts(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _assistant_content(content: Any, where: str) -> tuple[str | list[dict[str, Any]] | None, str | None]:
    """(text: a string, text parts or None; refusal or None) of an assistant message."""
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}.content' must be a string or an array of content parts.",
                             param=f"{where}.content")
    texts: list[str] = []
    refusals: list[str] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            texts.append(_string(part, "text", at))
        elif kind == "refusal":
            refusals.append(_string(part, "refusal", at))
        else:
            raise InvalidRequest(f"an assistant message cannot hold a {shown(str(kind))} part.", param=f"{at}.type")
    text = _collapsed([{"type": "text", "text": t} for t in texts]) if texts else None
    return text, ("".join(refusals) if refusals else None)


def _collapsed(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as plain content (what every chat provider reads); more as parts."""
    return parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text" else parts


def _content(content: Any, where: str, role: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}.content' must be a string or an array of content parts.",
                             param=f"{where}.content")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict):
            raise InvalidRequest(f"'{at}' must be an object.", param=at)
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": _string(part, "text", at)})
        elif kind == "input_image":
            parts.append(_image(part, at, role))
        elif kind == "input_file":
            raise InvalidRequest(f"input_file parts {NEEDS_RESPONSES}.", param=f"{at}.type")
        else:
            raise InvalidRequest(f"unsupported content part type {shown(str(kind))}.", param=f"{at}.type")
    return _collapsed(parts)


def _image(part: Mapping[str, Any], at: str, role: str) -> dict[str, Any]:
    if role != "user":
        raise InvalidRequest(f"images can only be sent in user messages, not {role} ones.", param=f"{at}.type")
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        if part.get("file_id") is not None:
            raise InvalidRequest(f"images uploaded as files {NEEDS_RESPONSES}; send the image_url (a URL or a "
                                 "data: URL) instead.", param=f"{at}.file_id")
        raise InvalidRequest(f"Missing required parameter: '{at}.image_url'.", param=f"{at}.image_url")
    image: dict[str, Any] = {"url": url}
    if part.get("detail") in _IMAGE_DETAIL:
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _tool_output(output: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise InvalidRequest(f"'{where}.output' must be a string or an array of content parts.",
                             param=f"{where}.output")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(output):
        at = f"{where}.output[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict) or kind not in _TEXT_PARTS:
            raise InvalidRequest(f"tool outputs other than text {NEEDS_RESPONSES}.", param=f"{at}.type")
        parts.append({"type": "text", "text": _string(part, "text", at)})
    return _collapsed(parts) if parts else ""


def _tools(tools: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or kind != "function":
            raise InvalidRequest(f"tool type {shown(str(kind))} {NEEDS_RESPONSES}.", param=f"tools[{i}].type")
        function: dict[str, Any] = {"name": tool.get("name")}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice is None or (isinstance(choice, str) and choice in TOOL_CHOICES):
        return choice
    if not isinstance(choice, dict):
        raise InvalidRequest("'tool_choice' must be none, auto, required or an object.", param="tool_choice")
    kind = choice.get("type")
    if kind == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    if kind == "allowed_tools":
        tools = []
        for k, tool in enumerate(choice.get("tools") or ()):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                named = tool.get("type") if isinstance(tool, dict) else None
                raise InvalidRequest(f"tool type {shown(str(named))} {NEEDS_RESPONSES}.",
                                     param=f"tool_choice.tools[{k}].type")
            tools.append({"type": "function", "function": {"name": tool.get("name")}})
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice.get("mode", "auto"), "tools": tools}}
    raise InvalidRequest(f"tool_choice type {shown(str(kind))} {NEEDS_RESPONSES}.", param="tool_choice.type")


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":  # Responses puts the schema's fields at the format's level
        schema = {key: fmt[key] for key in ("name", "description", "schema", "strict") if fmt.get(key) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest(f"text format {shown(str(fmt['type']))} {NEEDS_RESPONSES}.", param="text.format.type")


# ---------------------------------------------------------------- answers


class Ids:
    """The ids of one response's objects, derived from its chat completion's id."""

    __slots__ = ("suffix",)

    def __init__(self, chat_id: Any) -> None:
        suffix = chat_id.removeprefix("chatcmpl-") if isinstance(chat_id, str) else ""
        self.suffix = suffix or uuid.uuid4().hex

    @property
    def response(self) -> str:
        return "resp_" + self.suffix

    @property
    def message(self) -> str:
        return "msg_" + self.suffix

    def call(self, position: int) -> str:
        """A call id for a tool call that came without one."""
        return f"call_{self.suffix}_{position}"

    @staticmethod
    def function_call(call_id: str) -> str:
        return "fc_" + call_id.removeprefix("call_")


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def message_item(id_: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": id_, "type": "message", "status": status, "role": "assistant", "content": content}


def function_call_item(id_: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": id_, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def responses_usage(usage: Any) -> dict[str, Any] | None:
    """A chat `usage` object as the Responses API's."""
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, Mapping) else 0
    reasoning = count(completion_details.get("reasoning_tokens")) if isinstance(completion_details, Mapping) else 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": count(usage.get("total_tokens")) or prompt + completion}


def status_of(finish_reason: Any) -> tuple[str, str | None]:
    """(the response's status, why it is incomplete) for a chat finish_reason."""
    reason = INCOMPLETE.get(str(finish_reason))
    return ("incomplete", reason) if reason else ("completed", None)


def envelope(body: Mapping[str, Any], *, id_: str, created: Any, model: Any, status: str, reason: str | None,
             output: list[dict[str, Any]], usage: dict[str, Any] | None, service_tier: Any) -> dict[str, Any]:
    """A response object: what the model said, and the request fields a response echoes."""
    text = _object(body.get("text"))
    echoed_text: dict[str, Any] = {"format": text.get("format") or {"type": "text"}}
    if text.get("verbosity") is not None:
        echoed_text["verbosity"] = text["verbosity"]
    temperature, top_p = body.get("temperature"), body.get("top_p")
    parallel = body.get("parallel_tool_calls")
    return {
        "id": id_,
        "object": "response",
        "created_at": created if isinstance(created, (int, float)) and not isinstance(created, bool)
        else int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model if isinstance(model, str) and model else str(body.get("model") or ""),
        "output": output,
        "parallel_tool_calls": parallel if isinstance(parallel, bool) else True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": None,
        "service_tier": service_tier if service_tier in SERVICE_TIERS else None,
        "temperature": temperature if temperature is not None else 1.0,
        "text": echoed_text,
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": list(body.get("tools") or ()),
        "top_p": top_p if top_p is not None else 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def to_response(completion: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """A chat completion as the response object a Responses client expects."""
    choices = [c for c in completion.get("choices") or () if isinstance(c, Mapping)]
    choice = next((c for c in choices if c.get("index", 0) == 0), choices[0] if choices else {})
    message = _object(choice.get("message"))
    ids = Ids(completion.get("id"))
    status, reason = status_of(choice.get("finish_reason"))
    item_status = "incomplete" if status == "incomplete" else "completed"
    output: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    text = _chat_text(message.get("content"))
    if text:
        content.append(output_text(text))
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        content.append({"type": "refusal", "refusal": message["refusal"]})
    if content:
        output.append(message_item(ids.message, content, item_status))
    for position, call in enumerate(message.get("tool_calls") or ()):
        if not isinstance(call, Mapping):
            continue
        function = _object(call.get("function"))
        call_id = _text(call.get("id")) or ids.call(position)
        output.append(function_call_item(Ids.function_call(call_id), call_id, _text(function.get("name")),
                                         _text(function.get("arguments")), item_status))
    return envelope(body, id_=ids.response, created=completion.get("created"), model=completion.get("model"),
                    status=status, reason=reason, output=output, usage=responses_usage(completion.get("usage")),
                    service_tier=completion.get("service_tier"))


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _chat_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content
                       if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""


# ---------------------------------------------------------------- streams


class _Message:
    """The message item a stream is building: its content parts in the order they opened."""

    __slots__ = ("id", "index", "parts")

    def __init__(self, id_: str, index: int) -> None:
        self.id, self.index = id_, index
        self.parts: dict[str, str] = {}  # output_text | refusal → the text so far (dicts keep their order)

    def content_index(self, kind: str) -> int:
        return list(self.parts).index(kind)

    def final(self, status: str) -> dict[str, Any]:
        content = [output_text(text) if kind == "output_text" else {"type": "refusal", "refusal": text}
                   for kind, text in self.parts.items()]
        return message_item(self.id, content, status)

    def close(self, emit: Events, status: str) -> list[bytes]:
        events: list[bytes] = []
        item = self.final(status)
        for content_index, (kind, part) in enumerate(zip(self.parts, item["content"], strict=True)):
            at = {"item_id": self.id, "output_index": self.index, "content_index": content_index}
            if kind == "output_text":
                events.append(emit("response.output_text.done", **at, text=part["text"], logprobs=[]))
            else:
                events.append(emit("response.refusal.done", **at, refusal=part["refusal"]))
            events.append(emit("response.content_part.done", **at, part=part))
        events.append(emit("response.output_item.done", output_index=self.index, item=item))
        return events


class _Call:
    """A function_call item a stream is building from a chat tool call's fragments."""

    __slots__ = ("id", "index", "call_id", "name", "arguments")

    def __init__(self, call_id: str, name: str, index: int) -> None:
        self.id, self.call_id, self.name, self.index = Ids.function_call(call_id), call_id, name, index
        self.arguments = ""

    def final(self, status: str) -> dict[str, Any]:
        return function_call_item(self.id, self.call_id, self.name, self.arguments, status)

    def close(self, emit: Events, status: str) -> list[bytes]:
        return [emit("response.function_call_arguments.done", item_id=self.id, output_index=self.index,
                     arguments=self.arguments),
                emit("response.output_item.done", output_index=self.index, item=self.final(status))]


class StreamTranslator:
    """Chat chunk payloads in, framed Responses events out."""

    def __init__(self, body: Mapping[str, Any], provider: str) -> None:
        self.body, self.provider = body, provider
        self.emit = Events()
        self.ids: Ids | None = None
        self.created: Any = None
        self.model: Any = None
        self.service_tier: Any = None
        self.items: list[_Message | _Call] = []  # in output order
        self.message: _Message | None = None
        self.calls: dict[int, _Call] = {}  # chat tool call index → its item
        self.finish: str | None = None
        self.usage: Any = None
        self.done = False

    def event(self, data: bytes) -> list[bytes]:
        """The events one chat chunk's payload makes."""
        if self.done:
            return []
        if data.strip() == b"[DONE]":
            return self._close()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(chunk, dict):
            return []
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamError(f"provider {self.provider} stream error: {message or 'unknown'}", kind="stream_cut")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if chunk.get("service_tier") is not None:
            self.service_tier = chunk["service_tier"]
        out = self._open(chunk) if self.ids is None else []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = _object(choice.get("delta"))
            for kind, key in (("output_text", "content"), ("refusal", "refusal")):
                if isinstance(delta.get(key), str) and delta[key]:
                    out += self._text(kind, delta[key])
            for fragment in delta.get("tool_calls") or ():
                if isinstance(fragment, dict):
                    out += self._call(fragment)
            if choice.get("finish_reason"):
                self.finish = str(choice["finish_reason"])
        return out

    def _open(self, chunk: dict[str, Any]) -> list[bytes]:
        self.ids = Ids(chunk.get("id"))
        self.created, self.model = chunk.get("created"), chunk.get("model")
        response = self._response("in_progress", None, [], None)
        return [self.emit("response.created", response=response), self.emit("response.in_progress", response=response)]

    def _response(self, status: str, reason: str | None, output: list[dict[str, Any]],
                  usage: dict[str, Any] | None) -> dict[str, Any]:
        assert self.ids is not None
        return envelope(self.body, id_=self.ids.response, created=self.created, model=self.model, status=status,
                        reason=reason, output=output, usage=usage, service_tier=self.service_tier)

    def _text(self, kind: str, delta: str) -> list[bytes]:
        assert self.ids is not None
        out: list[bytes] = []
        message = self.message
        if message is None:
            message = self.message = _Message(self.ids.message, len(self.items))
            self.items.append(message)
            out.append(self.emit("response.output_item.added", output_index=message.index,
                                 item=message_item(message.id, [], "in_progress")))
        opening = kind not in message.parts
        message.parts[kind] = message.parts.get(kind, "") + delta
        at = {"item_id": message.id, "output_index": message.index, "content_index": message.content_index(kind)}
        if opening:
            part = output_text("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
            out.append(self.emit("response.content_part.added", **at, part=part))
        if kind == "output_text":
            out.append(self.emit("response.output_text.delta", **at, delta=delta, logprobs=[]))
        else:
            out.append(self.emit("response.refusal.delta", **at, delta=delta))
        return out

    def _call(self, fragment: dict[str, Any]) -> list[bytes]:
        assert self.ids is not None
        out: list[bytes] = []
        position = fragment.get("index")
        if not isinstance(position, int):
            position = len(self.calls)
        function = _object(fragment.get("function"))
        name = _text(function.get("name"))
        call = self.calls.get(position)
        if call is None:
            call_id = _text(fragment.get("id")) or self.ids.call(position)
            call = self.calls[position] = _Call(call_id, name, len(self.items))
            self.items.append(call)
            out.append(self.emit("response.output_item.added", output_index=call.index,
                                 item=call.final("in_progress")))
        else:
            call.name += name  # a name in pieces, as some providers send it
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.arguments += arguments
            out.append(self.emit("response.function_call_arguments.delta", item_id=call.id, output_index=call.index,
                                 delta=arguments))
        return out

    def _close(self) -> list[bytes]:
        if self.ids is None or self.finish is None:
            raise UpstreamError(f"provider {self.provider} ended the stream before its finish", kind="stream_cut")
        status, reason = status_of(self.finish)
        item_status = "incomplete" if status == "incomplete" else "completed"
        out: list[bytes] = []
        for item in self.items:
            out += item.close(self.emit, item_status)
        output = [item.final(item_status) for item in self.items]
        response = self._response(status, reason, output, responses_usage(self.usage))
        out.append(self.emit(FINAL_EVENTS[status], response=response))
        self.done = True
        return out


async def translate_stream(chunks: AsyncIterator[bytes], body: Mapping[str, Any],
                           provider: str) -> AsyncIterator[bytes]:
    translator = StreamTranslator(body, provider)
    splitter = sse.EventSplitter()
    async for chunk in chunks:
        out: list[bytes] = []
        try:
            for event in splitter.feed(chunk):
                data = sse.event_data(event)
                if data is not None:
                    out += translator.event(data)
        except UpstreamError:
            if out:
                yield b"".join(out)  # what came before the error, then the error
            raise
        if out:
            yield b"".join(out)
    if not translator.done:
        raise UpstreamError(f"provider {provider} ended the stream before [DONE]", kind="stream_cut")
