"""The built-in `mock` provider: deterministic answers, tool calls, structured output, well-formed
streams (tool calls and n > 1 reassembled), embeddings in both encodings, and the JSON-Schema
example generator behind them (checked with `jsonschema`)."""

from __future__ import annotations

import array
import base64
import copy
import math
import struct
import sys
import time
from functools import partial
from typing import Any

import orjson
import pytest

from proxy.providers import UpstreamRequest, build_adapter
from proxy.providers.mock import (
    MockAdapter,
    answer_text,
    choose_tool,
    completion,
    embeddings,
    estimate_tokens,
    prompt_tokens,
    request_prompt_tokens,
    stream_events,
)
from proxy.providers.schema_example import conforms, example, pattern_example
from proxy.snapshot import snapshot_from_text
from proxy.sse import DONE, EventSplitter, event_data
from support import chat_body as any_chat_body

chat_body = partial(any_chat_body, "gpt-4o-mini")  # chat_body(text="hello", **fields): the mock answers as gpt-4o-mini


def spec(**fields: float):
    opts = ", ".join(f"{k}: {v}" for k, v in fields.items())
    text = f"providers: {{mock: {{type: mock{', ' + opts if opts else ''}}}}}"
    return snapshot_from_text(text, env={}).providers["mock"]


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
        ([{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
          {"role": "user", "content": "last"}], "You said: last"),
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
    body = chat_body("Hello there")
    first, second = completion(body), completion(dict(body))
    first.pop("created"), second.pop("created")
    assert first == second
    assert first["object"] == "chat.completion"
    assert first["id"].startswith("chatcmpl-mock")
    assert first["model"] == "gpt-4o-mini"
    [choice] = first["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant",
                                 "content": "This is a mock answer from gpt-4o-mini. You said: Hello there"}
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


# ---------------------------------------------------------------- schema examples

DEFS_PERSON = {
    "$defs": {
        "Color": {"enum": ["red", "green"], "type": "string"},
        "Address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                           "zip": {"anyOf": [{"type": "string", "pattern": r"^\d{5}$"}, {"type": "null"}]}},
            "required": ["street", "city", "zip"],
            "additionalProperties": False,
        },
    },
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "color": {"$ref": "#/$defs/Color"},
        "home": {"$ref": "#/$defs/Address"},
        "work": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "color", "home", "work", "tags"],
    "additionalProperties": False,
}

