"""OpenAI Responses API (`POST /v1/responses`): its request checks, its usage, the reading
of its stream and the replay of a stored response as one.

A Responses stream is a run of typed events, framed as OpenAI frames them (an `event:
<type>` line, then the JSON `data:` line that repeats the type) and numbered by
`sequence_number` from 0: `response.created` and `response.in_progress` open it; each
output item comes as `response.output_item.added`, its deltas (`response.output_text.delta`,
`response.function_call_arguments.delta`, ...) and `response.output_item.done`; a
`response.completed` (or `.incomplete`, `.failed`) carrying the whole response, usage
included, ends it. `Events` numbers and frames them, for both the chat translator's live
stream and the cache's replay, so every Responses stream the gateway makes has one shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from proxy import sse
from proxy.dialects.base import Dialect, Inbound, Usage
from proxy.errors import InvalidRequest, ProxyError
from proxy.validation import _check_int, _check_number, _check_type, _kind, check_name

# the events that end a stream, carrying the whole response
FINAL_EVENTS = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}
_FINAL = re.compile(rb"response\.(?:completed|incomplete|failed)")

TOOL_CHOICES = frozenset({"none", "auto", "required"})
MAX_METADATA_KEYS = 16
_INPUT_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def frame(event: Mapping[str, Any]) -> bytes:
    """One event as OpenAI frames it: its type on an `event:` line, then its JSON."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class Events:
    """Numbers and frames the events of one stream, from sequence number 0."""

    __slots__ = ("sequence",)

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, type_: str, **fields: Any) -> bytes:
        event = {"type": type_, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return frame(event)


def count(value: Any) -> int:
    """A token count as a usage object says it; 0 for anything that is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def normalised_usage(usage: Any) -> Usage | None:
    """A Responses `usage` object in the chat shape the pipeline reads (input counts cached)."""
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = count(usage.get("input_tokens")), count(usage.get("output_tokens"))
    details = usage.get("input_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": count(usage.get("total_tokens")) or prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def text_of(content: Any) -> str:
    """The text of a message's content (a string, or text parts joined by newlines)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [part["text"] for part in content
             if isinstance(part, dict) and part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str)]
    return "\n".join(texts)


# ---------------------------------------------------------------- request checks


def check_responses(body: dict[str, Any]) -> None:
    """What the gateway relies on, or can cheaply get right, of a `POST /v1/responses` body."""
    check_name(body.get("model"), "model")
    _check_input(body)
    _check_type(body, "instructions", str, "a string")
    _check_type(body, "stream", bool, "a boolean")
    _check_int(body, "max_output_tokens", 1)
    _check_number(body, "temperature", 0, 2)
    _check_number(body, "top_p", 0, 1)
    _check_tools(body.get("tools"))
    _check_tool_choice(body.get("tool_choice"))
    _check_text(body.get("text"))
    _check_metadata(body.get("metadata"))
    check_name(body.get("user"), "user")
    _check_type(body, "previous_response_id", str, "a string")
    for field in ("store", "parallel_tool_calls"):
        _check_type(body, field, bool, "a boolean")


def _check_input(body: dict[str, Any]) -> None:
    if body.get("input") is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    value = body["input"]
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("'input' must not be empty.", param="input")
        return
    if not isinstance(value, list):
        raise InvalidRequest(f"'input' must be a string or an array of input items, not {_kind(value)}.",
                             param="input")
    if not value:
        raise InvalidRequest("'input' must contain at least one item.", param="input")
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"'{where}' must be an object, not {_kind(item)}.", param=where)
        kind = item.get("type")
        if kind is not None and not isinstance(kind, str):
            raise InvalidRequest(f"'{where}.type' must be a string, not {_kind(kind)}.", param=f"{where}.type")
        if kind in (None, "message"):
            role = item.get("role")
            if not isinstance(role, str) or role not in _INPUT_ROLES:
                raise InvalidRequest(f"'{where}.role' must be one of {', '.join(sorted(_INPUT_ROLES))}.",
                                     param=f"{where}.role")
            content = item.get("content")
            if not isinstance(content, (str, list)):
                raise InvalidRequest(f"'{where}.content' must be a string or an array of content parts, "
                                     f"not {_kind(content)}.", param=f"{where}.content")


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest(f"'tools' must be an array, not {_kind(tools)}.", param="tools")
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"'{where}' must be an object, not {_kind(tool)}.", param=where)
        if not isinstance(tool.get("type"), str):
            raise InvalidRequest(f"'{where}.type' must be a string.", param=f"{where}.type")
        if tool["type"] == "function" and not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"Missing required parameter: '{where}.name'.", param=f"{where}.name")


