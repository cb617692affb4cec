"""The response cache's pure parts, as properties: key canonicalisation and scoping,
entry encoding, the Cache-Control policy, and completions ⇄ streams (assembling a
streamed answer, replaying a stored one as SSE)."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from proxy import sse
from proxy.cache import BYPASS, COMPRESS_OVER, Entry, ResponseCache, decode_entry, encode_entry, request_policy
from proxy.cache.backends import MemoryBackend
from proxy.cache.keys import IGNORED_FIELDS, PREFIX, cache_key
from proxy.config import CacheConfig
from proxy.dialects.chat_stream import StreamAssembler, StreamCapture, choices_identical, replay_events
from support import chunk_events

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- strategies

# values as they come out of a parsed JSON body (orjson.loads), so never NaN/inf or >64-bit ints
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)
# the fields that can change an answer (chat and embeddings)
ANSWER_FIELDS = [
    "messages", "tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p", "max_tokens",
    "max_completion_tokens", "response_format", "seed", "n", "stop", "presence_penalty",
    "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "reasoning_effort", "modalities",
    "audio", "prediction", "input", "dimensions", "encoding_format", "some_future_field",
]
answer_field = st.sampled_from(ANSWER_FIELDS)
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=20)}),
    min_size=1,
    max_size=4,
)
bodies = st.builds(
    lambda m, rest: {"messages": m, **rest},
    messages,
    st.dictionaries(st.sampled_from([f for f in ANSWER_FIELDS if f != "messages"]), values, max_size=4),
)
# the delivery and bookkeeping fields, each with values a client would send
ignored = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["fast", "openai/gpt-4o", "gpt-4o", "alias"]),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "user": st.text(max_size=12),
        "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
        "store": st.booleans(),
        "service_tier": st.sampled_from(["auto", "default", "flex"]),
    },
)
names = st.text(min_size=1, max_size=12)  # team names and model names, with ':' '%' '*' and all


def parsed(body: dict) -> dict:
    """The body as the proxy sees it: serialised by a client, parsed by orjson."""
    return orjson.loads(orjson.dumps(body))


def canonical(body: dict) -> bytes:
    return orjson.dumps({k: v for k, v in body.items() if k not in IGNORED_FIELDS}, option=orjson.OPT_SORT_KEYS)


def shuffled(value, rnd: random.Random):
    """The same JSON value with every object's keys in another order."""
    if isinstance(value, dict):
        items = [(k, shuffled(v, rnd)) for k, v in value.items()]
        rnd.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


def key(body: dict, *, scope: str = "search", target: str = "openai/gpt-4o", endpoint: str = "chat/completions") -> str:
    return cache_key(scope=scope, target=target, endpoint=endpoint, body=body)


# ---------------------------------------------------------------- keys


@FAST
@given(bodies, ignored, ignored, st.randoms(use_true_random=False))
def test_equal_canonical_requests_share_a_key(body, extra_a, extra_b, rnd):
    body = parsed(body)
    a = {**body, **extra_a}
    b = shuffled({**body, **extra_b}, rnd)  # other key order at every depth, other delivery fields
    assert key(a) == key(b) == key(body)


@FAST
@given(bodies, bodies)
def test_different_answer_fields_give_different_keys(a, b):
    a, b = parsed(a), parsed(b)
    assert (key(a) == key(b)) == (canonical(a) == canonical(b))


@FAST
@given(bodies, answer_field, values)
def test_changing_any_one_answer_field_changes_the_key(body, field, value):
    body = parsed(body)
    changed = {**body, field: parsed({"v": value})["v"]}
    assume(canonical(changed) != canonical(body))
    assert key(changed) != key(body)


@FAST
@given(bodies, answer_field)
def test_adding_or_removing_an_answer_field_changes_the_key(body, field):
    body = parsed(body)
    if field in body:
        other = {k: v for k, v in body.items() if k != field}
    else:
        other = {**body, field: None}  # explicitly null is not the same request as absent
    assert key(other) != key(body)


@pytest.mark.parametrize(
    "a, b",
    [
        ({"temperature": 1}, {"temperature": 1.0}),  # may differ: a miss, never a wrong hit
        ({"n": 1}, {"n": True}),
        ({"stop": "x"}, {"stop": ["x"]}),
        ({"seed": 0}, {"seed": None}),
    ],
)
def test_look_alike_values_never_share_a_key(a, b):
    base = {"messages": [{"role": "user", "content": "hi"}]}
    assert key({**base, **a}) != key({**base, **b})