TREE = {
    "$defs": {"Node": {
        "type": "object",
        "properties": {"label": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                       "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}},
        "required": ["label", "children", "parent"],
        "additionalProperties": False,
    }},
    "$ref": "#/$defs/Node",
}

SCHEMAS = {
    "empty": {},
    "true": True,
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "null": {"type": "null"},
    "type-list": {"type": ["null", "integer"]},
    "type-list-all-null-last": {"type": ["string", "null"], "minLength": 3},
    "nested-objects": {"type": "object", "properties": {"user": {
        "type": "object", "required": ["address"], "properties": {"address": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}},
    "optional-properties-included": {"type": "object", "required": ["a"],
                                     "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}},
    "required-without-property": {"type": "object", "required": ["x"], "additionalProperties": {"type": "integer"}},
    "additional-false": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False},
    "min-properties": {"type": "object", "minProperties": 3, "additionalProperties": {"type": "boolean"}},
    "max-properties": {"type": "object", "properties": {"a": {}, "b": {}, "c": {}}, "required": ["a"],
                       "maxProperties": 2},
    "pattern-properties": {"type": "object", "required": ["x_1"], "patternProperties": {"^x_": {"type": "integer"}},
                           "additionalProperties": False},
    "dependent-required": {"type": "object", "properties": {"card": {"type": "string"}},
                           "dependentRequired": {"card": ["billing"]}},
    "array-default-one": {"type": "array", "items": {"type": "integer"}},
    "array-min-max": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 4},
    "array-max-zero": {"type": "array", "maxItems": 0},
    "array-unique": {"type": "array", "items": {"type": "integer", "minimum": 5}, "minItems": 3, "uniqueItems": True},
    "array-unique-objects": {"type": "array", "minItems": 2, "uniqueItems": True,
                             "items": {"type": "object", "properties": {"id": {"type": "string"}}}},
    "prefix-items": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
    "contains": {"type": "array", "items": {"type": ["string", "integer"]}, "contains": {"type": "integer"}},
    "enum": {"enum": ["small", "medium", 3]},
    "enum-typed": {"type": "integer", "enum": ["x", 2, 3]},
    "const": {"const": {"kind": "fixed", "n": [1, 2]}},
    "anyof-null": {"anyOf": [{"type": "null"}, {"type": "string", "format": "email"}]},
    "oneof": {"oneOf": [{"type": "integer"}, {"type": "number", "multipleOf": 0.5}]},
    "oneof-objects": {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "cat"}, "meow": {"type": "boolean"}}, "required": ["kind"]},
        {"type": "object", "properties": {"kind": {"const": "dog"}}, "required": ["kind"]}]},
    "allof": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                        {"properties": {"b": {"type": "integer", "minimum": 10}}, "required": ["b"]},
                        {"properties": {"a": {"maxLength": 4}}}]},
    "ref-defs": DEFS_PERSON,
    "ref-definitions": {"definitions": {"Id": {"type": "string", "format": "uuid"}},
                        "type": "object", "properties": {"id": {"$ref": "#/definitions/Id"}}, "required": ["id"]},
    "ref-with-siblings": {"$defs": {"N": {"type": "integer"}}, "$ref": "#/$defs/N", "minimum": 40, "maximum": 42},
    "recursive-ref": TREE,
    "recursive-root": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
                                                          "items": {"type": "array", "items": {"$ref": "#"}}},
                       "required": ["next", "items"]},
    "formats": {"type": "object", "properties": {
        f: {"type": "string", "format": f}
        for f in ("date-time", "date", "time", "email", "uri", "url", "uuid", "ipv4", "ipv6", "hostname", "duration")}},
    "int-bounds": {"type": "integer", "minimum": 10, "maximum": 12},
    "int-exclusive": {"type": "integer", "exclusiveMinimum": 4, "exclusiveMaximum": 6},
    "int-multiple": {"type": "integer", "minimum": 11, "multipleOf": 7},
    "int-negative": {"type": "integer", "maximum": -3},
    "number-exclusive": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    # 0.4 / 0.1 is exactly 4.0 in floats (0.3 / 0.1 is not, so jsonschema refuses 0.3)
    "number-multiple-float": {"type": "number", "minimum": 0.35, "maximum": 0.45, "multipleOf": 0.1},
    "number-unique": {"type": "array", "minItems": 4, "uniqueItems": True,
                      "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}},
    "number-draft4-exclusive": {"type": "number", "minimum": 2, "exclusiveMinimum": True, "maximum": 2.5},
    "integer-float-multiple": {"type": "integer", "multipleOf": 2.5, "minimum": 3},
    "string-lengths": {"type": "string", "minLength": 20, "maxLength": 25},
    "string-short": {"type": "string", "maxLength": 3},
    "pattern-code": {"type": "string", "pattern": r"^[A-Z]{3}-\d{4}$"},
    "pattern-phone": {"type": "string", "pattern": r"^\+?[1-9]\d{1,14}$"},
    "pattern-readable-kept": {"type": "string", "pattern": "^[a-z ]+$"},
    "pattern-with-length": {"type": "string", "pattern": "^[a-f0-9]+$", "minLength": 6},
    "pattern-alternatives": {"type": "string", "pattern": r"^(draft|final)-v\d+$"},
    "examples-used": {"type": "string", "examples": ["Paris"]},
    "invalid-default-ignored": {"type": "integer", "minimum": 5, "default": 1},
    "inferred-object": {"properties": {"q": {"minimum": 3}}, "required": ["q"]},
}


