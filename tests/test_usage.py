"""Token usage read from streams (UsageTap) and removed from them (UsageStripper).

The proxy asks every upstream for a usage chunk to price streams and strips it again
for clients that did not ask. Both read only events that hold a usage object; these
tests pin what they find and what passes through, for any way the bytes are chunked and
any line ends (LF, CRLF, CR, mixed), chunk boundaries between a CR and its LF included.
"""

from __future__ import annotations

import re
from itertools import pairwise

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.dialects.chat import CHAT
from proxy.pipeline.record import RequestRecord, ms
from proxy.usage import UsageStripper, UsageTap, _first_usage, tokens

USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def content(text: str, usage: object = None) -> bytes:
    return event({"choices": [{"index": 0, "delta": {"content": text}}], "usage": usage})


USAGE_ONLY = event({"choices": [], "usage": USAGE})
DONE = b"data: [DONE]\n\n"
WORDS = [content(w) for w in ("Hel", "lo", " there", "!")]
STREAM = b"".join(WORDS) + USAGE_ONLY + DONE
STRIPPED = b"".join(WORDS) + DONE


def feed_all(chunks: list[bytes], shared: bool = False) -> tuple[bytes, dict | None]:
    """The client's bytes and the usage found: by a tap beside the stripper, or (`shared`)
    by the stripper itself, reporting into a tap nobody feeds (one pass, as the relay does)."""
    tap = UsageTap()
    strip = UsageStripper(tap) if shared else UsageStripper()
    out = []
    for chunk in chunks:
        if not shared:
            tap.feed(chunk)
        out.append(strip(chunk))
    return b"".join(out), tap.usage


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in pairwise([0, *points, len(data)])]


CASES = [
    # name, chunks, expected client bytes, expected usage
    ("one chunk", [STREAM], STRIPPED, USAGE),
    ("event per chunk", [*WORDS, USAGE_ONLY, DONE], STRIPPED, USAGE),
    ("usage chunk split", [*WORDS, USAGE_ONLY[:17], USAGE_ONLY[17:], DONE], STRIPPED, USAGE),
    ("no usage at all", [*WORDS, DONE], b"".join(WORDS) + DONE, None),
    ("usage null everywhere", [content("a", None), DONE], content("a", None) + DONE, None),
    ("usage on a content chunk", [content("a", USAGE), DONE], content("a", None) + DONE, USAGE),
    ("usage in the middle of a batch", [WORDS[0] + USAGE_ONLY + WORDS[1] + DONE], WORDS[0] + WORDS[1] + DONE, USAGE),
    ("CRLF separators", [STREAM.replace(b"\n", b"\r\n")], STRIPPED.replace(b"\n", b"\r\n"), USAGE),
    ("CR separators", [STREAM.replace(b"\n", b"\r")], STRIPPED.replace(b"\n", b"\r"), USAGE),
    ("CRLF of the usage chunk cut after its CR", [WORDS[0], USAGE_ONLY[:-1].replace(b"\n", b"\r\n") + b"\r",
     b"\n" + DONE], WORDS[0] + DONE, USAGE),
    ("CR, CRLF after the usage chunk cut after its CR", [USAGE_ONLY[:-2] + b"\r\r", b"\n\n" + DONE], DONE, USAGE),
    ("blank lines after the usage chunk go with it", [WORDS[0] + USAGE_ONLY, b"\n\r\n", b"\n" + DONE],
     WORDS[0] + DONE, USAGE),
    ("nulled usage chunk cut between CR and LF", [content("a", USAGE)[:-2] + b"\r\n\r", b"\n" + DONE],
     content("a", None) + DONE, USAGE),
    ("multi-line data split between CR and LF",
     [b'data: {"choices": [],\r', b'\ndata: "usage": {"prompt_tokens": 12}}\r\n\r\n' + DONE],
     DONE, {"prompt_tokens": 12}),
    ("comment mentioning usage", [b': "usage": {"x"\n\n' + DONE], b': "usage": {"x"\n\n' + DONE, None),
    ("usage object only nested deeper", [b'data: {"choices":[],"x":{"usage":{"a":1}},"usage":null}\n\n' + DONE],
     b'data: {"choices":[],"x":{"usage":{"a":1}},"usage":null}\n\n' + DONE, None),
    ("malformed JSON with usage", [b'data: {"usage": {oops\n\n' + DONE], b'data: {"usage": {oops\n\n' + DONE, None),
    ("two usage chunks: the last wins", [event({"choices": [], "usage": {"prompt_tokens": 1}}) + USAGE_ONLY + DONE],
     DONE, USAGE),
    ("usage split from its separator", [STREAM[:-len(DONE) - 1], STREAM[-len(DONE) - 1:]], STRIPPED, USAGE),
    ("unfinished last event held", [WORDS[0], b"data: {\"cho"], WORDS[0], None),
    ("a null usage and quoted usage before a spaced usage object",
     [content('say "usage"') + b'data: {"choices": [], "usage" :\t{"prompt_tokens": 12}}\n\n' + DONE],
     content('say "usage"') + DONE, {"prompt_tokens": 12}),
]


