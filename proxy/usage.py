"""Token usage from upstream answers: the `usage` object of a JSON body, or of a stream's
usage chunk, read without parsing every streamed event.

OpenAI-compatible streams carry usage in one late chunk (`stream_options.include_usage`);
with it on, every other chunk says `"usage":null`. The tap searches each chunk for a
`"usage": {` object, which only that one chunk has, and parses only the events that do.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy import sse

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


def tokens(usage: Any) -> tuple[int, int]:
    """(input, output) token counts of a usage object; 0 for what it does not say."""
    if not isinstance(usage, dict):
        return 0, 0
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class UsageTap:
    """Fed every chunk of a relayed stream; `usage` is the last usage object seen."""

    __slots__ = ("usage", "_tail")

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self._tail = b""  # the unfinished event at the end of the last chunk

    def feed(self, chunk: bytes) -> None:
        buf = self._tail + chunk if self._tail else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self._tail = buf
            return
        complete, self._tail = buf[:cut], buf[cut + 2 :]
        if _USAGE_OBJECT.search(complete):
            self._read(complete)

    def _read(self, events: bytes) -> None:
        for start, end in _usage_events(events):
            data = sse.event_data(events[start:end])
            if data is None or not _USAGE_OBJECT.search(data):
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                self.usage = chunk["usage"]


class UsageStripper:
    """Removes usage chunks from a stream whose client did not ask for them.

    The proxy asks every upstream for usage (to price streams) and passes the stream on
    without it when the client's request had no `stream_options.include_usage`. Whole
    events pass through untouched; an event split across chunks is held until its end
    arrives (the client could not use half an event anyway).
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def __call__(self, chunk: bytes) -> bytes:
        buf = self._tail + chunk if self._tail else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self._tail = buf
            return b""
        complete, self._tail = buf[: cut + 2], buf[cut + 2 :]
        if not _USAGE_OBJECT.search(complete):
            return complete
        pieces, last = [], 0
        for start, end in _usage_events(complete):  # only those events are rewritten
            pieces += (complete[last:start], _without_usage(complete[start:end]))
            last = end + 2
        pieces.append(complete[last:])
        return b"".join(pieces)


def _usage_events(buf: bytes):  # type: ignore[no-untyped-def]
    """(start, end) of each event in `buf` (whole events, `\n\n`-separated) that holds
    a usage object, without splitting the others: a batch of 20 events holds one."""
    done = 0
    for match in _USAGE_OBJECT.finditer(buf):
        if match.start() < done:
            continue  # a second match inside an event already found
        start = buf.rfind(b"\n\n", 0, match.start())
        start = 0 if start < 0 else start + 2
        end = buf.find(b"\n\n", match.end())
        end = len(buf) if end < 0 else end
        yield start, end
        done = end


def _without_usage(event: bytes) -> bytes:
    data = sse.event_data(event)
    if data is None or not _USAGE_OBJECT.search(data):
        return event + b"\n\n"
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return event + b"\n\n"
    if not isinstance(chunk, dict) or not isinstance(chunk.get("usage"), dict):
        return event + b"\n\n"
    if not chunk.get("choices"):
        return b""  # the usage-only chunk OpenAI sends last: drop it
    chunk["usage"] = None  # usage riding on a content chunk: keep the content
    return sse.encode(chunk)