def _validator(schema: Any) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    cls = jsonschema.Draft202012Validator
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _format_ok(fmt: str, value: str) -> bool:
    """Formats jsonschema does not check without extra packages, checked with the stdlib."""
    import datetime
    import ipaddress
    import re
    import uuid
    from urllib.parse import urlparse

    checks = {
        "date-time": lambda v: datetime.datetime.fromisoformat(v.replace("Z", "+00:00")).tzinfo is not None,
        "date": lambda v: bool(datetime.date.fromisoformat(v)),
        "time": lambda v: datetime.time.fromisoformat(v.replace("Z", "+00:00")).tzinfo is not None,
        "uri": lambda v: bool(urlparse(v).scheme and urlparse(v).netloc),
        "url": lambda v: bool(urlparse(v).scheme and urlparse(v).netloc),
        "uuid": lambda v: str(uuid.UUID(v)) == v,
        "ipv4": lambda v: bool(ipaddress.IPv4Address(v)),
        "ipv6": lambda v: bool(ipaddress.IPv6Address(v)),
        "hostname": lambda v: bool(re.fullmatch(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,}", v)),
        "email": lambda v: bool(re.fullmatch(r"[a-z0-9.]+@[a-z0-9.-]+\.[a-z]+", v)),
        "duration": lambda v: bool(re.fullmatch(r"P(\d+[YMWD])+(T(\d+[HMS])+)?", v)),
    }
    return checks[fmt](value)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_schema_example_validates_and_is_deterministic(name: str) -> None:
    schema = SCHEMAS[name]
    value = example(schema)
    errors = sorted(e.message for e in _validator(schema).iter_errors(value))
    assert errors == [], f"{value!r}: {errors}"
    assert example(copy.deepcopy(schema)) == value
    assert conforms(value, schema)


def test_schema_example_formats_parse() -> None:
    value = example(SCHEMAS["formats"])
    for fmt, text in value.items():
        assert _format_ok(fmt, text), (fmt, text)


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "object", "properties": {"city": {"type": "string"}}}, {"city": "mock city"}),
        ({"type": "object", "properties": {"firstName": {"type": "string"}}}, {"firstName": "mock first name"}),
        ({"type": "array", "items": {"type": "string"}, "minItems": 2}, ["mock value", "mock value 2"]),
        ({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}},
         {"tags": ["mock tag"]}),
        ({"type": ["null", "integer"]}, 1),
        ({"anyOf": [{"type": "null"}, {"type": "boolean"}]}, True),
        ({"type": "integer", "minimum": 10, "maximum": 12}, 11),
        ({"type": "string", "examples": ["Paris"]}, "Paris"),
        ({"enum": ["small", "medium"]}, "small"),
        ({"type": "string", "pattern": r"^[A-Z]{3}-\d{4}$"}, "AAA-0000"),
        (True, "mock value"),
    ],
    ids=["name", "camel-case", "unique-strings", "singular-item", "type-list", "anyof", "bounds", "examples", "enum",
         "pattern", "true"],
)
def test_schema_example_is_readable(schema: Any, expected: Any) -> None:
    assert example(schema) == expected


def test_schema_example_recursion_terminates_minimal() -> None:
    tree = example(TREE)
    depth = 0
    node = tree
    while node["children"]:
        node, depth = node["children"][0], depth + 1
    assert 1 <= depth <= 4
    assert node["parent"] is None  # the deepest node chose null


@pytest.mark.parametrize("pattern", [r"^\d+$", r"^[a-z]{2,3}\.[a-z]+$", r"^(?:ab|cd)*x$", r"^#[0-9a-fA-F]{6}$",
                                     r"^(?P<word>\w+)@(\w+)\.com$", r"[^abc]{4}", r"^a{2,}b?c\s\S$"])
def test_pattern_example_matches(pattern: str) -> None:
    import re
    for extra in (0, 1, 3):
        text = pattern_example(pattern, extra)
        assert text is not None and re.search(pattern, text), (pattern, extra, text)


@pytest.mark.parametrize("pattern", [r"(a)\1", r"^\p{L}+$", r"(unclosed"])
def test_pattern_example_gives_up_on_what_it_cannot_read(pattern: str) -> None:
    assert pattern_example(pattern) is None