@FAST
@given(bodies, names, names, names, names)
def test_scope_and_target_always_separate_keys(body, scope_a, scope_b, target_a, target_b):
    assume((scope_a, target_a) != (scope_b, target_b))
    assert key(body, scope=scope_a, target=target_a) != key(body, scope=scope_b, target=target_b)


@FAST
@given(bodies, names, names)
def test_key_layout_is_prefix_scope_target_digest(body, scope, target):
    k = key(body, scope=scope, target=target)
    assert k.startswith(PREFIX + "c:")
    parts = k[len(PREFIX) + 2:].split(":")
    assert len(parts) == 3  # ':' inside a name is escaped, so purges can match by part
    assert len(parts[2]) == 64 and all(c in "0123456789abcdef" for c in parts[2])


def test_names_are_escaped_alike_past_the_remembered_ones():
    """Scopes and targets are escaped from a bounded memo; names past its bound are escaped
    the same way, every time."""
    names = [f"p{i}/m:{i}%{i}" for i in range(2500)]
    for _ in range(2):
        for name in names:
            k = cache_key(scope=name, target=name, endpoint="chat/completions", body={"messages": []})
            escaped = name.replace("%", "%25").replace(":", "%3A")
            assert k.startswith(f"{PREFIX}c:{escaped}:{escaped}:")


@FAST
@given(bodies)
def test_endpoint_separates_keys(body):
    assert key(body, endpoint="chat/completions") != key(body, endpoint="embeddings")


@FAST
@given(bodies, ignored, names, names)
def test_team_scope_separates_teams_and_shared_scope_does_not(body, extra, team_a, team_b):
    assume(team_a != team_b)
    body = parsed(body)
    for scope, crosses in (("team", False), ("shared", True)):
        cache = ResponseCache(CacheConfig(backend="memory", scope=scope), MemoryBackend(10))
        a = cache.key(team=team_a, target="openai/gpt-4o", endpoint="chat/completions", body=body)
        b = cache.key(team=team_b, target="openai/gpt-4o", endpoint="chat/completions", body={**body, **extra})
        same_team = cache.key(team=team_a, target="openai/gpt-4o", endpoint="chat/completions", body={**body, **extra})
        assert (a == b) is crosses
        assert a == same_team


def test_key_does_not_mutate_the_body():
    body = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    before = orjson.dumps(body)
    cache = ResponseCache(CacheConfig(backend="memory"), MemoryBackend(10))
    cache.key(team="a", target="openai/gpt-4o", endpoint="chat/completions", body=body)
    assert orjson.dumps(body) == before


# ---------------------------------------------------------------- entries

usages = st.none() | st.dictionaries(
    st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens"]), st.integers(0, 10**7), min_size=1
)


@FAST
@given(
    names,
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    usages,
    st.binary(max_size=300) | st.builds(lambda s, n: s * n, st.binary(min_size=1, max_size=40), st.integers(1, 400)),
)
def test_entry_round_trip(target, created, usage, body):
    entry = Entry(target, created, usage, body)
    raw = encode_entry(entry)
    assert decode_entry(raw) == entry
    header = orjson.dumps({"v": 1, "target": target, "created": created, "usage": usage})
    compressed = len(header) + 1 + len(body) > COMPRESS_OVER
    assert raw[:1] == (b"z" if compressed else b"j")


def test_large_answers_are_stored_compressed_and_small_ones_plain():
    answer = orjson.dumps({"choices": [{"message": {"content": "the same sentence again. " * 2000}}]})
    raw = encode_entry(Entry("openai/gpt-4o", 1.5, {"total_tokens": 3}, answer))
    assert raw[:1] == b"z" and len(raw) < len(answer) / 10
    small = encode_entry(Entry("openai/gpt-4o", 1.5, None, b'{"ok":true}'))
    assert small[:1] == b"j" and orjson.loads(small[1:].partition(b"\n")[0])["target"] == "openai/gpt-4o"


@FAST
@given(st.binary(max_size=200))
def test_garbage_decodes_to_a_miss_never_an_exception(raw):
    result = decode_entry(raw)
    assert result is None or isinstance(result, Entry)


def test_entry_age():
    entry = Entry("t", 100.0, None, b"{}")
    assert entry.age(now=130.5) == 30.5
    assert entry.age(now=50.0) == 0.0  # a clock that went backwards is not a negative age


# ---------------------------------------------------------------- Cache-Control

directive = st.sampled_from(["no-cache", "no-store", "max-age=0", "max-age=7", "max-age=3600", "max-age=x",
                             "max-age=-1", "private", "no-transform", "max-stale=5", "must-revalidate", ""])


