"""The Responses API surface: its dialect (request checks, usage, stream observer, replay,
errors) and its translation to and from Chat Completions (requests, answers, streams),
from golden files in tests/data/responses written from OpenAI's documented examples.

Every object made is checked against the openai SDK's own wire types, strictly (no field
the SDK does not know), and every stream is also run through the SDK's own stream
accumulator (`ResponseStreamState`), which checks the items' identities and indexes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseErrorEvent, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from proxy import sse
from proxy.dialects.base import Inbound
from proxy.dialects.chat import ChatDialect
from proxy.dialects.responses import ResponsesDialect
from proxy.errors import InvalidRequest, UpstreamError
from proxy.translate.base import Chain, Translator
from proxy.translate.responses_chat import ResponsesToChat, to_chat

DATA = Path(__file__).parent / "data" / "responses"
EXAMPLES = ["text", "instructions", "function_call", "function_round_trip", "json_schema"]
STORED = ["stored_web_search", "stored_reasoning"]
EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
DIALECT = ResponsesDialect()
TRANSLATOR = ResponsesToChat()


def golden(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def strict(value: Any, where: str = "") -> None:
    """No field anywhere in a validated SDK object that its type does not declare."""
    if isinstance(value, BaseModel):
        assert not value.model_extra, f"{where or type(value).__name__}: unknown fields {sorted(value.model_extra)}"
        for name in type(value).model_fields:
            strict(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            strict(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            strict(item, f"{where}.{key}")


def valid_response(obj: dict[str, Any]) -> Response:
    response = Response.model_validate(obj)
    strict(response, "response")
    return response


def events_of(stream: bytes) -> list[dict[str, Any]]:
    """The events of a Responses stream, checked: framing, SDK type, numbering."""
    splitter = sse.EventSplitter()
    raw = splitter.feed(stream)
    assert splitter.pending == b""
    events = []
    for event in raw:
        lines = event.split(b"\n")
        assert len(lines) == 2 and lines[0].startswith(b"event: "), event
        data = orjson.loads(sse.event_data(event) or b"")
        assert lines[0] == b"event: " + data["type"].encode()
        strict(EVENT.validate_python(data), data["type"])
        events.append(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def accumulated(events: list[dict[str, Any]]) -> Any:
    """The SDK's own stream accumulator over the events; its final response."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=openai.omit, text_format=openai.omit)
    final = None
    for event in events:
        for out in state.handle_event(EVENT.validate_python(event)):
            if out.type in ("response.completed", "response.incomplete"):
                final = out.response
    assert final is not None
    return final


def unparsed(response: Any) -> Any:
    """A response as JSON without what the SDK's parsing adds (`parsed`, `parsed_arguments`)."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("parsed", "parsed_arguments")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(response.to_dict(mode="json"))


def check_item_indexes(events: list[dict[str, Any]]) -> None:
    """output_index, item_id and content_index agree across an item's events."""
    items: dict[int, str] = {}
    parts: dict[tuple[int, int], str] = {}
    for event in events:
        kind = event["type"]
        if kind == "response.output_item.added":
            assert event["output_index"] == len(items)
            items[event["output_index"]] = event["item"].get("id") or event["item"].get("call_id")
        elif "output_index" in event:
            index = event["output_index"]
            expected = items[index]
            item_id = event["item"].get("id") if kind == "response.output_item.done" else event["item_id"]
            assert item_id == expected, event
            if kind == "response.content_part.added":
                assert event["content_index"] == len([k for k in parts if k[0] == index])
                parts[(index, event["content_index"])] = event["part"]["type"]
            elif "content_index" in event and "summary_index" not in event and "reasoning_text" not in kind:
                assert (index, event["content_index"]) in parts, event