def _check_tool_choice(choice: Any) -> None:
    if choice is None or (isinstance(choice, str) and choice in TOOL_CHOICES):
        return
    if isinstance(choice, dict):
        if not isinstance(choice.get("type"), str):
            raise InvalidRequest("'tool_choice.type' must be a string.", param="tool_choice.type")
        return
    raise InvalidRequest(f"'tool_choice' must be one of {', '.join(sorted(TOOL_CHOICES))} or an object.",
                         param="tool_choice")


def _check_text(text: Any) -> None:
    if text is None:
        return
    if not isinstance(text, dict):
        raise InvalidRequest(f"'text' must be an object, not {_kind(text)}.", param="text")
    fmt = text.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise InvalidRequest("'text.format' must be an object with a string 'type'.", param="text.format")
    if fmt["type"] == "json_schema":
        if not isinstance(fmt.get("name"), str):
            raise InvalidRequest("Missing required parameter: 'text.format.name'.", param="text.format.name")
        if not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest("Missing required parameter: 'text.format.schema'.", param="text.format.schema")


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise InvalidRequest(f"'metadata' must be an object, not {_kind(metadata)}.", param="metadata")
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidRequest(f"'metadata' must have at most {MAX_METADATA_KEYS} keys, got {len(metadata)}.",
                             param="metadata")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise InvalidRequest("'metadata' keys must be at most 64 characters and its values strings of at "
                                 "most 512.", param="metadata")


# ---------------------------------------------------------------- streams


class ResponsesObserver:
    """Reads a Responses stream's usage (and, asked to, its whole response) from its last
    event; the other events are not parsed: only events whose bytes name a final event
    type are, which is the last one (or, rarely, a delta quoting such a name)."""

    __slots__ = ("usage", "_capture", "_splitter", "_response")

    def __init__(self, capture: bool) -> None:
        self.usage: Usage | None = None
        self._capture = capture
        self._splitter = sse.EventSplitter()
        self._response: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> None:
        done = self._splitter.feed_raw(chunk)
        if not done or _FINAL.search(done) is None:
            return
        seen = -1
        for match in _FINAL.finditer(done):
            if match.start() < seen:
                continue  # another mention within an event already read
            start, stop, seen = sse.event_at(done, match.start())
            self._read(done[start:stop])

    def _read(self, event: bytes) -> None:
        data = sse.event_data(event)
        if data is None:
            return
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(parsed, dict) or parsed.get("type") not in FINAL_EVENTS.values():
            return
        response = parsed.get("response")
        if not isinstance(response, dict):
            return
        usage = normalised_usage(response.get("usage"))
        if usage is not None:
            self.usage = usage
        if self._capture and parsed["type"] == "response.completed" and response.get("status") == "completed":
            self._response = response

    def answer(self) -> dict[str, Any] | None:
        return self._response


def replay_events(response: Mapping[str, Any]) -> list[bytes]:
    """A stored response as the events of a live stream of it, one event per element."""
    emit = Events()
    start = {**response, "status": "in_progress", "output": [], "usage": None, "error": None,
             "incomplete_details": None}
    if "completed_at" in start:
        start["completed_at"] = None
    events = [emit("response.created", response=start), emit("response.in_progress", response=start)]
    for index, item in enumerate(response.get("output") or ()):
        if isinstance(item, Mapping):
            events += item_events(emit, item, index)
    final = FINAL_EVENTS.get(str(response.get("status")), "response.completed")
    events.append(emit(final, response=dict(response)))
    return events


def item_events(emit: Events, item: Mapping[str, Any], index: int) -> list[bytes]:
    """The events that stream one finished output item: added, its deltas, done."""
    item_id = str(item.get("id") or item.get("call_id") or "")
    where = {"item_id": item_id, "output_index": index}
    kind = item.get("type")
    events = [emit("response.output_item.added", output_index=index, item=_opening(item))]
    if kind == "message":
        for content_index, part in enumerate(item.get("content") or ()):
            events += _part_events(emit, where, content_index, part)
    elif kind == "function_call":
        arguments = str(item.get("arguments") or "")
        if arguments:
            events.append(emit("response.function_call_arguments.delta", **where, delta=arguments))
        events.append(emit("response.function_call_arguments.done", **where, arguments=arguments))
    elif kind == "reasoning":
        for summary_index, part in enumerate(item.get("summary") or ()):
            events += _summary_events(emit, where, summary_index, part)
        reasoning = item.get("content")
        for content_index, part in enumerate(reasoning if isinstance(reasoning, list) else ()):
            text = str(part.get("text") or "") if isinstance(part, Mapping) else ""
            at = {**where, "content_index": content_index}
            if text:
                events.append(emit("response.reasoning_text.delta", **at, delta=text))
            events.append(emit("response.reasoning_text.done", **at, text=text))
    events.append(emit("response.output_item.done", output_index=index, item=dict(item)))
    return events