@FAST
@given(
    st.lists(directive, max_size=5),
    st.lists(st.booleans(), min_size=5, max_size=5),
    st.sampled_from([None, 1, 600]),
    st.booleans(),
    st.sampled_from(["redis", "memory", "off"]),
)
def test_request_policy_reads_cache_control(directives, upper, route_ttl, route_enabled, backend):
    header = " , ".join(d.upper() if up else d for d, up in zip(directives, upper[: len(directives)], strict=True))
    policy = request_policy(CacheConfig(backend=backend, ttl_s=3600), route_ttl, route_enabled, header or None)
    if backend == "off" or not route_enabled or "no-store" in directives:
        assert policy == BYPASS and not policy.used
        return
    ages = [float(d.split("=")[1]) for d in directives if d.startswith("max-age=") and d[8:].isdigit()]
    assert policy.lookup is ("no-cache" not in directives)
    assert policy.store is True
    assert policy.max_age == (ages[-1] if ages else None)
    assert policy.ttl_s == (route_ttl or 3600)
    assert policy.used


@pytest.mark.parametrize(
    "header, lookup, store, max_age",
    [
        (None, True, True, None),
        ("", True, True, None),
        ("no-cache", False, True, None),
        ("no-store", False, False, None),
        ("no-cache, no-store", False, False, None),
        ("max-age=0", True, True, 0.0),
        ("Max-Age=120", True, True, 120.0),
        ("max-age=abc", True, True, None),
        ("no-cache,max-age=5", False, True, 5.0),
    ],
)
def test_request_policy_examples(header, lookup, store, max_age):
    policy = request_policy(CacheConfig(backend="memory"), None, True, header)
    assert (policy.lookup, policy.store, policy.max_age) == (lookup, store, max_age)


# ---------------------------------------------------------------- streams


def split_feed(events: list[bytes], rnd: random.Random) -> dict | None:
    """Feed a stream's bytes to a capture in random pieces, as a network would cut them."""
    raw = b"".join(events)
    capture = StreamCapture()
    i = 0
    while i < len(raw):
        n = rnd.randint(1, 64)
        capture.feed(raw[i : i + n])
        i += n
    return capture.assembler.completion()


tool_calls = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.text("abcdef0123456789", min_size=4, max_size=8).map(lambda s: "call_" + s),
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {"name": st.text("abcxyz_", min_size=1, max_size=8), "arguments": st.text(max_size=30)}
            ),
        }
    ),
    min_size=1,
    max_size=3,
)


@st.composite
def completions(draw) -> dict:
    n = draw(st.integers(1, 3))
    choices = []
    for index in range(n):
        if draw(st.booleans()):
            message = {"role": "assistant", "content": draw(st.text(min_size=1, max_size=40))}
            finish = draw(st.sampled_from(["stop", "length", "content_filter"]))
        else:
            message = {"role": "assistant", "content": draw(st.none() | st.text(min_size=1, max_size=10)),
                       "tool_calls": draw(tool_calls)}
            finish = "tool_calls"
        choices.append({"index": index, "message": message, "finish_reason": finish})
    body = {
        "object": "chat.completion",
        "id": "chatcmpl-" + draw(st.text("abc123", min_size=1, max_size=6)),
        "created": draw(st.integers(0, 2**31)),
        "model": draw(st.sampled_from(["gpt-4o", "gpt-4o-mini-2024-07-18", "llama3:8b"])),
        "choices": choices,
    }
    if draw(st.booleans()):
        body["system_fingerprint"] = "fp_" + draw(st.text("abc123", min_size=1, max_size=6))
    if draw(st.booleans()):
        p, c = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))
        body["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    return body


def check_well_formed(events: list[bytes], completion: dict, include_usage: bool) -> list[dict]:
    """Every event a `data:` line, chunks of one id, [DONE] last, the usage chunk last before it."""
    assert events[-1] == sse.DONE
    chunks = []
    for event in events[:-1]:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n\n") == 1
        chunk = orjson.loads(event[6:])
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["id"] == completion["id"] and chunk["model"] == completion["model"]
        chunks.append(chunk)
    with_usage = [c for c in chunks if "usage" in c]
    if include_usage and completion.get("usage") is not None:
        assert with_usage == [chunks[-1]] and chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == completion["usage"]
    else:
        assert with_usage == []
    for chunk in chunks:
        for choice in chunk["choices"]:
            assert set(choice) == {"index", "delta", "finish_reason", "logprobs"}  # as OpenAI's chunks
            assert choice["logprobs"] is None
    finishes = [ch["index"] for c in chunks for ch in c["choices"] if ch["finish_reason"] is not None]
    assert sorted(finishes) == list(range(len(completion["choices"])))  # each choice finishes once
    return chunks


@FAST
@given(completions(), st.booleans(), st.randoms(use_true_random=False))
def test_replay_is_well_formed_and_assembles_back(completion, include_usage, rnd):
    events = replay_events(completion, include_usage=include_usage)
    check_well_formed(events, completion, include_usage)
    again = split_feed(events, rnd)
    assert again is not None
    expected = dict(completion)
    if not include_usage:
        expected.pop("usage", None)
    assert again == expected


@FAST
@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=8), st.booleans(), st.booleans(),
       st.randoms(use_true_random=False))
