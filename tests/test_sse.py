"""SSE framing: `EventSplitter` cuts a byte stream into events however it is chunked,
agreeing with a plain reading of the spec (`reference` below) for any line ends and any
chunk boundaries, those between the CR and the LF of a CRLF included; `encode` and
`event_data` are each other's inverse."""

from __future__ import annotations

from itertools import pairwise

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.sse import DONE, EventSplitter, blank_prefix, encode, event_at, event_data, event_spans


def split_all(chunks: list[bytes]) -> tuple[list[bytes], bytes]:
    splitter = EventSplitter()
    events: list[bytes] = []
    for chunk in chunks:
        events.extend(splitter.feed(chunk))
    return events, splitter.pending


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(stream)]
    return [stream[a:b] for a, b in pairwise(bounds)]


# ---------------------------------------------------------------- splitter, by example

SPLIT_CASES = [
    ("one event", [b"data: a\n\n"], [b"data: a"], b""),
    ("two events in one chunk", [b"data: a\n\ndata: b\n\n"], [b"data: a", b"data: b"], b""),
    ("event across chunks", [b"da", b"ta: a", b"\n", b"\n"], [b"data: a"], b""),
    ("unterminated tail is pending", [b"data: a\n\ndata: b\n"], [b"data: a"], b"data: b\n"),
    ("crlf", [b"data: a\r\n\r\ndata: b\r\n\r\n"], [b"data: a", b"data: b"], b""),
    ("crlf cut between cr and lf", [b"data: a\r", b"\n\r", b"\n"], [b"data: a"], b""),
    ("crlf line break cut inside one event", [b"data: a\r", b"\ndata: b\r\n\r\n"], [b"data: a\ndata: b"], b""),
    ("bare cr", [b"data: a\r\rdata: b\r\r"], [b"data: a", b"data: b"], b""),
    ("comment", [b": keep-alive\n\ndata: a\n\n"], [b": keep-alive", b"data: a"], b""),
    ("multi-line data", [b"data: line1\ndata: line2\n\n"], [b"data: line1\ndata: line2"], b""),
    ("event and id fields", [b"event: message\nid: 7\ndata: x\n\n"], [b"event: message\nid: 7\ndata: x"], b""),
    ("done", [b"data: {}\n\n", DONE], [b"data: {}", b"data: [DONE]"], b""),
    ("blank lines between events are skipped", [b"\n\n\n\ndata: a\n\n"], [b"data: a"], b""),
    ("empty chunks", [b"", b"data: a", b"", b"\n\n", b""], [b"data: a"], b""),
    ("byte at a time", [bytes([c]) for c in b"data: a\n\ndata: b\n\n"], [b"data: a", b"data: b"], b""),
    ("odd run of blank lines", [b"data: a\n\n\ndata: b\n\n"], [b"data: a", b"data: b"], b""),
    ("blank line at the start", [b"\ndata: a\n\n"], [b"data: a"], b""),
    ("cr then lf blank line", [b"data: a\r", b"\n", b"\n"], [b"data: a"], b""),
    ("cr, crlf cut after its cr", [b"data: a\r\r", b"\ndata: b\r\r"], [b"data: a", b"data: b"], b""),
    ("cr at the end is held as it came", [b"data: a\r"], [], b"data: a\r"),
    ("crlf in pending kept", [b"data: a\r\ndata: b"], [], b"data: a\r\ndata: b"),
]


@pytest.mark.parametrize(("chunks", "events", "pending"), [c[1:] for c in SPLIT_CASES], ids=[c[0] for c in SPLIT_CASES])
def test_splitter(chunks, events, pending):
    assert split_all(chunks) == (events, pending)


RAW_CASES = [
    # name, chunks, what feed_raw returns for each
    ("whole events as they came", [b"data: a\r\n\r\ndata: b\r\r"], [b"data: a\r\n\r\ndata: b\r\r"]),
    ("held until the blank line", [b"data: a\r\n", b"\r\ndata: b", b"\n\n"], [b"", b"data: a\r\n\r\n", b"data: b\n\n"]),
    ("lf of a crlf cut off comes next", [b"data: a\r\r", b"\ndata: b\n\n"], [b"data: a\r\r", b"\ndata: b\n\n"]),
    ("a cr alone is not yet a blank line", [b"data: a\r", b"\n", b"\r", b"\n"], [b"", b"", b"data: a\r\n\r", b"\n"]),
    ("tail after the last blank line held", [b"data: a\n\n\ndata: b\n"], [b"data: a\n\n\n"]),
]


@pytest.mark.parametrize(("chunks", "outs"), [c[1:] for c in RAW_CASES], ids=[c[0] for c in RAW_CASES])
def test_feed_raw(chunks, outs):
    splitter = EventSplitter()
    assert [splitter.feed_raw(c) for c in chunks] == outs
    assert b"".join(outs) + splitter.pending == b"".join(chunks)