@pytest.mark.parametrize("shared", [False, True], ids=["tap beside", "stripper reads it"])
@pytest.mark.parametrize("chunks, client, usage", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tap_and_stripper(chunks: list[bytes], client: bytes, usage: dict | None, shared: bool) -> None:
    got, found = feed_all(chunks, shared)
    assert got == client
    assert found == usage


def test_a_chat_observer_handing_its_usage_to_the_stripper_stops_looking_itself() -> None:
    observer = CHAT.stream_observer(capture=False)
    strip = CHAT.strip_usage(observer)
    for chunk in [*WORDS, USAGE_ONLY, DONE, WORDS[0][:5]]:  # ends with the start of an event
        observer.feed(chunk)
        strip(chunk)
    assert observer.usage == USAGE
    assert observer._tap._splitter.pending == b""  # its own splitter never saw a byte


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_chunking_gives_the_same_answer(cuts: list[int]) -> None:
    for shared in (False, True):
        got, found = feed_all(split_at(STREAM, cuts), shared)
        assert got == STRIPPED
        assert found == USAGE


# ---------------------------------------------------------------- random streams, any line ends, any chunking

LINE_ENDS = [b"\n", b"\r\n", b"\r"]
ends = st.sampled_from(LINE_ENDS)
words = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)  # any text, JSON-escaped
usages = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6)},
    optional={"total_tokens": st.integers(0, 10**6), "prompt_tokens_details": st.just({"cached_tokens": 0})},
)


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(stream)]
    return [stream[a:b] for a, b in pairwise(bounds)]


def run_of(line_ends: list[bytes]) -> bytes:
    """Line ends one after the other, a CR never followed by an LF (that would be one CRLF)."""
    out = b""
    for end in line_ends:
        out += b"\r\n" if out.endswith(b"\r") and end == b"\n" else end
    return out


def reference_end(stream: bytes) -> int:
    """Where the last blank line of `stream` ends, reading its lines as the SSE spec says."""
    i = line_start = end = 0
    while i < len(stream):
        if stream[i] not in b"\r\n":
            i += 1
            continue
        blank = i == line_start
        i += 2 if stream[i : i + 2] == b"\r\n" else 1
        line_start = i
        if blank:
            end = i
    return end