def _opening(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item as `output_item.added` shows it: in progress, before its deltas."""
    opening = dict(item)
    if "status" in item:
        opening["status"] = "in_progress"
    kind = item.get("type")
    if kind == "message":
        opening["content"] = []
    elif kind == "function_call":
        opening["arguments"] = ""
    elif kind == "reasoning":
        opening["summary"] = []
        if isinstance(item.get("content"), list):
            opening["content"] = []
    return opening


def _part_events(emit: Events, where: dict[str, Any], content_index: int, part: Any) -> list[bytes]:
    at = {**where, "content_index": content_index}
    if not isinstance(part, Mapping):
        return []
    if part.get("type") == "output_text":
        text = str(part.get("text") or "")
        events = [emit("response.content_part.added", **at,
                       part={"type": "output_text", "text": "", "annotations": []})]
        if text:
            events.append(emit("response.output_text.delta", **at, delta=text, logprobs=[]))
        for annotation_index, annotation in enumerate(part.get("annotations") or ()):
            events.append(emit("response.output_text.annotation.added", **at, annotation_index=annotation_index,
                               annotation=annotation))
        events.append(emit("response.output_text.done", **at, text=text, logprobs=part.get("logprobs") or []))
    elif part.get("type") == "refusal":
        refusal = str(part.get("refusal") or "")
        events = [emit("response.content_part.added", **at, part={"type": "refusal", "refusal": ""})]
        if refusal:
            events.append(emit("response.refusal.delta", **at, delta=refusal))
        events.append(emit("response.refusal.done", **at, refusal=refusal))
    else:
        events = [emit("response.content_part.added", **at, part=dict(part))]
    return [*events, emit("response.content_part.done", **at, part=dict(part))]


def _summary_events(emit: Events, where: dict[str, Any], summary_index: int, part: Any) -> list[bytes]:
    text = str(part.get("text") or "") if isinstance(part, Mapping) else ""
    at = {**where, "summary_index": summary_index}
    events = [emit("response.reasoning_summary_part.added", **at, part={"type": "summary_text", "text": ""})]
    if text:
        events.append(emit("response.reasoning_summary_text.delta", **at, delta=text))
    events.append(emit("response.reasoning_summary_text.done", **at, text=text))
    return [*events, emit("response.reasoning_summary_part.done", **at, part={"type": "summary_text", "text": text})]


# ---------------------------------------------------------------- the dialect


class ResponsesDialect(Dialect):
    name = "responses"
    endpoint = "responses"
    operation = "chat"
    stateful = True  # previous_response_id: the gateway keeps the answers it translates
    takes_prompt = True  # the API's own `prompt` parameter; OpenAI's stored `pmpt_` prompts pass through

    def own_messages(self, body: Mapping[str, Any]) -> Any:
        return body.get("input")

    def with_prompt(self, body: dict[str, Any], rendered: list[dict[str, str]], own: Any) -> None:
        if isinstance(own, str):
            own = [{"role": "user", "content": own}]
        if own is None or isinstance(own, list):
            body["input"] = [*rendered, *(own or ())]

    def parse(self, body: dict[str, Any]) -> Inbound:
        check_responses(body)
        return Inbound(model=body.get("model"), stream=body.get("stream") is True, user=body.get("user"),
                       output_cap=body.get("max_output_tokens"))

    def classifier_view(self, body: Mapping[str, Any]) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            messages.append({"role": "system", "content": instructions})
        value = body.get("input")
        if isinstance(value, str):
            messages.append({"role": "user", "content": value})
        for item in value if isinstance(value, list) else ():
            if not isinstance(item, dict):
                continue
            kind = item.get("type", "message")
            if kind == "message" and isinstance(item.get("role"), str):
                messages.append({"role": item["role"], "content": text_of(item.get("content"))})
            elif kind == "function_call_output":
                messages.append({"role": "tool", "content": text_of(item.get("output"))})
        return {"messages": messages}

    def usage(self, answer: Mapping[str, Any]) -> Usage | None:
        return normalised_usage(answer.get("usage"))

    def stream_observer(self, capture: bool) -> ResponsesObserver:
        return ResponsesObserver(capture)

    def cacheable(self, answer: Mapping[str, Any]) -> bool:
        return answer.get("status") in (None, "completed")

    def replay(self, answer: Mapping[str, Any], body: Mapping[str, Any]) -> list[bytes]:
        return replay_events(answer)

    def stream_error(self, exc: ProxyError) -> bytes:
        # stateless, the dialect cannot know how many events went before: the error event
        # says 0 (clients read it by its type; only a resume `starting_after` compares it)
        return frame({"type": "error", "code": exc.code, "message": exc.message, "param": exc.param,
                      "sequence_number": 0})