@pytest.mark.parametrize(
    ("events", "spans", "blank"),
    [
        (b"data: a\n\n", [(0, 7, 9)], 0),
        (b"\r\ndata: a\r\n\r\n: c\r\r\n", [(2, 9, 13), (13, 16, 19)], 2),
        (b"\n\n\r", [], 3),
        (b"a\r\nb\r\n\r\nc", [(0, 4, 8)], 0),  # what follows the last separator is not an event
    ],
)
def test_event_spans_and_blank_prefix(events, spans, blank):
    assert list(event_spans(events)) == spans
    assert blank_prefix(events) == blank
    for span in spans:
        assert event_at(events, span[0]) == event_at(events, span[1] - 1) == span


# ---------------------------------------------------------------- event_data

DATA_CASES = [
    ("data with space", b"data: hello", b"hello"),
    ("data without space", b"data:hello", b"hello"),
    ("only one leading space is removed", b"data:  two", b" two"),
    ("empty data", b"data:", b""),
    ("multi-line data joined by newline", b"data: a\ndata: b\ndata: c", b"a\nb\nc"),
    ("other fields ignored", b"event: delta\nid: 3\nretry: 10\ndata: x", b"x"),
    ("comment only", b": ping", None),
    ("comment beside data", b": note\ndata: x", b"x"),
    ("no data lines", b"event: end", None),
    ("done", b"data: [DONE]", b"[DONE]"),
    ("crlf inside event", b"data: a\r\ndata: b", b"a\nb"),
    ("field name is case sensitive", b"Data: x", None),
    ("colon in value kept", b'data: {"a": "b:c"}', b'{"a": "b:c"}'),
]


@pytest.mark.parametrize(("event", "expected"), [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_event_data(event, expected):
    assert event_data(event) == expected


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"choices": [{"delta": {"content": "hi"}}]},
        {"text": "line1\nline2\r\n\n\ndata: fake"},  # newlines are escaped, never framing
        {"unicode": "héllo \u2028 \u2029 \U0001f600"},
        [1, 2.5, None, True],
        "a string",
    ],
)
def test_encode_frames_one_event_that_round_trips(obj):
    framed = encode(obj)
    assert framed.startswith(b"data: ") and framed.endswith(b"\n\n")
    events, pending = split_all([framed])
    assert len(events) == 1 and pending == b""
    assert orjson.loads(event_data(events[0])) == obj


def test_done_is_its_own_event():
    assert split_all([DONE]) == ([b"data: [DONE]"], b"")
    assert event_data(b"data: [DONE]") == b"[DONE]"


# ---------------------------------------------------------------- any chunking, same events

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)  # encodable as UTF-8
line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=10)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes | None]]:
    """A stream of events in any line ending, with the data each event carries."""
    newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    parts: list[bytes] = []
    expected: list[bytes | None] = []
    for kind in draw(st.lists(st.sampled_from(["json", "multi", "comment", "done"]), max_size=8)):
        if kind == "json":
            data = orjson.dumps(draw(json_values))
            parts.append(b"data: " + data)
            expected.append(data)
        elif kind == "multi":
            lines = draw(st.lists(line, min_size=1, max_size=3))
            encoded = [line.encode() for line in lines]
            parts.append(newline.join(b"data: " + line for line in encoded))
            expected.append(b"\n".join(encoded))
        elif kind == "comment":
            parts.append(b": " + draw(line).encode())
            expected.append(None)
        else:
            parts.append(b"data: [DONE]")
            expected.append(b"[DONE]")
    stream = b"".join(p + newline + newline for p in parts)
    return stream, expected


@settings(max_examples=300, deadline=None)
@given(sse_streams(), st.data())
def test_any_split_of_the_stream_yields_the_same_events(stream_and_expected, data):
    stream, expected = stream_and_expected
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    whole, whole_pending = split_all([stream])
    chunked, chunked_pending = split_all(cut(stream, points))
    assert chunked == whole
    assert chunked_pending == whole_pending == b""
    assert [event_data(e) for e in chunked] == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60).map(lambda b: b.replace(b"x", b"\r").replace(b"y", b"\n")), st.data())
def test_arbitrary_bytes_split_consistently(stream, data):
    # whatever the bytes, cutting them differently never changes the events or the tail
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    whole, whole_pending = split_all([stream])
    chunked, chunked_pending = split_all(cut(stream, points))
    assert chunked == whole
    assert chunked_pending == whole_pending


# ---------------------------------------------------------------- against a plain reading of the spec


