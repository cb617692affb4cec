"""The built-in `mock` provider: deterministic answers, well-formed streams, embeddings."""

from __future__ import annotations

import math
import time

import orjson
import pytest

from proxy.providers import UpstreamRequest, build_adapter
from proxy.providers.mock import (
    MockAdapter,
    answer_text,
    completion,
    embeddings,
    estimate_tokens,
    prompt_tokens,
    stream_events,
)
from proxy.snapshot import snapshot_from_text
from proxy.sse import DONE, EventSplitter, event_data


def chat_body(text: str = "Hello there", **extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def spec(**fields: float):
    opts = ", ".join(f"{k}: {v}" for k, v in fields.items())
    return snapshot_from_text(f"providers: {{mock: {{type: mock{', ' + opts if opts else ''}}}}}", env={}).providers["mock"]


def parse_stream(events: list[bytes]) -> tuple[list[dict], bool]:
    """The JSON chunks of a stream and whether it ended with [DONE]; checks the framing."""
    raw = b"".join(events)
    splitter = EventSplitter()
    split = splitter.feed(raw)
    assert splitter.pending == b"", "every event is terminated"
    assert len(split) == len(events), "one SSE event per yielded chunk"
    datas = [event_data(e) for e in split]
    assert all(d is not None for d in datas)
    done = datas[-1] == b"[DONE]"
    assert datas.count(b"[DONE]") == (1 if done else 0)
    return [orjson.loads(d) for d in datas if d != b"[DONE]"], done


# ---------------------------------------------------------------- token estimates


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)])
def test_estimate_tokens(text, tokens):
    assert estimate_tokens(text) == tokens


@pytest.mark.parametrize(
    ("messages", "tokens"),
    [
        ([], 3),
        ([{"role": "user", "content": "abcd"}], 3 + 3 + 1),
        ([{"role": "system", "content": "x" * 8}, {"role": "user", "content": "hi"}], 3 + (3 + 2) + (3 + 1)),
        ([{"role": "user", "content": [{"type": "text", "text": "abcdefgh"}, {"type": "image_url"}]}], 3 + 3 + 2),
        ([{"role": "assistant", "content": None}], 3 + 3),
    ],
)
def test_prompt_tokens(messages, tokens):
    assert prompt_tokens(messages) == tokens


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        ([{"role": "user", "content": "Hello   there\n friend"}], "You said: Hello there friend"),
        ([{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "last"}],
         "You said: last"),
        ([{"role": "system", "content": "only system"}], "You said: (nothing)"),
        ([{"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]}],
         "You said: part one two"),
        ([{"role": "user", "content": "y" * 500}], "You said: " + "y" * 160),
    ],
)
def test_answer_text(messages, says):
    assert answer_text("m", messages) == f"This is a mock answer from m. {says}"


# ---------------------------------------------------------------- chat


def test_completion_is_deterministic_and_openai_shaped():
    body = chat_body()
    first, second = completion(body), completion(dict(body))
    first.pop("created"), second.pop("created")
    assert first == second
    assert first["object"] == "chat.completion"
    assert first["id"].startswith("chatcmpl-mock")
    assert first["model"] == "gpt-4o-mini"
    [choice] = first["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "This is a mock answer from gpt-4o-mini. You said: Hello there"}
    text = choice["message"]["content"]
    assert first["usage"] == {
        "prompt_tokens": prompt_tokens(body["messages"]),
        "completion_tokens": estimate_tokens(text),
        "total_tokens": prompt_tokens(body["messages"]) + estimate_tokens(text),
    }


def test_different_prompts_give_different_answers_and_ids():
    a, b = completion(chat_body("one")), completion(chat_body("two"))
    assert a["choices"][0]["message"]["content"] != b["choices"][0]["message"]["content"]
    assert a["id"] != b["id"]


@pytest.mark.parametrize(("field", "limit"), [("max_tokens", 3), ("max_completion_tokens", 5), ("max_tokens", 1)])
def test_max_tokens_truncates_with_finish_reason_length(field, limit):
    out = completion(chat_body(**{field: limit}))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "length"
    assert len(choice["message"]["content"]) == limit * 4
    assert out["usage"]["completion_tokens"] == limit


def test_generous_max_tokens_does_not_truncate():
    assert completion(chat_body(max_tokens=10_000))["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_n_repeats_the_choice(n):
    out = completion(chat_body(n=n))
    assert [c["index"] for c in out["choices"]] == list(range(n))
    assert len({c["message"]["content"] for c in out["choices"]}) == 1
    single = completion(chat_body())["usage"]["completion_tokens"]
    assert out["usage"]["completion_tokens"] == single * n


# ---------------------------------------------------------------- stream


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_is_well_formed_sse(include_usage):
    body = chat_body("stream me please", stream=True)
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    events = stream_events(body)
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert events[-1] == DONE
    chunks, done = parse_stream(events)
    assert done
    whole = completion(body)
    assert {c["id"] for c in chunks} == {whole["id"]}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-4o-mini" for c in chunks)

    content_chunks = [c for c in chunks if c["choices"]]
    assert content_chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content_chunks)
    assert text == whole["choices"][0]["message"]["content"]
    finishes = [c["choices"][0]["finish_reason"] for c in content_chunks]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert content_chunks[-1]["choices"][0]["delta"] == {}

    usage_chunks = [c for c in chunks if not c["choices"]]
    if include_usage:
        assert usage_chunks == [{**usage_chunks[0], "usage": whole["usage"]}]
        assert chunks[-1] is usage_chunks[0]  # after the finish chunk, before [DONE]
    else:
        assert usage_chunks == []
        assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}])
