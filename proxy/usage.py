"""Token usage from upstream answers: the `usage` object of a JSON body, or of a stream's
usage chunk, read without parsing every streamed event.

OpenAI-compatible streams carry usage in one late chunk (`stream_options.include_usage`);
with it on, every other chunk says `"usage":null`. The tap and the stripper cut the
stream into whole events with `sse.EventSplitter` (the one reader of SSE framing), search
the bytes of the events each chunk completes for a `"usage": {` object, which only that
one chunk has, and split and parse events only when it is there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

from proxy import sse

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_USAGE_KEY = b'"usage"'  # where any match of _USAGE_OBJECT begins


def tokens(usage: Any) -> tuple[int, int]:
    """(input, output) token counts of a usage object; 0 for what it does not say."""
    if not isinstance(usage, dict):
        return 0, 0
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class UsageTap:
    """Fed every chunk of a relayed stream; `usage` is the last usage object seen."""

    __slots__ = ("usage", "_splitter")

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self._splitter = sse.EventSplitter()

    def feed(self, chunk: bytes) -> None:
        done = self._splitter.feed_raw(chunk)
        first = _first_usage(done)
        if first >= 0:
            self._read(done, first)

    def _read(self, events: bytes, since: int) -> None:
        for start, stop, _ in _usage_events(events, since):
            chunk = _usage_chunk(events[start:stop])
            if chunk is not None:
                self.usage = chunk["usage"]


class UsageStripper:
    """Removes usage chunks from a stream whose client did not ask for them.

    The proxy asks every upstream for usage (to price streams) and passes the stream on
    without it when the client's request had no `stream_options.include_usage`. A chunk
    whose `usage` is an object is dropped when it has no choices (OpenAI's last chunk) and
    re-encoded with `"usage": null` when it has; either way the event goes with its
    separator (blank lines after it included), and a re-encoded one ends in LF LF.

    Everything else passes through byte for byte, whatever its line ends. Only whole
    events are passed on: an event split across chunks is held until its blank line
    arrives (the client could not use half an event anyway), and one the upstream never
    terminates is never passed on (an SSE client would discard it too).
    """

    __slots__ = ("_splitter", "_cut", "_tap")

    def __init__(self, tap: UsageTap | None = None) -> None:
        self._splitter = sse.EventSplitter()
        self._cut = False  # the last event passed on was replaced, and its separator may go on
        self._tap = tap  # told the usage it takes out (so nothing else need look for it)

    def __call__(self, chunk: bytes) -> bytes:
        done = self._splitter.feed_raw(chunk)
        if not done:
            return done
        if self._cut:
            # line ends at the start of the next bytes continue the removed event's separator
            # (the LF of a CRLF cut after its CR, or further blank lines): they go with it
            skip = sse.blank_prefix(done)
            if skip == len(done):
                return b""
            done, self._cut = done[skip:], False
        first = _first_usage(done)
        if first < 0:
            return done
        pieces: list[bytes] = []
        last = 0
        for start, stop, end in _usage_events(done, first):  # only those events are rewritten
            parsed = _usage_chunk(done[start:stop])
            if parsed is None:
                continue
            if self._tap is not None:
                self._tap.usage = parsed["usage"]
            pieces += (done[last:start], _without_usage(parsed))
            last = end
        pieces.append(done[last:])
        self._cut = last == len(done)  # the last event was replaced (dropped or nulled)
        return b"".join(pieces)


def _first_usage(events: bytes) -> int:
    """Where the first match of `_USAGE_OBJECT` in `events` begins, or -1. "usage" is found
    by a plain substring search first (a regular expression's scan of a 20-event buffer
    costs several times more), and the pattern runs only from there."""
    first = events.find(_USAGE_KEY)
    if first < 0:
        return -1
    match = _USAGE_OBJECT.search(events, first)
    return -1 if match is None else match.start()


def _usage_events(events: bytes, since: int) -> Iterator[tuple[int, int, int]]:
    """(start, stop, end), as `sse.event_spans` gives them, of each event in `events` (whole
    events, as `feed_raw` returns them) that holds a usage object at or after `since`: found
    around the matches, without splitting the others."""
    done = 0
    for match in _USAGE_OBJECT.finditer(events, since):
        if match.start() >= done:  # not a second match inside an event already found
            span = sse.event_at(events, match.start())
            yield span
            done = span[2]


def _usage_chunk(event: bytes) -> dict[str, Any] | None:
    """The JSON chunk an event carries, when it is an object whose `usage` is one."""
    data = sse.event_data(event)
    if data is None or _USAGE_OBJECT.search(data) is None:
        return None
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
        return chunk
    return None


def _without_usage(chunk: dict[str, Any]) -> bytes:
    """What replaces the event of a chunk with usage."""
    if not chunk.get("choices"):
        return b""  # the usage-only chunk OpenAI sends last: drop it
    chunk["usage"] = None  # usage riding on a content chunk: keep the content
    return sse.encode(chunk)