def final_response(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert events[-1]["type"] in ("response.completed", "response.incomplete", "response.failed")
    return dict(events[-1]["response"])


def cut(stream: bytes, points: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(stream)]
    return [stream[a:b] for a, b in pairwise(bounds) if b > a]


async def _aiter(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


def translated(chunks: list[bytes], body: dict[str, Any], translator: Translator = TRANSLATOR) -> bytes:
    return b"".join(asyncio.run(_collect(translator.stream(_aiter(chunks), body, "p1"))))


def assembled(chat_sse: bytes) -> dict[str, Any]:
    """The chat dialect's own reading of a chat stream: the completion it would cache."""
    observer = ChatDialect().stream_observer(True)
    observer.feed(chat_sse)
    completion = observer.answer()
    assert completion is not None
    return completion


def stream_body(name: str) -> dict[str, Any]:
    return {**golden({"text_stream.sse": "text", "tool_stream.sse": "function_call"}[name])["request"], "stream": True}


# ---------------------------------------------------------------- golden examples


@pytest.mark.parametrize("name", EXAMPLES)
def test_golden_request(name: str) -> None:
    example = golden(name)
    assert TRANSLATOR.request(example["request"]) == example["chat_request"]
    assert TRANSLATOR.dropped(example["request"]) == []


@pytest.mark.parametrize("name", EXAMPLES)
def test_golden_answer(name: str) -> None:
    example = golden(name)
    response = TRANSLATOR.answer(example["chat_completion"], example["request"])
    assert response == example["response"]
    parsed = valid_response(response)
    content = example["chat_completion"]["choices"][0]["message"]["content"]
    assert parsed.output_text == (content or "")


def test_golden_answer_usage_normalised() -> None:
    example = golden("json_schema")
    usage = DIALECT.usage(TRANSLATOR.answer(example["chat_completion"], example["request"]))
    assert usage == {"prompt_tokens": 92, "completion_tokens": 18, "total_tokens": 110,
                     "prompt_tokens_details": {"cached_tokens": 64}}


# ---------------------------------------------------------------- requests

WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
WEATHER_CHAT = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}
CALL_CHAT = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
CALL2 = {**CALL, "call_id": "call_2", "arguments": "{\"city\":\"Rome\"}"}
CALL2_CHAT = {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}

REQUESTS = [
    pytest.param({"model": "m", "input": "hi"}, {"model": "m", "messages": [user("hi")]}, id="string-input"),
    pytest.param({"input": "hi"}, {"messages": [user("hi")]}, id="no-model"),
    pytest.param({"model": "m", "input": "hi", "instructions": ""}, {"model": "m", "messages": [user("hi")]},
                 id="empty-instructions-left-out"),
    pytest.param({"model": "m", "input": [{"type": "message", "role": "developer", "content": "be brief"},
                                          {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]},
                 {"model": "m", "messages": [{"role": "developer", "content": "be brief"}, user("hi")]},
                 id="typed-and-untyped-messages-one-text-part-collapsed"),
    pytest.param({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "a"},
                                                                       {"type": "input_text", "text": "b"}]}]},
                 {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                         {"type": "text", "text": "b"}]}]},
                 id="text-parts"),
    pytest.param({"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what is in this image?"},
        {"type": "input_image", "image_url": "https://example.com/cat.jpg", "detail": "high"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "original"}]}]},
        {"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is in this image?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]},
        id="images-detail-kept-when-chat-knows-it"),
    pytest.param({"model": "m", "input": [user("hi"), {"type": "message", "role": "assistant", "id": "msg_1",
                                                       "status": "completed", "content": [
                                                           {"type": "output_text", "text": "hello", "annotations": []}]},
                                          user("bye")]},
                 {"model": "m", "messages": [user("hi"), {"role": "assistant", "content": "hello"}, user("bye")]},
                 id="assistant-output-message"),
    pytest.param({"model": "m", "input": [{"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}]},
                 {"model": "m", "messages": [{"role": "assistant", "content": None, "refusal": "no"}]},
                 id="assistant-refusal"),
    pytest.param({"model": "m", "input": [user("weather?"), CALL, CALL2,
                                          {"type": "function_call_output", "call_id": "call_1", "output": "12 C"},
                                          {"type": "function_call_output", "call_id": "call_2", "output": "20 C"}]},
                 {"model": "m", "messages": [user("weather?"),
                                             {"role": "assistant", "content": None, "tool_calls": [CALL_CHAT, CALL2_CHAT]},
                                             {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
                                             {"role": "tool", "tool_call_id": "call_2", "content": "20 C"}]},
                 id="consecutive-calls-one-message"),
    pytest.param({"model": "m", "input": [user("weather?"), {"role": "assistant", "content": "Let me look."}, CALL]},
                 {"model": "m", "messages": [user("weather?"),
                                             {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL_CHAT]}]},
                 id="text-then-call-merged"),
    pytest.param({"model": "m", "input": [user("weather?"), CALL, {"role": "assistant", "content": "Checking."}]},
                 {"model": "m", "messages": [user("weather?"),
                                             {"role": "assistant", "content": "Checking.", "tool_calls": [CALL_CHAT]}]},
                 id="call-then-text-merged"),
    pytest.param({"model": "m", "input": [user("q"), {"role": "assistant", "content": "a"}, CALL,
                                          {"role": "assistant", "content": "b"}]},
                 {"model": "m", "messages": [user("q"), {"role": "assistant", "tool_calls": [CALL_CHAT],
                                                         "content": [{"type": "text", "text": "a"},
                                                                     {"type": "text", "text": "b"}]}]},
                 id="text-call-text-one-turn"),
    pytest.param({"model": "m", "input": [user("q"), CALL, {"type": "function_call_output", "call_id": "call_1",
                                                            "output": "x"}, CALL2]},
                 {"model": "m", "messages": [user("q"), {"role": "assistant", "content": None, "tool_calls": [CALL_CHAT]},
                                             {"role": "tool", "tool_call_id": "call_1", "content": "x"},
                                             {"role": "assistant", "content": None, "tool_calls": [CALL2_CHAT]}]},
                 id="calls-after-output-new-turn"),
    pytest.param({"model": "m", "input": [user("q"), {"type": "function_call_output", "call_id": "call_1",
                                                      "output": [{"type": "input_text", "text": "12"},
                                                                 {"type": "input_text", "text": "C"}]}]},
                 {"model": "m", "messages": [user("q"), {"role": "tool", "tool_call_id": "call_1",
                                                         "content": [{"type": "text", "text": "12"},
                                                                     {"type": "text", "text": "C"}]}]},
                 id="tool-output-text-parts"),
    pytest.param({"model": "m", "input": [{"type": "reasoning", "id": "rs_1", "summary": []}, user("hi")]},
                 {"model": "m", "messages": [user("hi")]}, id="reasoning-items-dropped"),
    pytest.param({"model": "m", "input": "hi", "tools": [WEATHER], "tool_choice": "required",
                  "parallel_tool_calls": False},
                 {"model": "m", "messages": [user("hi")], "tools": [WEATHER_CHAT], "tool_choice": "required",
                  "parallel_tool_calls": False}, id="tools-choice-parallel"),
    pytest.param({"model": "m", "input": "hi", "tools": [{**WEATHER, "description": "d", "strict": True}],
                  "tool_choice": {"type": "function", "name": "get_weather"}},
                 {"model": "m", "messages": [user("hi")],
                  "tools": [{"type": "function", "function": {**WEATHER_CHAT["function"], "description": "d",
                                                              "strict": True}}],
                  "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, id="named-tool-choice"),
    pytest.param({"model": "m", "input": "hi", "tools": [WEATHER],
                  "tool_choice": {"type": "allowed_tools", "mode": "required",
                                  "tools": [{"type": "function", "name": "get_weather"}]}},
                 {"model": "m", "messages": [user("hi")], "tools": [WEATHER_CHAT],
                  "tool_choice": {"type": "allowed_tools", "allowed_tools": {
                      "mode": "required", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}}},
                 id="allowed-tools"),
    pytest.param({"model": "m", "input": "hi", "tools": [], "tool_choice": "none", "parallel_tool_calls": True},
                 {"model": "m", "messages": [user("hi")]}, id="no-tools-no-choice"),
    pytest.param({"model": "m", "input": "hi", "text": {"format": {"type": "json_object"}}},
                 {"model": "m", "messages": [user("hi")], "response_format": {"type": "json_object"}}, id="json-object"),
    pytest.param({"model": "m", "input": "hi", "text": {"format": {"type": "text"}, "verbosity": "low"}},
                 {"model": "m", "messages": [user("hi")], "verbosity": "low"}, id="text-format-and-verbosity"),
    pytest.param({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "n",
                                                                   "description": "d", "schema": {"type": "object"}}}},
                 {"model": "m", "messages": [user("hi")], "response_format": {
                     "type": "json_schema", "json_schema": {"name": "n", "description": "d", "schema": {"type": "object"}}}},
                 id="json-schema-without-strict"),
    pytest.param({"model": "m", "input": "hi", "max_output_tokens": 100, "temperature": 0.2, "top_p": 0.9,
                  "user": "alice", "prompt_cache_key": "k", "safety_identifier": "s"},
                 {"model": "m", "messages": [user("hi")], "max_completion_tokens": 100, "temperature": 0.2,
                  "top_p": 0.9, "user": "alice", "prompt_cache_key": "k", "safety_identifier": "s"},
                 id="sampling-cap-user"),
    pytest.param({"model": "m", "input": "hi", "stream": True},
                 {"model": "m", "messages": [user("hi")], "stream": True, "stream_options": {"include_usage": True}},
                 id="stream-asks-usage"),
    pytest.param({"model": "m", "input": "hi", "stream": False}, {"model": "m", "messages": [user("hi")]},
                 id="stream-false"),
    pytest.param({"model": "m", "input": "hi", "metadata": {"a": "b"}, "store": True, "previous_response_id": "resp_1",
                  "reasoning": {"effort": "high"}, "truncation": "auto", "include": ["reasoning.encrypted_content"],
                  "service_tier": "flex"},
                 {"model": "m", "messages": [user("hi")]}, id="responses-only-fields-not-sent"),
]


@pytest.mark.parametrize(("body", "expected"), REQUESTS)
def test_request(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert to_chat(body) == expected


REQUEST_ERRORS = [
    pytest.param({"input": "hi", "conversation": "conv_1"}, "conversation", "previous_response_id",
                 id="conversation-needs-native"),
    pytest.param({"input": "hi", "tools": [WEATHER, {"type": "web_search_preview"}]}, "tools[1].type",
                 "tool type 'web_search_preview' needs a provider that serves the Responses API", id="hosted-tool"),
    pytest.param({"input": "hi", "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type",
                 "file_search", id="file-search"),
    pytest.param({"input": "hi", "tools": [{"type": "computer_use_preview"}]}, "tools[0].type", "computer_use",
                 id="computer-use"),
    pytest.param({"input": "hi", "tools": [{"type": "custom", "name": "x"}]}, "tools[0].type", "custom", id="custom"),
    pytest.param({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type",
                 "web_search_preview", id="hosted-tool-choice"),
    pytest.param({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto",
                                                                     "tools": [{"type": "mcp", "server_label": "x"}]}},
                 "tool_choice.tools[0].type", "mcp", id="allowed-hosted-tool"),
    pytest.param({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
                 "input[0].content[0].file_id", "image_url", id="image-file-id"),
    pytest.param({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
                 "input[0].content[0].type", "input_file", id="input-file"),
    pytest.param({"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
                 "input[0].content[0].type", "user messages", id="image-in-system"),
    pytest.param({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type",
                 "input_audio", id="unknown-part"),
    pytest.param({"input": [user("a"), {"type": "item_reference", "id": "msg_1"}]}, "input[1].type",
                 "item_reference", id="item-reference"),
    pytest.param({"input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]}, "input[0].type",
                 "web_search_call", id="hosted-tool-call-item"),
    pytest.param({"input": [{"content": "no role"}]}, "input[0].type", "type", id="no-type-no-role"),
    pytest.param({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "role", id="bad-role"),
    pytest.param({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id",
                 "call_id", id="call-without-id"),
    pytest.param({"input": [{"type": "function_call_output", "call_id": "c", "output": [
        {"type": "input_image", "image_url": "https://x/y.png"}]}]}, "input[0].output[0].type", "tool outputs",
        id="tool-output-image"),
    pytest.param({"input": [{"type": "function_call_output", "call_id": "c", "output": 12}]}, "input[0].output",
                 "output", id="tool-output-number"),
    pytest.param({"input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "x"}]}]},
                 "input[0].content[0].type", "assistant", id="assistant-image"),
    pytest.param({"input": "hi", "text": {"format": {"type": "grammar"}}}, "text.format.type", "grammar",
                 id="unknown-text-format"),
]


@pytest.mark.parametrize(("body", "param", "words"), REQUEST_ERRORS)
def test_request_errors(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        TRANSLATOR.request(body)
    assert caught.value.param == param
    assert words in caught.value.message
    assert caught.value.status == 400


DROPPED = [
    pytest.param({"input": "hi"}, [], id="none"),
    pytest.param({"input": "hi", "metadata": {"a": "b"}, "store": True, "stream_options": {"include_obfuscation": False},
                  "prompt_cache_key": "k"}, [], id="handled-fields"),
    pytest.param({"input": "hi", "reasoning": {"effort": "low"}, "include": ["reasoning.encrypted_content"],
                  "truncation": "auto"}, ["reasoning", "include", "truncation"], id="reasoning-include-truncation"),
    pytest.param({"input": "hi", "reasoning": {"effort": None, "summary": None}, "include": [], "truncation": "disabled",
                  "service_tier": "auto", "background": False, "previous_response_id": None}, [], id="default-ish"),
    pytest.param({"input": "hi", "previous_response_id": "resp_1", "service_tier": "flex", "background": True,
                  "max_tool_calls": 3, "top_logprobs": 2, "conversation": "conv_1"},
                 ["service_tier", "background", "max_tool_calls", "top_logprobs", "conversation"],
                 id="others"),
]


@pytest.mark.parametrize(("body", "expected"), DROPPED)
def test_dropped(body: dict[str, Any], expected: list[str]) -> None:
    assert TRANSLATOR.dropped(body) == expected


def test_translator_flags() -> None:
    assert TRANSLATOR.upstream_endpoint == "chat/completions"
    assert TRANSLATOR.passthrough is False
    error = b'{"error":{"message":"bad","type":"invalid_request_error","param":"messages","code":null}}'
    assert TRANSLATOR.error(400, error) == (400, error)


# ---------------------------------------------------------------- answers


def chat_completion(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-x1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}], **extra}


LENGTH = (chat_completion({"content": "a" * 10}, "length"), {"model": "m", "input": "hi", "max_output_tokens": 10})
REFUSAL = (chat_completion({"content": None, "refusal": "I can't help with that."}), {"input": "hi"})
TEXT_AND_CALLS = (
    chat_completion({"content": "Checking.", "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"type": "function", "function": {"name": "g", "arguments": "{\"x\":1}"}}]}, "tool_calls"),
    {"input": "hi", "tools": [{"type": "function", "name": "f"}, {"type": "function", "name": "g"}],
     "tool_choice": "required", "parallel_tool_calls": True})
ECHOES = (
    chat_completion({"content": "hi"}, usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12,
                                              "completion_tokens_details": {"reasoning_tokens": 4}}),
    {"input": "hi", "instructions": "x", "temperature": 0.5, "top_p": 0.5, "user": "bob", "metadata": {"k": "v"},
     "previous_response_id": "resp_0", "text": {"format": {"type": "json_object"}, "verbosity": "low"},
     "tool_choice": {"type": "function", "name": "f"}, "tools": [{"type": "function", "name": "f"}]})

ANSWERS = [
    pytest.param(*LENGTH, "incomplete", {"reason": "max_output_tokens"}, ["message"], id="length-incomplete"),
    pytest.param(*REFUSAL, "completed", None, ["message"], id="refusal"),
    pytest.param(chat_completion({"content": ""}, "content_filter"), {"input": "hi"}, "incomplete",
                 {"reason": "content_filter"}, [], id="content-filter-empty"),
    pytest.param(*TEXT_AND_CALLS, "completed", None, ["message", "function_call", "function_call"],
                 id="text-and-calls"),
    pytest.param(chat_completion({"content": [{"type": "text", "text": "parts"}]}), {"input": "hi"}, "completed", None,
                 ["message"], id="content-parts"),
    pytest.param(*ECHOES, "completed", None, ["message"], id="echoes"),
]


@pytest.mark.parametrize(("completion", "body", "status", "details", "kinds"), ANSWERS)
def test_answer(completion: dict[str, Any], body: dict[str, Any], status: str, details: Any, kinds: list[str]) -> None:
    response = TRANSLATOR.answer(completion, body)
    parsed = valid_response(response)
    assert response["status"] == status
    assert response["incomplete_details"] == details
    assert [item["type"] for item in response["output"]] == kinds
    item_status = "incomplete" if status == "incomplete" else "completed"
    assert all(item["status"] == item_status for item in response["output"])
    assert response["id"] == "resp_x1"
    assert len({item["id"] for item in response["output"]}) == len(kinds)
    for field in ("instructions", "user", "previous_response_id", "max_output_tokens"):
        assert response[field] == body.get(field)
    assert response["metadata"] == body.get("metadata", {})
    assert response["tool_choice"] == body.get("tool_choice", "auto")
    assert response["temperature"] == body.get("temperature", 1.0)
    assert parsed.output_text == "".join(
        p.text for item in parsed.output if item.type == "message" for p in item.content if p.type == "output_text")


def test_answer_calls_ids() -> None:
    response = TRANSLATOR.answer(*TEXT_AND_CALLS)
    calls = [item for item in response["output"] if item["type"] == "function_call"]
    assert [(c["id"], c["call_id"], c["name"], c["arguments"]) for c in calls] == [
        ("fc_a", "call_a", "f", "{}"), ("fc_x1_1", "call_x1_1", "g", "{\"x\":1}")]


def test_answer_usage() -> None:
    response = TRANSLATOR.answer(*ECHOES)
    assert response["usage"] == {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                                 "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 4},
                                 "total_tokens": 12}
    assert response["text"] == {"format": {"type": "json_object"}, "verbosity": "low"}
    no_usage = TRANSLATOR.answer(chat_completion({"content": "hi"}), {"input": "hi"})
    assert no_usage["usage"] is None
    assert DIALECT.usage(no_usage) is None


def test_answer_refusal_content() -> None:
    response = TRANSLATOR.answer(*REFUSAL)
    assert response["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't help with that."}]


# ---------------------------------------------------------------- streams

TEXT_EVENTS = (["response.created", "response.in_progress", "response.output_item.added",
                "response.content_part.added"] + ["response.output_text.delta"] * 72
               + ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                  "response.completed"])
TOOL_EVENTS = (["response.created", "response.in_progress", "response.output_item.added",
                "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                "response.output_item.added"] + ["response.function_call_arguments.delta"] * 6
               + ["response.output_item.added"] + ["response.function_call_arguments.delta"] * 6
               + ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                  "response.function_call_arguments.done", "response.output_item.done",
                  "response.function_call_arguments.done", "response.output_item.done", "response.completed"])
STREAMS = [("text_stream.sse", TEXT_EVENTS), ("tool_stream.sse", TOOL_EVENTS)]


@pytest.mark.parametrize(("name", "types"), STREAMS)
def test_stream(name: str, types: list[str]) -> None:
    chat = fixture(name)
    body = stream_body(name)
    events = events_of(translated([chat], body))
    assert [e["type"] for e in events] == types
    check_item_indexes(events)
    final = final_response(events)
    valid_response(final)
    # the same response a JSON answer of the same completion gets, and the SDK's accumulation of the deltas agrees
    assert final == TRANSLATOR.answer(assembled(chat), body)
    assert unparsed(accumulated(events)) == unparsed(Response.model_validate(final))
    # created/in_progress: the same response, in progress, nothing in it yet
    assert events[0]["response"] == events[1]["response"]
    assert events[0]["response"] == {**final, "status": "in_progress", "output": [], "usage": None}


def test_stream_tool_calls_content() -> None:
    events = events_of(translated([fixture("tool_stream.sse")], stream_body("tool_stream.sse")))
    final = final_response(events)
    assert [(i["type"], i.get("call_id"), i.get("arguments")) for i in final["output"]] == [
        ("message", None, None),
        ("function_call", "call_DdmO9pD3xa9XTPNJ32zg2hcA", "{\"location\":\"Paris, France\"}"),
        ("function_call", "call_5Xc2kLpQ9wRtY7uIoP3aSdFg", "{\"location\":\"Bogotá, Colombia\"}")]
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 32
    added = [e for e in events if e["type"] == "response.output_item.added" and e["item"]["type"] == "function_call"]
    assert [a["item"]["arguments"] for a in added] == ["", ""]
    assert all(a["item"]["status"] == "in_progress" and a["item"]["name"] == "get_weather" for a in added)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(STREAMS), st.data())
def test_stream_any_chunking(stream: tuple[str, list[str]], data: st.DataObject) -> None:
    name, types = stream
    chat = fixture(name)
    points = data.draw(st.lists(st.integers(0, len(chat)), max_size=40))
    body = stream_body(name)
    events = events_of(translated(cut(chat, points), body))
    assert [e["type"] for e in events] == types
    assert final_response(events) == TRANSLATOR.answer(assembled(chat), body)


def chat_sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    return b"".join(sse.encode(c) for c in chunks) + (sse.DONE if done else b"")


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1700000000, "model": "m",
            "choices": choices, **extra}


def test_stream_length_is_incomplete() -> None:
    chat = chat_sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "abc"}), chunk({}, "length"),
                    chunk(usage={"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13}))
    body = {"input": "hi", "max_output_tokens": 10, "stream": True}
    events = events_of(translated([chat], body))
    assert events[-1]["type"] == "response.incomplete"
    final = final_response(events)
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"
    assert final == TRANSLATOR.answer(assembled(chat), body)
    accumulated(events)


def test_stream_refusal() -> None:
    chat = chat_sse(chunk({"role": "assistant", "content": None}), chunk({"refusal": "I can't"}),
                    chunk({"refusal": " help."}), chunk({}, "stop"))
    body = {"input": "hi", "stream": True}
    events = events_of(translated(cut(chat, range(0, len(chat), 7)), body))
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added", "response.content_part.added", "response.refusal.delta",
        "response.refusal.delta", "response.refusal.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    final = final_response(events)
    assert final["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't help."}]
    assert final["usage"] is None  # the provider sent none
    assert final == TRANSLATOR.answer(assembled(chat), body)


def test_stream_empty_answer() -> None:
    chat = chat_sse(chunk({"role": "assistant", "content": ""}), chunk({}, "stop"))
    events = events_of(translated([chat], {"input": "hi", "stream": True}))
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.completed"]
    assert final_response(events)["output"] == []


def test_stream_ignores_other_choices_and_noise() -> None:
    other = {**chunk({"content": "other"}), "choices": [{"index": 1, "delta": {"content": "x"}, "finish_reason": None}]}
    chat = b": keep-alive\n\n" + chat_sse(chunk({"content": "a"}), other, chunk({}, "stop")) + b"data: after\n\n"
    events = events_of(translated([chat], {"input": "hi"}))
    assert final_response(events)["output"][0]["content"][0]["text"] == "a"


CUTS = [
    pytest.param(chat_sse(chunk({"content": "a"}), done=False), "before [DONE]", id="no-finish-no-done"),
    pytest.param(chat_sse(chunk({"content": "a"}), chunk({}, "stop"), done=False), "before [DONE]", id="no-done"),
    pytest.param(chat_sse(chunk({"content": "a"})), "before its finish", id="done-without-finish"),
    pytest.param(b"", "before [DONE]", id="empty"),
    pytest.param(sse.DONE, "before its finish", id="only-done"),
    pytest.param(chat_sse(chunk({"content": "a"}), {"error": {"message": "overloaded", "type": "server_error"}}),
                 "stream error: overloaded", id="error-chunk"),
]


@pytest.mark.parametrize(("chat", "words"), CUTS)
def test_stream_cut(chat: bytes, words: str) -> None:
    got: list[bytes] = []

    async def run() -> None:
        async for out in TRANSLATOR.stream(_aiter([chat]), {"input": "hi"}, "p1"):
            got.append(out)

    with pytest.raises(UpstreamError) as caught:
        asyncio.run(run())
    assert caught.value.kind == "stream_cut"
    assert words in caught.value.message
    assert "p1" in caught.value.message
    if chat:
        events = events_of(b"".join(got))  # what came before the cut reached the client, well formed
        assert all(e["type"] not in ("response.completed", "response.incomplete") for e in events)


# ---------------------------------------------------------------- the dialect: observer


def observe(stream: bytes, chunks: list[bytes] | None = None, capture: bool = True) -> Any:
    observer = DIALECT.stream_observer(capture)
    for part in chunks if chunks is not None else [stream]:
        observer.feed(part)
    return observer


@pytest.mark.parametrize(("name", "types"), STREAMS)
def test_observer_on_translated_stream(name: str, types: list[str]) -> None:
    body = stream_body(name)
    out = translated([fixture(name)], body)
    final = final_response(events_of(out))
    observer = observe(out)
    assert observer.answer() == final
    assert observer.usage == DIALECT.usage(final)
    assert observe(out, capture=False).answer() is None
    assert observe(out, capture=False).usage == DIALECT.usage(final)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_observer_any_chunking(data: st.DataObject) -> None:
    stream = fixture("openai_stream.sse").replace(b"\n", data.draw(st.sampled_from([b"\n", b"\r\n", b"\r"])))
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    observer = observe(stream, cut(stream, points))
    assert observer.usage == {"prompt_tokens": 37, "completion_tokens": 11, "total_tokens": 48,
                              "prompt_tokens_details": {"cached_tokens": 0}}
    answer = observer.answer()
    assert answer is not None and answer["id"] == "resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654"
    assert answer["output"][0]["content"][0]["text"] == "Hi there! How can I assist you today?"


def test_observer_parses_only_final_events(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    real = orjson.loads

    def counting(data: Any) -> Any:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr("proxy.dialects.responses.orjson.loads", counting)
    observe(fixture("openai_stream.sse"))
    assert len(parsed) == 1 and b'"type":"response.completed"' in parsed[0]


def test_observer_incomplete_and_broken() -> None:
    chat = chat_sse(chunk({"content": "abc"}), chunk({}, "length"),
                    chunk(usage={"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13}))
    incomplete = translated([chat], {"input": "hi"})
    observer = observe(incomplete)
    assert observer.answer() is None  # never stored
    assert observer.usage == {"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13,
                              "prompt_tokens_details": {"cached_tokens": 0}}
    whole = translated([fixture("text_stream.sse")], stream_body("text_stream.sse"))
    broken = observe(whole[: whole.rindex(b"event: response.completed")])
    assert broken.answer() is None and broken.usage is None
    # a delta quoting a final event's name is read and passed over
    quoting = chat_sse(chunk({"content": 'the "response.completed" event'}), chunk({}, "stop"))
    assert observe(translated([quoting], {"input": "hi"})).answer()["output"][0]["content"][0]["text"] == (
        'the "response.completed" event')


# ---------------------------------------------------------------- the dialect: replay


def replayed(response: dict[str, Any]) -> list[dict[str, Any]]:
    frames = DIALECT.replay(response, {})
    assert all(frame.count(b"\n\n") == 1 and frame.endswith(b"\n\n") for frame in frames)  # one event each
    return events_of(b"".join(frames))


REPLAYS = [pytest.param(golden(name)["response"], id=name) for name in EXAMPLES] + [
    pytest.param(golden(name), id=name) for name in STORED]


@pytest.mark.parametrize("response", REPLAYS)
def test_replay(response: dict[str, Any]) -> None:
    valid_response(response)
    events = replayed(response)
    check_item_indexes(events)
    assert events[0]["type"] == "response.created" and events[1]["type"] == "response.in_progress"
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert final_response(events) == response
    assert unparsed(accumulated(events)) == unparsed(Response.model_validate(response))
    # the cache's round trip: a replayed stream observed again gives the stored answer and its usage
    observer = observe(b"".join(DIALECT.replay(response, {})))
    assert observer.answer() == response
    assert observer.usage == DIALECT.usage(response)


def test_replay_event_sequence() -> None:
    events = replayed(golden("stored_reasoning"))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    web = [e["type"] for e in replayed(golden("stored_web_search"))]
    assert "response.output_text.annotation.added" in web


def test_replay_translated_stream_matches_live() -> None:
    """A stored translated answer replays as the live stream's item events did (one delta per part)."""
    body = stream_body("tool_stream.sse")
    live = events_of(translated([fixture("tool_stream.sse")], body))
    final = final_response(live)
    replay = replayed(final)
    assert final_response(replay) == final
    assert {e["type"] for e in replay} == {e["type"] for e in live}


def test_replay_incomplete() -> None:
    response = TRANSLATOR.answer(*LENGTH)
    events = replayed(response)
    assert events[-1]["type"] == "response.incomplete"
    assert not DIALECT.cacheable(response)
    assert DIALECT.cacheable(golden("text")["response"])


# ---------------------------------------------------------------- the dialect: requests and errors


def test_parse() -> None:
    body = {"model": "gpt-4.1", "input": "hi", "stream": True, "user": "alice", "max_output_tokens": 64,
            "unknown_field": {"passes": True}}
    assert DIALECT.parse(body) == Inbound(model="gpt-4.1", stream=True, user="alice", output_cap=64)
    assert DIALECT.parse({"input": [user("hi")]}) == Inbound(model=None, stream=False, user=None, output_cap=None)
    for name in EXAMPLES:
        DIALECT.parse(golden(name)["request"])
    assert (DIALECT.name, DIALECT.endpoint, DIALECT.operation) == ("responses", "responses", "chat")


PARSE_ERRORS = [
    pytest.param({"model": 3, "input": "hi"}, "model", id="model-type"),
    pytest.param({"model": "a\nb", "input": "hi"}, "model", id="model-control"),
    pytest.param({"model": "m"}, "input", id="input-missing"),
    pytest.param({"input": None}, "input", id="input-null"),
    pytest.param({"input": ""}, "input", id="input-empty-string"),
    pytest.param({"input": []}, "input", id="input-empty-list"),
    pytest.param({"input": 5}, "input", id="input-number"),
    pytest.param({"input": ["hi"]}, "input[0]", id="item-not-object"),
    pytest.param({"input": [user("a"), {"type": 3}]}, "input[1].type", id="item-type-not-string"),
    pytest.param({"input": [{"content": "x"}]}, "input[0].role", id="message-without-role"),
    pytest.param({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", id="message-bad-role"),
    pytest.param({"input": [{"role": "user", "content": 3}]}, "input[0].content", id="message-content"),
    pytest.param({"input": "hi", "instructions": ["x"]}, "instructions", id="instructions"),
    pytest.param({"input": "hi", "stream": "yes"}, "stream", id="stream"),
    pytest.param({"input": "hi", "max_output_tokens": 0}, "max_output_tokens", id="max-output-zero"),
    pytest.param({"input": "hi", "max_output_tokens": 1.5}, "max_output_tokens", id="max-output-float"),
    pytest.param({"input": "hi", "max_output_tokens": True}, "max_output_tokens", id="max-output-bool"),
    pytest.param({"input": "hi", "temperature": 2.5}, "temperature", id="temperature"),
    pytest.param({"input": "hi", "top_p": -0.1}, "top_p", id="top-p"),
    pytest.param({"input": "hi", "tools": {}}, "tools", id="tools-object"),
    pytest.param({"input": "hi", "tools": ["f"]}, "tools[0]", id="tool-not-object"),
    pytest.param({"input": "hi", "tools": [WEATHER, {"name": "x"}]}, "tools[1].type", id="tool-without-type"),
    pytest.param({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name", id="function-without-name"),
    pytest.param({"input": "hi", "tool_choice": "sometimes"}, "tool_choice", id="tool-choice-string"),
    pytest.param({"input": "hi", "tool_choice": {"name": "f"}}, "tool_choice.type", id="tool-choice-object"),
    pytest.param({"input": "hi", "tool_choice": 1}, "tool_choice", id="tool-choice-number"),
    pytest.param({"input": "hi", "text": "json"}, "text", id="text"),
    pytest.param({"input": "hi", "text": {"format": "json"}}, "text.format", id="text-format"),
    pytest.param({"input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name",
                 id="json-schema-name"),
    pytest.param({"input": "hi", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema",
                 id="json-schema-schema"),
    pytest.param({"input": "hi", "metadata": []}, "metadata", id="metadata-list"),
    pytest.param({"input": "hi", "metadata": {"a": 1}}, "metadata", id="metadata-value"),
    pytest.param({"input": "hi", "metadata": {str(i): "v" for i in range(17)}}, "metadata", id="metadata-17-keys"),
    pytest.param({"input": "hi", "metadata": {"k" * 65: "v"}}, "metadata", id="metadata-long-key"),
    pytest.param({"input": "hi", "user": 7}, "user", id="user"),
    pytest.param({"input": "hi", "user": "x" * 300}, "user", id="user-long"),
    pytest.param({"input": "hi", "previous_response_id": 1}, "previous_response_id", id="previous-response-id"),
    pytest.param({"input": "hi", "store": "no"}, "store", id="store"),
    pytest.param({"input": "hi", "parallel_tool_calls": 1}, "parallel_tool_calls", id="parallel-tool-calls"),
]


@pytest.mark.parametrize(("body", "param"), PARSE_ERRORS)
def test_parse_errors(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        DIALECT.parse(body)
    assert caught.value.param == param
    assert caught.value.status == 400


def test_parse_accepts_the_edges() -> None:
    DIALECT.parse({"input": "hi", "metadata": {str(i): "v" for i in range(16)}, "temperature": 0, "top_p": 1,
                   "max_output_tokens": 1, "tool_choice": {"type": "function", "name": "f"}, "store": False,
                   "text": {"format": {"type": "text"}}, "instructions": None, "previous_response_id": "resp_1"})


def test_classifier_view() -> None:
    view = DIALECT.classifier_view(golden("function_round_trip")["request"] | {"instructions": "be nice"})
    assert view == {"messages": [{"role": "system", "content": "be nice"},
                                 user("What is the weather like in Paris today?"),
                                 {"role": "tool", "content": "14"}]}
    parts = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"},
                                                    {"type": "input_image", "image_url": "u"},
                                                    {"type": "input_text", "text": "b"}]}, "junk", {"type": 4}]}
    assert DIALECT.classifier_view(parts) == {"messages": [user("a\nb")]}
    assert DIALECT.classifier_view({"input": "hi"}) == {"messages": [user("hi")]}
    assert DIALECT.classifier_view({"input": 5}) == {"messages": []}


def test_usage() -> None:
    response = golden("stored_reasoning")
    assert DIALECT.usage(response) == {"prompt_tokens": 81, "completion_tokens": 1035, "total_tokens": 1116,
                                       "prompt_tokens_details": {"cached_tokens": 0}}
    assert DIALECT.usage({"usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4},
                                    "output_tokens": 2}}) == {
        "prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": 4}}
    assert DIALECT.usage({"usage": None}) is None


def test_stream_error_event() -> None:
    frame = DIALECT.stream_error(UpstreamError("provider p1 ended the stream before [DONE]", kind="stream_cut"))
    (event,) = events_of(frame)
    parsed = EVENT.validate_python(event)
    assert isinstance(parsed, ResponseErrorEvent)
    assert (parsed.code, parsed.message) == ("upstream_error", "provider p1 ended the stream before [DONE]")
    invalid = events_of(DIALECT.stream_error(InvalidRequest("bad", param="input")))[0]
    assert (invalid["param"], invalid["code"]) == ("input", None)


# ---------------------------------------------------------------- through the openai SDK


def sdk_client(answer: bytes, stream: bool) -> openai.AsyncOpenAI:
    def handler(request: httpx2.Request) -> httpx2.Response:
        kind = "text/event-stream" if stream else "application/json"
        return httpx2.Response(200, headers={"content-type": kind}, content=answer)

    return openai.AsyncOpenAI(api_key="sk-test", base_url="http://gateway.test/v1", max_retries=0,
                              http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))


async def test_sdk_reads_translated_answer() -> None:
    example = golden("text")
    answer = orjson.dumps(TRANSLATOR.answer(example["chat_completion"], example["request"]))
    async with sdk_client(answer, stream=False) as client:
        response = await client.responses.create(model="gpt-4.1", input=example["request"]["input"])
    assert response.output_text == example["chat_completion"]["choices"][0]["message"]["content"]
    assert response.usage is not None and response.usage.total_tokens == 123


@pytest.mark.parametrize(("name", "types"), STREAMS)
async def test_sdk_reads_translated_stream(name: str, types: list[str]) -> None:
    body = stream_body(name)
    out = b"".join([chunk async for chunk in TRANSLATOR.stream(_aiter([fixture(name)]), body, "p1")])
    async with sdk_client(out, stream=True) as client:
        async with client.responses.stream(model=body["model"], input=body["input"]) as stream:
            seen = [event.type async for event in stream]
            final = await stream.get_final_response()
    assert seen == types
    assert final.id == final_response(events_of(out))["id"]
    assert final.output_text == TRANSLATOR.answer(assembled(fixture(name)), body)["output"][0]["content"][0]["text"]


# ---------------------------------------------------------------- chained to Anthropic (Responses → chat → Messages)


def test_chain_to_anthropic() -> None:
    anthropic = pytest.importorskip("proxy.translate.chat_anthropic")
    chain = Chain(ResponsesToChat(), anthropic.ChatToAnthropic())
    body = {"model": "claude-sonnet-4-5", "instructions": "Be brief.", "stream": True,
            "input": [user("What is the weather like in San Francisco?")], "tools": [WEATHER]}
    request = chain.request(body)
    assert request["system"] == "Be brief." and request["stream"] is True
    assert [tool["name"] for tool in request["tools"]] == ["get_weather"]
    stream = (Path(__file__).parent / "data" / "anthropic" / "tool_stream.sse").read_bytes()
    events = events_of(translated(cut(stream, range(0, len(stream), 37)), body, chain))
    check_item_indexes(events)
    final = final_response(events)
    valid_response(final)
    calls = [item for item in final["output"] if item["type"] == "function_call"]
    assert [(c["call_id"], orjson.loads(c["arguments"])) for c in calls] == [
        ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", {"location": "San Francisco, CA"})]
    assert final["usage"]["output_tokens"] == 89
    answer = (Path(__file__).parent / "data" / "anthropic" / "tool_use.json").read_bytes()
    response = chain.answer(orjson.loads(answer), body)
    valid_response(response)
    assert response["output"][0]["content"][0]["text"] == "I'll check the weather in San Francisco."
    assert response["output"][1]["call_id"] == "toolu_01A09q90qw90lq917835lq9"
    assert DIALECT.usage(response) == {"prompt_tokens": 2620, "completion_tokens": 89, "total_tokens": 2709,
                                       "prompt_tokens_details": {"cached_tokens": 2048}}