def test_live_stream_assembled_then_replayed(words, with_usage, include_usage, rnd):
    usage = {"prompt_tokens": 4, "completion_tokens": len(words), "total_tokens": 4 + len(words)}
    live = chunk_events(words, model="gpt-4o", usage=usage if with_usage else None)
    answer = split_feed(live, rnd)
    assert answer is not None
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "".join(words)}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer.get("usage") == (usage if with_usage else None)
    assert (answer["id"], answer["model"], answer["created"]) == ("chatcmpl-fake", "gpt-4o", 1)
    # stored as bytes, replayed as a stream that says the same
    stored = decode_entry(encode_entry(Entry("openai/gpt-4o", 1.0, answer.get("usage"), orjson.dumps(answer))))
    assert stored is not None
    replayed = replay_events(orjson.loads(stored.body), include_usage=include_usage)
    chunks = check_well_formed(replayed, answer, include_usage)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(words)
    assert split_feed(replayed, rnd)["choices"] == answer["choices"]


@FAST
@given(st.lists(st.text(min_size=1, max_size=5), min_size=2, max_size=6), st.data())
def test_incomplete_streams_never_assemble(words, data):
    live = chunk_events(words, usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    cut = data.draw(st.integers(0, len(live) - 1))  # anything short of the whole stream
    assembler = StreamAssembler()
    for event in live[:cut]:
        payload = sse.event_data(event.rstrip(b"\n"))
        assert payload is not None
        assembler.feed_event(payload)
    if cut == len(live) - 1:
        # everything but [DONE]: each choice finished, the stream did not end normally
        assert not assembler.done
    assert assembler.completion() is None


def test_error_event_spoils_the_stream():
    assembler = StreamAssembler()
    events = chunk_events(["a", "b"])
    for event in events[:2]:
        assembler.feed_event(sse.event_data(event))
    assembler.feed_event(b'{"error": {"message": "upstream broke"}}')
    for event in events[2:]:
        assembler.feed_event(sse.event_data(event))
    assert assembler.done and assembler.completion() is None


def test_choices_merge_by_index_when_interleaved():
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m"}

    def ev(index, delta, finish=None):
        return orjson.dumps({**base, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]})

    assembler = StreamAssembler()
    for data in [ev(1, {"role": "assistant", "content": ""}), ev(0, {"role": "assistant", "content": "A"}),
                 ev(1, {"content": "B"}), ev(0, {"content": "a"}), ev(1, {}, "stop"), ev(0, {}, "length"), b"[DONE]"]:
        assembler.feed_event(data)
    answer = assembler.completion()
    assert answer is not None
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in answer["choices"]] == [
        (0, "Aa", "length"), (1, "B", "stop")
    ]
    assert choices_identical(answer) is False


@FAST
@given(st.integers(1, 5), st.text(max_size=10), st.data())
def test_choices_identical(n, content, data):
    message = {"role": "assistant", "content": content}
    same = {"choices": [{"index": i, "message": dict(message), "finish_reason": "stop"} for i in range(n)]}
    assert choices_identical(same)
    if n > 1:
        odd = data.draw(st.integers(0, n - 1))
        other = data.draw(st.text(max_size=10).filter(lambda t: t != content))
        same["choices"][odd]["message"] = {"role": "assistant", "content": other}
        assert not choices_identical(same)


def test_choices_identical_edge_cases():
    assert choices_identical({"choices": []})
    assert choices_identical({})
    assert choices_identical({"choices": [{"message": {"content": "x"}}]})
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert not choices_identical({"choices": [{"message": {"content": None, "tool_calls": calls}},
                                              {"message": {"content": None}}]})
