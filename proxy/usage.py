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
        for event in events.split(b"\n\n"):
            data = sse.event_data(event)
            if data is None or not _USAGE_OBJECT.search(data):
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                self.usage = chunk["usage"]
