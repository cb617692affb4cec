"""Token usage read from streams (UsageTap) and removed from them (UsageStripper).

The proxy asks every upstream for a usage chunk to price streams and strips it again
for clients that did not ask. Both read only events that hold a usage object; these
tests pin what they find and what passes through, for any way the bytes are chunked.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.usage import UsageStripper, UsageTap, tokens

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


def feed_all(chunks: list[bytes]) -> tuple[bytes, dict | None]:
    tap, strip = UsageTap(), UsageStripper()
    out = []
    for chunk in chunks:
        tap.feed(chunk)
        out.append(strip(chunk))
    return b"".join(out), tap.usage


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


CASES = [
    # name, chunks, expected client bytes, expected usage
    ("one chunk", [STREAM], STRIPPED, USAGE),
    ("event per chunk", [*WORDS, USAGE_ONLY, DONE], STRIPPED, USAGE),
    ("usage chunk split", [*WORDS, USAGE_ONLY[:17], USAGE_ONLY[17:], DONE], STRIPPED, USAGE),
    ("no usage at all", [*WORDS, DONE], b"".join(WORDS) + DONE, None),
    ("usage null everywhere", [content("a", None), DONE], content("a", None) + DONE, None),
    ("usage on a content chunk", [content("a", USAGE), DONE], content("a", None) + DONE, USAGE),
    ("usage in the middle of a batch", [WORDS[0] + USAGE_ONLY + WORDS[1] + DONE], WORDS[0] + WORDS[1] + DONE, USAGE),
    ("CRLF separators", [STREAM.replace(b"\n", b"\r\n")], STRIPPED, USAGE),
    ("comment mentioning usage", [b': "usage": {"x"\n\n' + DONE], b': "usage": {"x"\n\n' + DONE, None),
    ("malformed JSON with usage", [b'data: {"usage": {oops\n\n' + DONE], b'data: {"usage": {oops\n\n' + DONE, None),
    ("two usage chunks: the last wins", [event({"choices": [], "usage": {"prompt_tokens": 1}}) + USAGE_ONLY + DONE],
     DONE, USAGE),
    ("usage split from its separator", [STREAM[:-len(DONE) - 1], STREAM[-len(DONE) - 1:]], STRIPPED, USAGE),
    ("unfinished last event held", [WORDS[0], b"data: {\"cho"], WORDS[0], None),
]


@pytest.mark.parametrize("chunks, client, usage", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tap_and_stripper(chunks: list[bytes], client: bytes, usage: dict | None) -> None:
    got, found = feed_all(chunks)
    assert got == client
    assert found == usage


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_chunking_gives_the_same_answer(cuts: list[int]) -> None:
    got, found = feed_all(split_at(STREAM, cuts))
    assert got == STRIPPED
    assert found == USAGE


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
    ],
)
def test_tokens(usage: object, expected: tuple[int, int]) -> None:
    assert tokens(usage) == expected