# ---------------------------------------------------------------- tools

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "unit"], "additionalProperties": False}}}
SEARCH = {"type": "function", "function": {
    "name": "web-search", "parameters": {"type": "object", "properties": {"query": {"type": "string", "minLength": 3}},
                                         "required": ["query"]}}}
NOARGS = {"type": "function", "function": {"name": "now"}}
TOOLS = [WEATHER, SEARCH, NOARGS]


def tool_body(text: str = "hi", tools: list[dict] = TOOLS, **extra: Any) -> dict:
    return chat_body(text, tools=tools, **extra)


def with_tool_result(body: dict, result: str = "sunny, 21 C") -> dict:
    first = completion(body)["choices"][0]["message"]
    call = first["tool_calls"][0]
    messages = [*body["messages"], first, {"role": "tool", "tool_call_id": call["id"], "content": result}]
    return {**body, "messages": messages}


@pytest.mark.parametrize(
    ("text", "choice", "tools", "expected"),
    [
        ("hi", None, TOOLS, "get_weather"),  # nothing named: the first tool
        ("hi", "auto", TOOLS, "get_weather"),
        ("please do a WEB SEARCH for cats", None, TOOLS, "web-search"),  # '-' as a space, any case
        ("use web-search", "auto", TOOLS, "web-search"),
        ("what time is it now?", "required", TOOLS, "now"),
        ("get weather", "required", [SEARCH, WEATHER], "get_weather"),  # '_' as a space
        ("hi", {"type": "function", "function": {"name": "now"}}, TOOLS, "now"),
        ("web search", {"type": "function", "function": {"name": "get_weather"}}, TOOLS, "get_weather"),
        ("hi", {"type": "function", "function": {"name": "missing"}}, TOOLS, "get_weather"),  # unknown: as auto
        ("hi", {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
            {"type": "function", "function": {"name": "now"}}]}}, TOOLS, "now"),
        ("hi", "none", TOOLS, None),
        ("hi", "required", [], None),
        ("hi", None, [{"type": "custom", "custom": {"name": "grammar"}}], None),
    ],
)
def test_choose_tool(text: str, choice: Any, tools: list[dict], expected: str | None) -> None:
    body = tool_body(text, tools)
    if choice is not None:
        body["tool_choice"] = choice
    chosen = choose_tool(body)
    assert (chosen["name"] if chosen else None) == expected