@st.composite
def openai_streams(draw: st.DrawFn) -> tuple[bytes, bytes, dict | None]:
    """(upstream stream, what a client without include_usage should get, the usage).

    Content chunks say `"usage":null`; the usage rides on a last chunk of its own or on
    the last content chunk (or is missing). Any event's JSON may be spread over several
    `data:` lines (as pretty-printed JSON, so it still parses once joined by LF); every
    line end is drawn on its own; comments, some mentioning usage, come in between.
    """
    stream = client = run_of(draw(st.lists(ends, max_size=2)))

    def add(lines: list[bytes], replacement: bytes | None = None) -> None:
        nonlocal stream, client
        event = lines[0]
        for more in lines[1:]:
            event += draw(ends) + more
        framed = event + run_of(draw(st.lists(ends, min_size=2, max_size=4)))
        stream += framed
        client += framed if replacement is None else replacement

    def data_lines(obj: object) -> list[bytes]:
        if draw(st.booleans()):
            return [b"data: " + orjson.dumps(obj)]
        return [b"data: " + line for line in orjson.dumps(obj, option=orjson.OPT_INDENT_2).split(b"\n")]

    usage = draw(st.none() | usages)
    where = draw(st.sampled_from(["own chunk", "last content chunk"]))
    texts = draw(st.lists(words, min_size=1, max_size=6))
    for i, text in enumerate(texts):
        choices = [{"index": 0, "delta": {"content": text}, "finish_reason": None}]
        chunk = {"id": "c1", "choices": choices, "usage": None}
        if draw(st.booleans()):
            add([draw(st.sampled_from([b": keep-alive", b': "usage": {"not": "json"']))])
        if usage is not None and where == "last content chunk" and i == len(texts) - 1:
            add(data_lines({**chunk, "usage": usage}), b"data: " + orjson.dumps(chunk) + b"\n\n")
        else:
            add(data_lines(chunk))
    if usage is not None and where == "own chunk":
        add(data_lines({"id": "c1", "choices": [], "usage": usage}), b"")
    add([b"data: [DONE]"])
    return stream, client, usage


def chunkings(stream: bytes, data: st.DataObject) -> list[bytes]:
    """Random cut points, with the middles of CRLFs drawn on purpose."""
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    middles = [i + 1 for i in range(len(stream) - 1) if stream[i : i + 2] == b"\r\n"]
    if middles:
        points += data.draw(st.lists(st.sampled_from(middles), max_size=6), label="crlf cuts")
    return cut(stream, points)


@settings(max_examples=300, deadline=None)
@given(openai_streams(), st.data())
def test_tap_finds_the_usage_whatever_the_chunking(streams, data):
    stream, _, usage = streams
    tap = UsageTap()
    for chunk in chunkings(stream, data):
        tap.feed(chunk)
    assert tap.usage == usage


@settings(max_examples=300, deadline=None)
@given(openai_streams(), st.data())
def test_stripper_passes_all_but_the_usage_whatever_the_chunking(streams, data):
    stream, client, _ = streams
    strip = UsageStripper()
    outs = [strip(chunk) for chunk in chunkings(stream, data)]
    assert b"".join(outs) == client
    for i in range(len(outs)):  # never half an event: what the client has so far ends at a blank line
        so_far = b"".join(outs[: i + 1])
        assert reference_end(so_far) == len(so_far)


PIECES = [b"\r", b"\n", b"\r\n", b"data: x", b":c", b'data: {"choices": [], "usage": {"a": 1}}',
          b'data: {"choices": [1], "usage": {"a": 1}}', b'data: {"usage": {', b'"a": 1}}']


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=24).map(b"".join), st.data())
def test_stripper_output_does_not_depend_on_the_chunking(stream, data):
    # whatever the bytes: usage chunks dropped, nulled, or (not JSON once joined) kept
    whole = UsageStripper()(stream)
    strip = UsageStripper()
    assert b"".join(strip(chunk) for chunk in chunkings(stream, data)) == whole
    assert reference_end(whole) == len(whole)


@pytest.mark.parametrize(
    "stream, end",
    [
        (b"data: a\r\n\r\ndata: b\r\n", 11),  # CRLF CRLF ends the first event; the second has no blank line yet
        (b"data: a\r\r\n", 10),  # CR, then a blank line ended by CRLF
        (b"data: a\r\n", 0),  # one CRLF is one line end
        (b"\r\n\r", 3),  # blank lines only
    ],
)
def test_reference_end_reads_the_spec(stream: bytes, end: int) -> None:
    assert reference_end(stream) == end