def reference(stream: bytes) -> tuple[list[bytes], int]:
    """The events of `stream` read line by line as the SSE spec says (each event's lines
    joined by LF; blank lines with no line before them dispatch nothing), and where the
    last blank line ends (what follows it is an unterminated event)."""
    events: list[bytes] = []
    lines: list[bytes] = []
    i = line_start = end = 0
    while i < len(stream):
        if stream[i] not in b"\r\n":
            i += 1
            continue
        line = stream[line_start:i]
        i += 2 if stream[i : i + 2] == b"\r\n" else 1
        line_start = i
        if line:
            lines.append(line)
            continue
        if lines:
            events.append(b"\n".join(lines))
            lines = []
        end = i
    return events, end


def crlf_middles(stream: bytes) -> list[int]:
    return [i + 1 for i in range(len(stream) - 1) if stream[i : i + 2] == b"\r\n"]


def chunkings(stream: bytes, data: st.DataObject) -> list[bytes]:
    """Random cut points, with the middles of CRLFs drawn on purpose."""
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    middles = crlf_middles(stream)
    if middles:
        points += data.draw(st.lists(st.sampled_from(middles), max_size=6), label="crlf cuts")
    return cut(stream, points)


LINE_ENDS = [b"\n", b"\r\n", b"\r"]
field_lines = st.one_of(
    st.builds(lambda v: b"data: " + orjson.dumps(v), json_values),
    st.builds(lambda t: b"data:" + t.encode(), line),
    st.builds(lambda t: b": " + t.encode(), line),
    st.sampled_from([b"event: message", b"id: 7", b"retry: 100", b"data:", b":"]),
)


def run_of(ends: list[bytes]) -> bytes:
    """Line ends one after the other, a CR never followed by an LF (that would be one CRLF)."""
    out = b""
    for end in ends:
        out += b"\r\n" if out.endswith(b"\r") and end == b"\n" else end
    return out


@st.composite
def mixed_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[bytes]]:
    """A stream whose every line end is drawn on its own (LF, CRLF or CR), with blank lines
    between events and before the first; with the events' lines, raw and joined by LF."""
    ends = st.sampled_from(LINE_ENDS)
    stream = run_of(draw(st.lists(ends, max_size=2)))
    raw: list[bytes] = []
    joined: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        lines = draw(st.lists(field_lines, min_size=1, max_size=4))
        event = lines[0]
        for more in lines[1:]:
            event += draw(ends) + more
        stream += event + run_of(draw(st.lists(ends, min_size=2, max_size=4)))
        raw.append(event)
        joined.append(b"\n".join(lines))
    return stream, raw, joined


@settings(max_examples=300, deadline=None)
@given(mixed_streams(), st.data())
def test_any_chunking_of_mixed_line_ends_yields_the_events(stream_events, data):
    stream, raw, joined = stream_events
    assert reference(stream) == (joined, len(stream))  # the model is what the spec says
    chunks = chunkings(stream, data)
    assert split_all(chunks) == (joined, b"")
    splitter = EventSplitter()
    outs = [splitter.feed_raw(c) for c in chunks]
    assert b"".join(outs) == stream and splitter.pending == b""
    assert [out[a:b] for out in outs for a, b, _ in event_spans(out)] == raw
    for i in range(len(outs)):  # never half an event: what is out so far ends at a blank line
        so_far = b"".join(outs[: i + 1])
        assert reference(so_far)[1] == len(so_far)


@settings(max_examples=200, deadline=None)
@given(mixed_streams())
def test_event_at_finds_the_event_around_any_byte_of_its_lines(stream_events):
    stream, raw, _ = stream_events
    spans = list(event_spans(stream))
    assert [stream[a:b] for a, b, _ in spans] == raw
    for span in spans:
        for pos in range(span[0], span[1]):
            if stream[pos] not in b"\r\n":
                assert event_at(stream, pos) == span


bytes_with_line_ends = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"data: x", b":"]), max_size=30).map(
    b"".join
)


@settings(max_examples=300, deadline=None)
@given(bytes_with_line_ends, st.data())
def test_arbitrary_bytes_read_as_the_spec_says(stream, data):
    events, end = reference(stream)
    chunks = chunkings(stream, data)
    assert split_all(chunks) == (events, stream[end:])
    splitter = EventSplitter()
    outs = [splitter.feed_raw(c) for c in chunks]
    assert b"".join(outs) == stream[:end] and splitter.pending == stream[end:]
    whole = EventSplitter().feed_raw(stream)
    assert whole == stream[:end]
    spans = list(event_spans(whole))
    assert [whole[a:b] for a, b, _ in spans] == [out[a:b] for out in outs for a, b, _ in event_spans(out)]
    assert [whole[a:b].replace(b"\r\n", b"\n").replace(b"\r", b"\n") for a, b, _ in spans] == events
    for span in spans:
        assert all(event_at(whole, pos) == span for pos in range(*span[:2]) if whole[pos] not in b"\r\n")
