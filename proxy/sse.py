"""Server-sent-events framing, in one place.

`encode` frames one JSON event; `EventSplitter` cuts an arriving byte stream into
whole events without copying more than the tail of an unfinished one, so a relay can
forward bytes untouched and still look at each event's data when it needs to.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def encode(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def event_data(event: bytes) -> bytes | None:
    """The joined `data:` lines of one event (None when it has none)."""
    data: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(data) if data else None


class EventSplitter:
    """Feed byte chunks; get back each complete event (its raw bytes, separator excluded)."""

    __slots__ = ("_tail", "_after_cr")

    def __init__(self) -> None:
        self._tail = b""
        self._after_cr = False  # the last chunk ended in \r, already counted as a line end

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the \n of a \r\n cut between two chunks: one line end, not two
            self._after_cr = False
        if chunk:
            self._after_cr = chunk.endswith(b"\r")
        buf = self._tail + chunk if self._tail else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events = buf.split(b"\n\n")
        self._tail = events.pop()
        return [e for e in events if e]

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not been terminated yet."""
        return self._tail
