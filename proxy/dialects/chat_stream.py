"""Chat Completions streams: the one builder of `chat.completion.chunk` events, assembling
a streamed answer for storage, and replaying a stored answer as a well-formed stream.

The assembler sees each SSE event's JSON as the relay forwards it. It merges content
and tool-call argument deltas per choice. It reports a completion only when the stream
ended normally (`[DONE]`, every choice finished), so a broken stream is never stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from proxy import sse

# ---------------------------------------------------------------- chunks


def chunk_meta(id_: str, created: int, model: str, system_fingerprint: str | None = None) -> dict[str, Any]:
    """The fields every chunk of one stream repeats."""
    meta: dict[str, Any] = {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model}
    if system_fingerprint:
        meta["system_fingerprint"] = system_fingerprint
    return meta


def chunk(meta: Mapping[str, Any], delta: Mapping[str, Any], *, index: int = 0,
          finish_reason: str | None = None) -> dict[str, Any]:
    """One choice's delta (role, content, tool-call fragments) or its finish."""
    return {**meta, "choices": [{"index": index, "delta": dict(delta), "finish_reason": finish_reason,
                                 "logprobs": None}]}


def usage_chunk(meta: Mapping[str, Any], usage: Mapping[str, Any]) -> dict[str, Any]:
    """The closing chunk `stream_options.include_usage` asks for: no choices, the usage."""
    return {**meta, "choices": [], "usage": dict(usage)}


# ---------------------------------------------------------------- assembly and replay


class StreamAssembler:
    def __init__(self) -> None:
        self._meta: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.failed = False

    def feed_event(self, data: bytes) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.failed = True
            return
        if not isinstance(chunk, dict) or "error" in chunk:
            self.failed = True
            return
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if key in chunk and key not in self._meta:
                self._meta[key] = chunk[key]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for delta_choice in chunk.get("choices") or ():
            self._merge(delta_choice)

    def _merge(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        state = self._choices.setdefault(
            index, {"index": index, "message": {"role": "assistant", "content": None}, "finish_reason": None}
        )
        delta = choice.get("delta") or {}
        message = state["message"]
        if delta.get("role"):
            message["role"] = delta["role"]
        if isinstance(delta.get("content"), str):
            message["content"] = (message["content"] or "") + delta["content"]
        if isinstance(delta.get("refusal"), str):
            message["refusal"] = message.get("refusal", "") + delta["refusal"]
        for call in delta.get("tool_calls") or ():
            calls = message.setdefault("tool_calls", [])
            position = call.get("index", len(calls))
            while len(calls) <= position:
                calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            slot = calls[position]
            if call.get("id"):
                slot["id"] = call["id"]
            if call.get("type"):
                slot["type"] = call["type"]
            function = call.get("function") or {}
            if function.get("name"):
                slot["function"]["name"] += function["name"]
            if function.get("arguments"):
                slot["function"]["arguments"] += function["arguments"]
        if choice.get("finish_reason"):
            state["finish_reason"] = choice["finish_reason"]

    def completion(self) -> dict[str, Any] | None:
        """The whole answer as a `chat.completion`, or None if the stream did not end normally."""
        if self.failed or not self.done or not self._choices:
            return None
        if any(c["finish_reason"] is None for c in self._choices.values()):
            return None
        body: dict[str, Any] = {"object": "chat.completion", **self._meta}
        body["choices"] = [self._choices[i] for i in sorted(self._choices)]
        if self.usage is not None:
            body["usage"] = self.usage
        return body


def replay_events(completion: Mapping[str, Any], *, include_usage: bool) -> list[bytes]:
    """A stored `chat.completion` as the SSE events a live stream of it would have sent."""
    meta = chunk_meta(completion.get("id", "chatcmpl-cached"), completion.get("created", 0),
                      completion.get("model", ""), completion.get("system_fingerprint"))
    events: list[bytes] = []
    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}

        def event(delta: dict[str, Any], finish: str | None = None, index: int = index) -> bytes:
            return sse.encode(chunk(meta, delta, index=index, finish_reason=finish))

        # as a live stream: `content: ""` opens a text answer, `null` a tool-call-only one
        opening = "" if message.get("content") is not None or not message.get("tool_calls") else None
        events.append(event({"role": message.get("role", "assistant"), "content": opening}))
        if message.get("content"):
            events.append(event({"content": message["content"]}))
        if message.get("refusal"):
            events.append(event({"refusal": message["refusal"]}))
        for position, call in enumerate(message.get("tool_calls") or ()):
            events.append(event({"tool_calls": [{"index": position, **call}]}))
        events.append(event({}, choice.get("finish_reason") or "stop"))
    if include_usage and completion.get("usage") is not None:
        events.append(sse.encode(usage_chunk(meta, completion["usage"])))
    events.append(sse.DONE)
    return events


def choices_identical(completion: Mapping[str, Any]) -> bool:
    """True when every choice carries the same message (so replaying it is faithful)."""
    choices = completion.get("choices") or []
    if len(choices) <= 1:
        return True
    first = choices[0].get("message")
    return all(c.get("message") == first for c in choices[1:])


class StreamCapture:
    """Watches the bytes of a relayed stream and rebuilds the answer from its events."""

    __slots__ = ("_splitter", "assembler")

    def __init__(self) -> None:
        self._splitter = sse.EventSplitter()
        self.assembler = StreamAssembler()

    def feed(self, chunk: bytes) -> None:
        for event in self._splitter.feed(chunk):
            data = sse.event_data(event)
            if data is not None:
                self.assembler.feed_event(data)
