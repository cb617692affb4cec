"""Server-sent-events framing, in one place.

`encode` frames one JSON event. `EventSplitter` is the one reader of event boundaries in
an arriving byte stream: every stream reader (relay taps, the usage stripper, the cache's
capture, provider translators) cuts events with it, so they agree however the bytes are
chunked.

Framing (the SSE spec): a line ends in CRLF, LF or CR; an event ends at a blank line.
Here an event's *separator* is the whole run of line ends after its last line (two or
more of them: the line's own end and at least one blank line), and line ends at the very
start of what is read (after a separator, or at the start of the stream) are blank lines
too, so they form a separator of their own. Blank lines dispatch nothing when no line
came before them, so these runs are no-ops to a client.

A chunk boundary may fall anywhere, including between the CR and the LF of a CRLF. The
splitter never rewrites what it holds back: an unterminated event stays as it arrived, so
a CR at the end of one chunk and the LF at the start of the next read as one line end.
An event is handed on as soon as its blank line has arrived, never a chunk late: line
ends that come after that (the LF of a CRLF whose CR ended a chunk, or more blank lines)
start the next bytes, where they are blank lines of their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

import orjson

DONE = b"data: [DONE]\n\n"

# One line end is CRLF, LF or CR; the possessive forms keep a CRLF from being read as CR + LF.
_LINE_ENDS = re.compile(rb"(?:\r\n?+|\n)++")  # a run of line ends (at the start of an event)
_SEPARATOR = re.compile(rb"(?:\r\n?+|\n)(?:\r\n?+|\n)++")  # a run holding a blank line: an event's end
_LF_SEPARATOR = re.compile(rb"\n\n+")  # the same where there is no CR (found by a fast literal search)
_CR: Final = ord("\r")  # `int in bytes` is a plain memchr, `bytes in bytes` a slower search
_LF: Final = ord("\n")


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


def event_spans(events: bytes) -> Iterator[tuple[int, int, int]]:
    """(start, stop, end) of each event in `events`, raw bytes that begin where an event may
    begin (as `EventSplitter.feed_raw` returns them): the event's lines are
    `events[start:stop]` (never empty), its separator `events[stop:end]`. Blank lines
    before the first event are skipped; bytes after the last separator are ignored."""
    start = blank_prefix(events)
    for sep in (_SEPARATOR if _CR in events else _LF_SEPARATOR).finditer(events, start):
        yield start, sep.start(), sep.end()
        start = sep.end()


def event_at(events: bytes, pos: int) -> tuple[int, int, int]:
    """(start, stop, end) as `event_spans` gives it for the one event whose lines hold
    `events[pos]` (which must not be a line end), found from `pos` without reading the
    other events: a batch of 20 events that holds a usage chunk needs only that one."""
    if _CR in events:
        # every separator holds LF LF, LF CR or CR CR where its blank line begins (a CR
        # followed by an LF is a CRLF, so CR LF never joins two line ends)
        back = max(events.rfind(b"\n\n", 0, pos), events.rfind(b"\n\r", 0, pos), events.rfind(b"\r\r", 0, pos))
        ahead = _SEPARATOR.search(events, pos)
        start = blank_prefix(events) if back < 0 else _run_end(events, back)
        stop, end = (len(events), len(events)) if ahead is None else ahead.span()
        return start, stop, end
    # LF line ends only: a separator is a run of two or more LFs, found without a regex
    back = events.rfind(b"\n\n", 0, pos)
    start = blank_prefix(events) if back < 0 else _lf_run_end(events, back)
    stop = events.find(b"\n\n", pos)
    if stop < 0:
        return start, len(events), len(events)
    return start, stop, _lf_run_end(events, stop)


def _run_end(events: bytes, pos: int) -> int:
    run = _LINE_ENDS.match(events, pos)
    return pos if run is None else run.end()


def _lf_run_end(events: bytes, pos: int) -> int:
    """The end of the run of LFs that begins with the LF LF at `pos`."""
    end = pos + 2
    while end < len(events) and events[end] == _LF:
        end += 1
    return end


def blank_prefix(events: bytes) -> int:
    """How many bytes of line ends (blank lines) `events` starts with."""
    lead = _LINE_ENDS.match(events)
    return 0 if lead is None else lead.end()


# The endings of a buffer whose last two line ends come one right after the other, so that
# it ends with a blank line: (LF or CRLF) LF, CR CR, (LF or CRLF) CR, CR CRLF, (LF or CRLF)
# CRLF. A CR at the very end may yet get its LF: the blank line is there either way.
_ENDS_AT_BLANK_LINE: Final = (b"\n\n", b"\r\r", b"\n\r", b"\r\r\n", b"\n\r\n")


def _ends_at_blank_line(buf: bytes) -> bool:
    # LF LF, what nearly every provider ends its events with, by two byte reads (compiled,
    # these cost nothing; `endswith` with a tuple is a method call with parsed arguments)
    n = len(buf)
    return (n >= 2 and buf[n - 1] == _LF and buf[n - 2] == _LF) or buf.endswith(_ENDS_AT_BLANK_LINE)


def _whole(buf: bytes) -> int:
    """The length of the whole events (separators included) at the start of `buf`."""
    cut = buf.rfind(b"\n\n")
    if cut >= 0:
        # an LF LF is two line ends, so a separator, whatever is around it; with no CR after
        # it, its run ends at the last LF LF (found without a scan)
        if buf.find(b"\r", cut) < 0:
            return cut + 2
    elif _CR not in buf:
        return 1 if buf[:1] == b"\n" else 0
    end = blank_prefix(buf)
    for sep in _SEPARATOR.finditer(buf, end):
        end = sep.end()
    return end


class EventSplitter:
    """Feed byte chunks in arrival order; get back what they complete.

    `feed` gives each complete event's lines (line ends made LF, separator excluded);
    `feed_raw` gives the completed events' bytes exactly as they arrived, for relays that
    forward bytes untouched and look into them only now and then (`event_spans`).
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""  # the unterminated event after the last separator, as it arrived

    def feed_raw(self, chunk: bytes) -> bytes:
        """The bytes of the events this chunk completes, separators included, exactly as
        they arrived (b"" when it completes none); the rest is held until its blank line.
        All that is returned, followed by `pending`, is all that was fed."""
        buf = chunk
        if self._tail:
            if _LF not in chunk and _CR not in chunk:
                self._tail += chunk  # no line end: the held event goes on
                return b""
            buf = self._tail + chunk
        if _ends_at_blank_line(buf):
            self._tail = b""  # the common case: chunks of whole events
            return buf
        end = _whole(buf)
        self._tail = buf[end:]
        return buf[:end]

    def feed(self, chunk: bytes) -> list[bytes]:
        """Each event this chunk completes: its lines, LF-separated, without the separator."""
        done = self.feed_raw(chunk)
        if not done:
            return []
        if _CR in done:  # whole events: each line end becomes one LF, so the framing stays
            done = done.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if done[0] != _LF and done.find(b"\n\n\n") < 0:
            # the common case, no extra blank lines: each LF LF ends an event
            events = done.split(b"\n\n")
            events.pop()  # the b"" after the last one
            return events
        return [done[start:stop] for start, stop, _ in event_spans(done)]

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not been terminated yet, as they arrived."""
        return self._tail