def test_no_usage_chunk_unless_asked(options):
    body = chat_body(stream=True)
    if options is not None:
        body["stream_options"] = options
    chunks, _ = parse_stream(stream_events(body))
    assert all(c["choices"] for c in chunks)


def test_stream_truncated_by_max_tokens_finishes_with_length():
    body = chat_body("a long question " * 20, stream=True, max_tokens=4, stream_options={"include_usage": True})
    chunks, _ = parse_stream(stream_events(body))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert len(text) == 16
    assert [c for c in chunks if c["choices"]][-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 4


# ---------------------------------------------------------------- embeddings


@pytest.mark.parametrize(
    ("value", "count", "tokens"),
    [
        ("hello world!", 1, 3),
        (["a", "bbbbb"], 2, 1 + 2),
        ([1, 2, 3], 1, 3),  # one token array
        ([[1, 2], [3]], 2, 3),
    ],
)
def test_embeddings_shape_and_usage(value, count, tokens):
    out = embeddings({"model": "text-embedding-3-small", "input": value})
    assert out["object"] == "list" and out["model"] == "text-embedding-3-small"
    assert [d["index"] for d in out["data"]] == list(range(count))
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 16 for d in out["data"])
    assert out["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


@pytest.mark.parametrize("dims", [1, 3, 8, 16, 100])
def test_embeddings_are_unit_vectors_of_the_asked_size(dims):
    [item] = embeddings({"model": "e", "input": "text", "dimensions": dims})["data"]
    vector = item["embedding"]
    assert len(vector) == dims
    assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-9)


def test_embeddings_are_deterministic_and_distinct():
    a1 = embeddings({"model": "e", "input": ["alpha", "beta"]})
    a2 = embeddings({"model": "e", "input": ["alpha", "beta"]})
    assert a1 == a2
    first, second = (d["embedding"] for d in a1["data"])
    assert first != second
    # an input's vector does not depend on its neighbours or position
    assert embeddings({"model": "e", "input": "beta"})["data"][0]["embedding"] == second


# ---------------------------------------------------------------- the adapter


async def test_adapter_answers_json():
    adapter = build_adapter(spec())
    assert isinstance(adapter, MockAdapter)
    response = await adapter.send(UpstreamRequest("chat/completions", chat_body(), False, "req-1"))
    assert response.ok and response.status == 200 and response.chunks is None
    assert ("content-type", "application/json") in response.headers
    body = orjson.loads(response.body)
    assert body["choices"][0]["message"]["content"] == completion(chat_body())["choices"][0]["message"]["content"]


async def test_adapter_streams_events():
    adapter = MockAdapter(spec())
    body = chat_body(stream=True, stream_options={"include_usage": True})
    response = await adapter.send(UpstreamRequest("chat/completions", body, True, "req-2"))
    assert response.ok and response.body == b""
    assert ("content-type", "text/event-stream") in response.headers
    assert response.chunks is not None
    received = [chunk async for chunk in response.chunks]
    expected = stream_events(body)
    assert len(received) == len(expected) and received[-1] == DONE
    chunks, done = parse_stream(received)
    assert done and chunks[-1]["usage"] == completion(body)["usage"]


async def test_adapter_embeddings():
    adapter = MockAdapter(spec())
    body = {"model": "e", "input": ["x", "y"], "dimensions": 4}
    response = await adapter.send(UpstreamRequest("embeddings", body, False, "req-3"))
    assert orjson.loads(response.body) == embeddings(body)


async def test_adapter_latency_and_chunk_interval():
    adapter = MockAdapter(spec(latency_ms=30, chunk_interval_ms=5))
    started = time.perf_counter()
    response = await adapter.send(UpstreamRequest("chat/completions", chat_body("a b c"), True, "req-4"))
    first_byte = time.perf_counter() - started
    assert response.chunks is not None
    received = [chunk async for chunk in response.chunks]
    total = time.perf_counter() - started
    assert first_byte >= 0.025
    assert total >= 0.025 + 0.004 * (len(received) - 1)