@pytest.mark.parametrize(
    "usage, expected",
    [
        (USAGE, (12, 7)),
        ({"prompt_tokens": 3}, (3, 0)),
        ({}, (0, 0)),
        (None, (0, 0)),
        ("12", (0, 0)),
        ({"prompt_tokens": True, "completion_tokens": -4}, (0, 0)),
        ({"prompt_tokens": 2.5, "completion_tokens": "7"}, (0, 0)),
        ({"prompt_tokens": 2**53 - 1, "completion_tokens": 2**53}, (2**53 - 1, 0)),
        ({"prompt_tokens": 10**30, "completion_tokens": 2**64}, (0, 0)),
    ],
)
def test_tokens(usage: object, expected: tuple[int, int]) -> None:
    assert tokens(usage) == expected


# ---------------------------------------------------------------- a request's tokens, counted once

def test_a_records_tokens_follow_its_usage_object() -> None:
    record = RequestRecord("req", "chat")
    assert record.tokens() == (0, 0)
    record.usage = {"prompt_tokens": 12, "completion_tokens": 5}
    assert record.tokens() == (12, 5)
    record.usage = {"prompt_tokens": 7, "completion_tokens": True}  # a new answer: counted again
    assert record.tokens() == (7, 0)
    record.usage = None
    assert record.tokens() == (0, 0)


@pytest.mark.parametrize("seconds", [0.0, 0.0001234, 0.0004995, 0.001, 0.0123456789, 0.5, 1.0, 2.0000004,
                                     59.999999, 3600.1234567])
def test_milliseconds_for_log_lines_and_ledger_rows(seconds: float) -> None:
    assert repr(ms(seconds)) == repr(round(seconds * 1000, 3))


@given(st.floats(min_value=0, max_value=86_400, allow_nan=False))
def test_milliseconds_never_show_more_than_three_decimals(seconds: float) -> None:
    text = repr(ms(seconds))
    assert "e" in text or len(text.partition(".")[2]) <= 3
    assert abs(ms(seconds) - seconds * 1000) <= 0.0005 + 1e-9 * seconds * 1000


_USAGE_OBJECT_SPEC = re.compile(rb'"usage"\s*:\s*\{')  # what "a usage object" means, as a pattern
_usage_fragments = st.lists(st.sampled_from(
    [b'"usage"', b"usage", b'"', b":", b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"{", b"}", b"null", b"x",
     b'"usage":null', b'"usage": {', b'"usage":{', b'"usage"usage":null', b'"usage"usage":{', b"data: "]),
    max_size=12)


@settings(max_examples=2000, deadline=None)
@given(_usage_fragments, st.integers(0, 40))
def test_a_usage_object_is_found_where_its_pattern_first_matches(fragments: list[bytes], since: int) -> None:
    events = b"".join(fragments)
    match = _USAGE_OBJECT_SPEC.search(events, since)
    assert _first_usage(events, since) == (-1 if match is None else match.start())


@pytest.mark.parametrize("events, expected", [
    (b'"usage":null', -1),
    (b'"usage":{', 0),
    (b'"usage" \t\r\n\x0b\x0c: \n{', 0),
    (b'"usage"usage":{', 6),  # the second key begins at the first one's closing quote
    (b'{"usage":null,"x":{"usage": {}}}', 19),
    (b'"usage":', -1),
    (b'"usage"', -1),
    (b'"usage":[{', -1),
    (b'"usage":null"usage":null', -1),
    (b'"usage"usage":null', -1),
    (b'"usage"usage":null"usage":{', 18),
    (b'"usage"usage":{"usage":null', 6),
    (b'"usage":null"usage": {"usage":{', 12),
    (b'"usage"usage"usage":{', 12),  # three keys, each from the closing quote of the one before
    (b'"usage":{"usage": {', 0),
])
def test_usage_object_table(events: bytes, expected: int) -> None:
    assert _first_usage(events, 0) == expected