def test_tool_call_answer_is_openai_shaped_and_valid() -> None:
    body = tool_body("weather in Paris?")
    out = completion(body)
    [choice] = out["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] is None
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert call["id"].startswith("call_") and len(call["id"]) == 5 + 24
    int(call["id"][5:], 16)
    arguments = orjson.loads(call["function"]["arguments"])
    assert list(_validator(WEATHER["function"]["parameters"]).iter_errors(arguments)) == []
    assert arguments == {"city": "mock city", "unit": "celsius", "days": 1}
    again = completion(dict(body))["choices"][0]["message"]["tool_calls"][0]
    assert again == call  # deterministic
    spent = estimate_tokens("get_weather" + call["function"]["arguments"])
    assert out["usage"]["completion_tokens"] == spent
    assert out["usage"]["prompt_tokens"] > prompt_tokens(body["messages"])  # the tool definitions count


def test_tool_without_parameters_gets_empty_object() -> None:
    call = completion(tool_body(tool_choice={"type": "function", "function": {"name": "now"}}))
    assert call["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{}"


def test_tool_result_ends_the_loop_in_text() -> None:
    body = with_tool_result(tool_body("weather in Paris?"))
    out = completion(body)
    [choice] = out["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {
        "role": "assistant", "content": "This is a mock answer from gpt-4o-mini. The tool returned: sunny, 21 C"}
    # the assistant's tool call and the result are part of the prompt
    assert out["usage"]["prompt_tokens"] > request_prompt_tokens(tool_body("weather in Paris?"))


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_choice_calls_again_after_a_tool_result(choice: Any) -> None:
    body = {**with_tool_result(tool_body("weather")), "tool_choice": choice}
    assert completion(body)["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_call_ids_differ_by_conversation() -> None:
    a = completion(tool_body("weather in Paris"))["choices"][0]["message"]["tool_calls"][0]["id"]
    b = completion(tool_body("weather in Rome"))["choices"][0]["message"]["tool_calls"][0]["id"]
    assert a != b


def test_max_tokens_does_not_cut_a_tool_call() -> None:
    out = completion(tool_body(max_tokens=1))
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    orjson.loads(out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])


def test_legacy_functions_are_ignored() -> None:
    body = chat_body(functions=[WEATHER["function"]], function_call={"name": "get_weather"})
    assert completion(body)["choices"][0]["message"]["content"].startswith("This is a mock answer")


# ---------------------------------------------------------------- structured output


def test_json_object_wraps_the_text() -> None:
    out = completion(chat_body("give me json", response_format={"type": "json_object"}))
    content = out["choices"][0]["message"]["content"]
    assert orjson.loads(content) == {"answer": "This is a mock answer from gpt-4o-mini. You said: give me json"}
    assert out["usage"]["completion_tokens"] == estimate_tokens(content)


@pytest.mark.parametrize("name", ["ref-defs", "recursive-ref", "formats", "allof"])
def test_json_schema_content_validates(name: str) -> None:
    schema = SCHEMAS[name]
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    out = completion(chat_body(response_format=fmt, max_tokens=2))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop"  # JSON is never cut into something invalid
    assert list(_validator(schema).iter_errors(orjson.loads(choice["message"]["content"]))) == []
    assert out["usage"]["prompt_tokens"] > prompt_tokens(chat_body()["messages"])  # the schema counts


def test_json_schema_after_a_tool_result() -> None:
    fmt = {"type": "json_object"}
    body = {**with_tool_result(tool_body("weather")), "response_format": fmt}
    content = orjson.loads(completion(body)["choices"][0]["message"]["content"])
    assert content == {"answer": "This is a mock answer from gpt-4o-mini. The tool returned: sunny, 21 C"}


def test_text_response_format_is_plain_text() -> None:
    out = completion(chat_body(response_format={"type": "text"}))
    assert out["choices"][0]["message"]["content"] == answer_text("gpt-4o-mini", chat_body()["messages"])


# ---------------------------------------------------------------- streams, reassembled


def reassemble(events: list[bytes]) -> dict:
    """A stream folded back into a `chat.completion`, checking OpenAI's framing per choice."""
    chunks, done = parse_stream(events)
    assert done
    choices: dict[int, dict] = {}
    usage = None
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        if not chunk["choices"]:
            usage = chunk["usage"]
            assert chunk is chunks[-1]
            continue
        [choice] = chunk["choices"]
        state = choices.setdefault(choice["index"], {"deltas": [], "finish_reason": None})
        assert state["finish_reason"] is None, "nothing after a choice's finish chunk"
        state["deltas"].append(choice["delta"])
        state["finish_reason"] = choice["finish_reason"]
    out = []
    for index in sorted(choices):
        deltas = choices[index]["deltas"]
        first, last = deltas[0], deltas[-1]
        assert first["role"] == "assistant" and last == {}
        message = {"role": "assistant", "content": first["content"]}
        for delta in deltas[1:-1]:
            assert "role" not in delta
            if "content" in delta:
                message["content"] += delta["content"]
        if first.get("tool_calls"):
            [head] = first["tool_calls"]
            assert head["index"] == 0 and head["function"]["arguments"] == ""
            arguments = ""
            for delta in deltas[1:-1]:
                [part] = delta["tool_calls"]
                assert part["index"] == 0 and set(part["function"]) == {"arguments"} and "id" not in part
                assert 0 < len(part["function"]["arguments"]) <= 8
                arguments += part["function"]["arguments"]
            message["tool_calls"] = [{"id": head["id"], "type": head["type"],
                                      "function": {"name": head["function"]["name"], "arguments": arguments}}]
        out.append({"index": index, "message": message, "finish_reason": choices[index]["finish_reason"],
                    "logprobs": None})
    return {"id": chunks[0]["id"], "choices": out, "usage": usage}


STREAM_CASES = {
    "text": chat_body("stream me"),
    "text-n3": chat_body("three of them", n=3),
    "truncated-n2": chat_body("a long question " * 10, n=2, max_tokens=3),
    "tool": tool_body("weather in Paris"),
    "tool-n2": tool_body("web search please", n=2),
    "tool-result": with_tool_result(tool_body("weather")),
    "json-schema-n2": chat_body(n=2, response_format={"type": "json_schema", "json_schema": {
        "name": "p", "schema": DEFS_PERSON, "strict": True}}),
}


@pytest.mark.parametrize("case", list(STREAM_CASES))
def test_stream_reassembles_to_the_non_stream_answer(case: str) -> None:
    body = {**STREAM_CASES[case], "stream": True, "stream_options": {"include_usage": True}}
    streamed = reassemble(stream_events(body))
    whole = completion(body)
    assert streamed["id"] == whole["id"]
    assert streamed["choices"] == whole["choices"]
    assert streamed["usage"] == whole["usage"]
    assert whole["usage"]["total_tokens"] == whole["usage"]["prompt_tokens"] + whole["usage"]["completion_tokens"]


def test_tool_call_stream_framing() -> None:
    body = tool_body("weather", stream=True)
    chunks, _ = parse_stream(stream_events(body))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    call = completion(body)["choices"][0]["message"]["tool_calls"][0]
    assert deltas[0] == {"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": call["id"], "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}
    assert len(deltas) > 3  # the arguments arrive in several fragments
    fragments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:-1]]
    assert deltas[1:-1] == [{"tool_calls": [{"index": 0, "function": {"arguments": f}}]} for f in fragments]
    assert "".join(fragments) == call["function"]["arguments"]
    assert deltas[-1] == {} and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_n_streams_interleave_round_robin() -> None:
    body = chat_body("one two three", n=3, stream=True)
    chunks, _ = parse_stream(stream_events(body))
    indexes = [c["choices"][0]["index"] for c in chunks]
    assert indexes == [0, 1, 2] * (len(indexes) // 3)
    roles = [c["choices"][0]["index"] for c in chunks if "role" in c["choices"][0]["delta"]]
    finishes = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert roles == [0, 1, 2] and finishes == [0, 1, 2]


def test_stream_usage_counts_every_choice() -> None:
    body = chat_body("two", n=2, stream=True, stream_options={"include_usage": True})
    chunks, _ = parse_stream(stream_events(body))
    single = completion(chat_body("two"))["usage"]["completion_tokens"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2 * single


# ---------------------------------------------------------------- embeddings encodings


def decode_base64(text: str) -> list[float]:
    raw = base64.b64decode(text)
    values = array.array("f")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


@pytest.mark.parametrize("dims", [1, 16, 64])
def test_base64_embeddings_decode_to_the_float_vectors(dims: int) -> None:
    body = {"model": "e", "input": ["alpha", "beta"], "dimensions": dims}
    floats = embeddings(body)
    packed = embeddings({**body, "encoding_format": "base64"})
    assert packed["usage"] == floats["usage"]
    for plain, encoded in zip(floats["data"], packed["data"], strict=True):
        assert isinstance(encoded["embedding"], str)
        assert len(base64.b64decode(encoded["embedding"])) == 4 * dims
        decoded = decode_base64(encoded["embedding"])
        assert struct.unpack(f"<{dims}f", base64.b64decode(encoded["embedding"])) == tuple(decoded)
        assert decoded == pytest.approx(plain["embedding"], abs=1e-7)


def test_float_encoding_is_the_default() -> None:
    body = {"model": "e", "input": "x"}
    assert embeddings({**body, "encoding_format": "float"}) == embeddings(body)


async def test_adapter_refuses_unknown_encoding_format() -> None:
    response = await MockAdapter(spec()).send(
        UpstreamRequest("embeddings", {"model": "e", "input": "x", "encoding_format": "int8"}, False, "req-5"))
    assert response.status == 400
    error = orjson.loads(response.body)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "encoding_format"
