"""SSE framing: `EventSplitter` cuts a byte stream into events however it is chunked;
`encode` and `event_data` are each other's inverse."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.sse import DONE, EventSplitter, encode, event_data


def split_all(chunks: list[bytes]) -> tuple[list[bytes], bytes]:
    splitter = EventSplitter()
    events: list[bytes] = []
    for chunk in chunks:
        events.extend(splitter.feed(chunk))
    return events, splitter.pending


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:])]


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
]


@pytest.mark.parametrize(("chunks", "events", "pending"), [c[1:] for c in SPLIT_CASES], ids=[c[0] for c in SPLIT_CASES])
def test_splitter(chunks, events, pending):
    assert split_all(chunks) == (events, pending)


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
