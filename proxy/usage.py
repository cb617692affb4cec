"""Token usage from upstream answers: the `usage` object of a JSON body, or of a stream's
usage chunk, read without parsing every streamed event.

OpenAI-compatible streams carry usage in one late chunk (`stream_options.include_usage`);
with it on, every other chunk says `"usage":null`. The tap and the stripper cut the
stream into whole events with `sse.EventSplitter` (the one reader of SSE framing), search
the bytes of the events each chunk completes for a `"usage": {` object, which only that
one chunk has, and split and parse events only when it is there.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from proxy import sse

_USAGE_KEY: Final = b'"usage"'  # a usage object is this key, blanks, a colon, blanks and "{"
_COLON: Final = ord(":")
_BRACE: Final = ord("{")
_BLANKS: Final = b" \t\n\r\f\v"  # what a regular expression's \\s matches in bytes
_CR: Final = ord("\r")  # `int in bytes` is a plain memchr
_LF: Final = ord("\n")


MAX_COUNT = 2**53  # past this no provider means a count: no float holds it exactly, no ledger column at all


def tokens(usage: Any) -> tuple[int, int]:
    """(input, output) token counts of a usage object; 0 for what it does not say, and for a
    count past MAX_COUNT (a SQLite or PostgreSQL integer column refuses past 2**63: a
    misbehaving upstream's row would fail its whole ledger batch)."""
    if not isinstance(usage, dict):
        return 0, 0
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < MAX_COUNT else 0


class UsageTap:
    """Fed every chunk of a relayed stream; `usage` is the last usage object seen."""

    __slots__ = ("usage", "_splitter")

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self._splitter = sse.EventSplitter()

    def feed(self, chunk: bytes) -> None:
        done = self._splitter.feed_raw(chunk)
        start, end, parsed = _next_usage(done, 0)
        while start >= 0:
            if parsed is not None:
                self.usage = parsed["usage"]
            start, end, parsed = _next_usage(done, end)


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
        start, end, parsed = _next_usage(done, 0)
        if start < 0:
            return done
        pieces: list[bytes] = []
        last = 0
        while start >= 0:  # only the events holding a usage object are read and rewritten
            if parsed is not None:
                if self._tap is not None:
                    self._tap.usage = parsed["usage"]
                pieces += (done[last:start], _without_usage(parsed))
                last = end
            start, end, parsed = _next_usage(done, end)
        pieces.append(done[last:])
        self._cut = last == len(done)  # the last event was replaced (dropped or nulled)
        return b"".join(pieces)


def _next_usage(events: bytes, since: int) -> tuple[int, int, dict[str, Any] | None]:
    """The first event at or after `since` (in whole events, as `feed_raw` returns them) that
    holds a usage object: where it starts, where its separator ends, and its chunk when it
    is a usage chunk (None: the match was elsewhere; go on from the end). Start -1: none.
    Only those events are located and parsed, never the others."""
    found = _first_usage(events, since)
    if found < 0:
        return -1, -1, None
    start, stop, end = sse.event_at(events, found)
    return start, end, _usage_chunk(events[start:stop])


def _first_usage(events: bytes, since: int) -> int:
    """Where the first `"usage"` key at or after `since` whose value is an object (`"usage"`,
    blanks, `:`, blanks, `{`) begins, or -1. Found by a substring search and a look at the
    bytes after each hit: every other chunk of a stream with usage on says `"usage":null`,
    and a regular expression's search from each hit cost about twice the hit's own look."""
    at = events.find(_USAGE_KEY, since)
    while at >= 0:
        after = _past_blanks(events, at + len(_USAGE_KEY))
        if after < len(events) and events[after] == _COLON:
            value = _past_blanks(events, after + 1)
            if value < len(events) and events[value] == _BRACE:
                return at
        at = events.find(_USAGE_KEY, at + 1)  # (`"usage"usage": {` holds one from the first's closing quote)
    return -1


def _past_blanks(data: bytes, pos: int) -> int:
    """The first position at or after `pos` that is not JSON's (or a regex's \\s) blank."""
    while pos < len(data) and data[pos] in _BLANKS:
        pos += 1
    return pos


def _usage_chunk(event: bytes) -> dict[str, Any] | None:
    """The JSON chunk an event carries, when it is an object whose `usage` is one."""
    if event.startswith(b"data: ") and _LF not in event and _CR not in event:
        data = event[6:]  # one data line (as providers send chunks): the usage match found is in it
    else:
        joined = sse.event_data(event)
        if joined is None or _first_usage(joined, 0) < 0:
            return None  # the match was in another field, or a comment
        data = joined
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
