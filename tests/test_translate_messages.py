"""The Messages API surface (proxy/dialects/messages.py) and its translation to Chat
Completions (proxy/translate/messages_chat.py).

Golden files in tests/data/messages are written from Anthropic's documented examples
(the API reference, the streaming, vision, tool use, thinking and caching guides) and
OpenAI's documented answers and streams. Every answer, event and error body made here is
checked against the anthropic SDK's own wire types (`Message`, `RawMessageStreamEvent`,
`ErrorResponse`), and streams are read back by the SDK itself (`messages.stream(...)`,
over a mock transport) as a client would.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from proxy import sse
from proxy.dialects.base import Inbound
from proxy.dialects.messages import MessagesDialect, error_payload, error_type, normalise_usage
from proxy.errors import (
    BudgetExceeded,
    GatewayBusy,
    InternalError,
    InvalidApiKey,
    InvalidRequest,
    InvalidResponse,
    MethodNotAllowed,
    ModelNotAllowed,
    ModelNotFound,
    NoHealthyUpstream,
    PayloadTooLarge,
    ProxyError,
    RateLimited,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamTimeout,
)
from proxy.translate.messages_chat import MessagesToChat

DATA = Path(__file__).parent / "data" / "messages"
CASES = ["simple", "system", "system_blocks", "multi_turn", "image", "tool_use", "tool_result"]
STREAMS = ["text_stream", "tool_stream"]
EVENT: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
DIALECT = MessagesDialect()
TRANSLATOR = MessagesToChat()
BODY: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": True,
                        "messages": [{"role": "user", "content": "Hello"}]}


def case(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return data


def stored_messages() -> list[dict[str, Any]]:
    """Every Message the goldens hold: stored answers, and the translated ones."""
    messages = [{k: v for k, v in m.items() if k != "about"} for m in json.loads((DATA / "stored_messages.json").read_text())]
    messages.append(json.loads((DATA / "anthropic_thinking_tool_message.json").read_text()))
    return messages + [case(name)["message"] for name in CASES]


def valid_message(message: dict[str, Any]) -> Message:
    return Message.model_validate(message)


# ------------------------------------------------------------------ helpers: streams


def events(data: bytes) -> list[dict[str, Any]]:
    """The events of a Messages stream, each checked: named by an `event:` line that says
    its data's type, and valid as the SDK's RawMessageStreamEvent (pings aside)."""
    out = []
    splitter = sse.EventSplitter()
    parsed = splitter.feed(data)
    assert splitter.pending == b""
    for event in parsed:
        lines = event.split(b"\n")
        assert lines[0].startswith(b"event: "), event
        payload = sse.event_data(event)
        assert payload is not None, event
        body = orjson.loads(payload)
        assert lines[0][7:].decode() == body["type"]
        if body["type"] != "ping":
            EVENT.validate_python(body)
        out.append(body)
    return out


def observed(data: bytes, *, capture: bool = True, cuts: Iterable[int] = ()) -> tuple[Any, Any]:
    """(usage, answer) of a stream fed to the dialect's observer in pieces cut at `cuts`."""
    observer = DIALECT.stream_observer(capture)
    for piece in chunked(data, cuts):
        observer.feed(piece)
    return observer.usage, observer.answer()


def chunked(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


async def _collect(pieces: list[bytes], body: dict[str, Any]) -> bytes:
    async def upstream() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    out = b""
    async for chunk in TRANSLATOR.stream(upstream(), body, "openai"):
        out += chunk
    return out


def translate_stream(pieces: list[bytes], body: dict[str, Any] | None = None) -> bytes:
    return asyncio.run(_collect(pieces, body or BODY))


def chat_completion(chat_sse: bytes) -> dict[str, Any]:
    """The chat.completion a (one-choice) chat stream adds up to."""
    meta: dict[str, Any] = {}
    message: dict[str, Any] = {"role": "assistant", "content": None}
    calls: list[dict[str, Any]] = []
    finish, usage = None, None
    for event in sse.EventSplitter().feed(chat_sse):
        data = sse.event_data(event)
        if data is None or data == b"[DONE]":
            continue
        chunk = orjson.loads(data)
        meta.setdefault("id", chunk["id"])
        meta.setdefault("model", chunk["model"])
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            if delta.get("content"):
                message["content"] = (message["content"] or "") + delta["content"]
            for call in delta.get("tool_calls") or ():
                if call["index"] == len(calls):
                    calls.append({"id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}})
                calls[call["index"]]["function"]["arguments"] += call["function"].get("arguments", "")
            finish = choice["finish_reason"] or finish
    if calls:
        message["tool_calls"] = calls
    return {**meta, "object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}


def sdk_client(handler: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test", base_url="http://gateway.test", max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def sdk_final_message(stream: bytes) -> Message:
    """The message the SDK's own stream accumulator makes of `stream`."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=stream)

    with sdk_client(handler).messages.stream(model="gateway-default", max_tokens=1024,
                                             messages=[{"role": "user", "content": "Hello"}]) as live:
        final = live.get_final_message()
    return Message.model_validate(final.to_dict())


# ------------------------------------------------------------------ request translation


@pytest.mark.parametrize("name", CASES)
def test_request_translation_golden(name):
    golden = case(name)
    assert DIALECT.parse(copy.deepcopy(golden["request"])).model == golden["request"]["model"]
    assert TRANSLATOR.request(copy.deepcopy(golden["request"])) == golden["chat_request"]
    assert TRANSLATOR.dropped(golden["request"]) == golden["dropped"]


def _req(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    body.update(fields)
    return body


WEATHER = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}
CHAT_WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}
USER_HI = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("body, expected", [
    # stream asks for usage, so the answer's message_delta can carry it
    (_req(stream=True), {"messages": USER_HI, "stream": True, "stream_options": {"include_usage": True}}),
    (_req(stream=False), {"messages": USER_HI}),
    # tool_choice
    (_req(tools=[WEATHER], tool_choice={"type": "any"}), {"messages": USER_HI, "tools": [CHAT_WEATHER], "tool_choice": "required"}),
    (_req(tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}),
     {"messages": USER_HI, "tools": [CHAT_WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    (_req(tools=[WEATHER], tool_choice={"type": "none"}), {"messages": USER_HI, "tools": [CHAT_WEATHER], "tool_choice": "none"}),
    (_req(tools=[WEATHER], tool_choice={"type": "any", "disable_parallel_tool_use": True}),
     {"messages": USER_HI, "tools": [CHAT_WEATHER], "tool_choice": "required", "parallel_tool_calls": False}),
    (_req(tools=[WEATHER], tool_choice={"type": "auto", "disable_parallel_tool_use": False}),
     {"messages": USER_HI, "tools": [CHAT_WEATHER], "tool_choice": "auto"}),
    (_req(tool_choice={"type": "auto"}), {"messages": USER_HI}),  # chat refuses a tool_choice without tools
    (_req(tools=[]), {"messages": USER_HI}),
    # client tools: explicit custom type, strict, no schema
    (_req(tools=[{**WEATHER, "type": "custom", "strict": True}]),
     {"messages": USER_HI, "tools": [{"type": "function", "function": {**CHAT_WEATHER["function"], "strict": True}}]}),
    (_req(tools=[{"name": "now"}]),
     {"messages": USER_HI, "tools": [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]}),
    # the end user; empty stop sequences and metadata without a user say nothing
    (_req(metadata={"user_id": "u-42"}), {"messages": USER_HI, "user": "u-42"}),
    (_req(metadata={}, stop_sequences=[]), {"messages": USER_HI}),
    (_req(stop_sequences=["\n\nHuman:", "END"]), {"messages": USER_HI, "stop": ["\n\nHuman:", "END"]}),
    (_req(temperature=0, top_p=1), {"messages": USER_HI, "temperature": 0, "top_p": 1}),
    (_req(top_k=5, thinking={"type": "enabled", "budget_tokens": 2048}), {"messages": USER_HI}),
    # an empty system prompt is no system message
    (_req(system=""), {"messages": USER_HI}),
    (_req(system=[]), {"messages": USER_HI}),
    (_req(system=[{"type": "text", "text": "Be brief."}]), {"messages": [{"role": "system", "content": "Be brief."}, *USER_HI]}),
    # user content: one text block is plain content; several, or text with an image, are parts
    (_req(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]),
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}),
    (_req(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]),
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}),
    (_req(messages=[{"role": "user", "content": [{"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}}]}]),
     {"messages": [{"role": "user", "content": "cached"}]}),
    (_req(messages=[{"role": "user", "content": []}]), {"messages": []}),
    # tool results: tool messages first, in order; text blocks joined; errors said
    (_req(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Here you go."},
        {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "15"}, {"type": "text", "text": "degrees"}]},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "timeout", "is_error": True},
        {"type": "tool_result", "tool_use_id": "call_3", "is_error": True},
        {"type": "tool_result", "tool_use_id": "call_4"},
    ]}]), {"messages": [
        {"role": "tool", "tool_call_id": "call_1", "content": "15\ndegrees"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Error: timeout"},
        {"role": "tool", "tool_call_id": "call_3", "content": "Error"},
        {"role": "tool", "tool_call_id": "call_4", "content": ""},
        {"role": "user", "content": "Here you go."},
    ]}),
    # assistant turns: tool calls alone have null content; several text blocks are one text;
    # thinking is dropped, and a turn of thinking alone says nothing
    (_req(messages=[{"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"location": "Paris"}},
    ]}]), {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
        {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}},
    ]}]}),
    (_req(messages=[{"role": "assistant", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]),
     {"messages": [{"role": "assistant", "content": "Hello"}]}),
    (_req(messages=[*USER_HI, {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "EmwKAhgB"}]}]),
     {"messages": USER_HI}),
])
def test_request_translation(body, expected):
    DIALECT.parse(copy.deepcopy(body))
    assert TRANSLATOR.request(body) == {"model": "claude-sonnet-4-5", "max_tokens": 100, **expected}


@pytest.mark.parametrize("body, param", [
    (_req(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Summarise this."},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
    ]}]), "messages[0].content[1].type"),
    (_req(messages=[*USER_HI, {"role": "assistant", "content": "ok"}, {"role": "user", "content": [
        {"type": "search_result", "source": "https://example.com", "title": "t", "content": []}]}]), "messages[2].content[0].type"),
    (_req(tools=[WEATHER, {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]), "tools[1]"),
    (_req(tools=[{"type": "bash_20250124", "name": "bash"}]), "tools[0]"),
    (_req(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"}}]}]),
     "messages[0].content[0].source"),
    (_req(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "text", "text": "the chart:"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]}]),
     "messages[0].content[0].content[1].type"),
    (_req(messages=[*USER_HI, {"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}}]}]),
     "messages[1].content[0].type"),
])
def test_untranslatable_requests_are_400s_naming_the_field(body, param):
    DIALECT.parse(copy.deepcopy(body))  # valid Messages requests: only a chat provider cannot take them
    with pytest.raises(InvalidRequest) as caught:
        TRANSLATOR.request(body)
    assert caught.value.param == param
    assert caught.value.status == 400


def test_server_tools_say_they_need_an_anthropic_provider():
    with pytest.raises(InvalidRequest, match="needs an Anthropic provider"):
        TRANSLATOR.request(_req(tools=[{"type": "web_search_20250305", "name": "web_search"}]))


@pytest.mark.parametrize("body, dropped", [
    (_req(), []),
    (_req(top_k=10), ["top_k"]),
    (_req(top_k=None), []),
    (_req(thinking={"type": "enabled", "budget_tokens": 10000}, service_tier="auto", container="container_1"),
     ["thinking", "service_tier", "container"]),
    (_req(mcp_servers=[], context_management={}), ["mcp_servers", "context_management"]),
    (_req(cache_control={"type": "ephemeral"}), ["cache_control"]),
    (_req(tools=[{**WEATHER, "cache_control": {"type": "ephemeral"}}]), ["cache_control"]),
    (_req(system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]), ["cache_control"]),
    (_req(messages=[{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]),
     ["cache_control"]),
    (_req(temperature=0.5, top_p=0.5, stop_sequences=["x"], metadata={"user_id": "u"}), []),
])
def test_dropped(body, dropped):
    assert TRANSLATOR.dropped(body) == dropped


def test_translator_identity():
    assert TRANSLATOR.upstream_endpoint == "chat/completions"
    assert TRANSLATOR.passthrough is False


# ------------------------------------------------------------------ answer translation


@pytest.mark.parametrize("name", CASES)
def test_answer_translation_golden(name):
    golden = case(name)
    message = TRANSLATOR.answer(golden["chat_answer"], golden["request"])
    assert message == golden["message"]
    valid_message(message)
    assert DIALECT.cacheable(message)


def _chat(message: dict[str, Any], finish: str | None = "stop", **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-x1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}], **extra}


def _call(id_: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize("answer, content, stop", [
    (_chat({"content": "Hi"}), [{"type": "text", "text": "Hi"}], "end_turn"),
    (_chat({"content": "Hi"}, "length"), [{"type": "text", "text": "Hi"}], "max_tokens"),
    (_chat({"content": None, "refusal": "I can't help with that."}, "content_filter"),
     [{"type": "text", "text": "I can't help with that."}], "refusal"),
    (_chat({"content": ""}, None), [], "end_turn"),
    (_chat({"content": [{"type": "text", "text": "in "}, {"type": "text", "text": "parts"}]}), [{"type": "text", "text": "in parts"}], "end_turn"),
    # arguments that are not a JSON object become {} and the answer goes on
    (_chat({"content": None, "tool_calls": [_call("call_1", "f", "{not json"), _call("call_2", "g", '{"a": 1}'),
                                            _call("call_3", "h", "[1, 2]"), _call("call_4", "i", "")]}, "tool_calls"),
     [{"type": "tool_use", "id": "call_1", "name": "f", "input": {}},
      {"type": "tool_use", "id": "call_2", "name": "g", "input": {"a": 1}},
      {"type": "tool_use", "id": "call_3", "name": "h", "input": {}},
      {"type": "tool_use", "id": "call_4", "name": "i", "input": {}}], "tool_use"),
    (_chat({"content": None, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "tool_calls"),
     [{"type": "tool_use", "id": "toolu_0", "name": "f", "input": {}}], "tool_use"),
    (_chat({"content": "x"}, "something_new"), [{"type": "text", "text": "x"}], "end_turn"),
])
def test_answer_translation(answer, content, stop):
    message = TRANSLATOR.answer(answer, {"model": "claude-sonnet-4-5"})
    assert message["content"] == content
    assert message["stop_reason"] == stop
    assert message["stop_sequence"] is None
    assert message["id"] == "msg_x1"
    valid_message(message)


def test_answer_without_usage_or_model():
    message = TRANSLATOR.answer({"choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}]}, {"model": "claude-x"})
    assert message["usage"] == {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0}
    assert message["model"] == "claude-x"
    assert message["id"].startswith("msg_") and len(message["id"]) > 4
    valid_message(message)


@pytest.mark.parametrize("answer", [{"object": "list"}, {"choices": "nope"}, {"choices": [1]}])
def test_an_answer_that_is_not_a_chat_completion_is_invalid(answer):
    with pytest.raises(InvalidResponse):
        TRANSLATOR.answer(answer, {})


@pytest.mark.parametrize("name", CASES)
def test_answer_usage_normalises_back_to_the_chat_usage(name):
    golden = case(name)
    usage = golden["chat_answer"]["usage"]
    normal = DIALECT.usage(TRANSLATOR.answer(golden["chat_answer"], golden["request"]))
    assert normal is not None
    assert (normal["prompt_tokens"], normal["completion_tokens"], normal["total_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])
    assert normal["prompt_tokens_details"]["cached_tokens"] == (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)


# ------------------------------------------------------------------ stream translation


@pytest.mark.parametrize("name", STREAMS)
def test_stream_translation_golden(name):
    chat_sse = (DATA / f"{name}.chat.sse").read_bytes()
    out = translate_stream([chat_sse])
    assert out == (DATA / f"{name}.messages.sse").read_bytes()
    kinds = [e["type"] for e in events(out)]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]


@pytest.mark.parametrize("name", STREAMS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_stream_translation_at_any_chunking(name, data):
    chat_sse = (DATA / f"{name}.chat.sse").read_bytes()
    cuts = data.draw(st.lists(st.integers(0, len(chat_sse)), max_size=40))
    out = translate_stream(chunked(chat_sse, cuts))
    assert out == (DATA / f"{name}.messages.sse").read_bytes()  # the same events, however the bytes came
    events(out)
    expected = TRANSLATOR.answer(chat_completion(chat_sse), BODY)
    usage, rebuilt = observed(out, cuts=data.draw(st.lists(st.integers(0, len(out)), max_size=40)))
    assert rebuilt == expected
    assert usage == DIALECT.usage(expected)


@pytest.mark.parametrize("name", STREAMS)
def test_the_sdk_reads_a_translated_stream_as_the_translated_answer(name):
    chat_sse = (DATA / f"{name}.chat.sse").read_bytes()
    expected = TRANSLATOR.answer(chat_completion(chat_sse), BODY)
    assert sdk_final_message(translate_stream([chat_sse])) == valid_message(expected)


def test_a_tool_stream_puts_each_call_in_its_block():
    out = translate_stream([(DATA / "tool_stream.chat.sse").read_bytes()])
    seen = events(out)
    starts = [e for e in seen if e["type"] == "content_block_start"]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [(0, "text"), (1, "tool_use"), (2, "tool_use")]
    fragments = [e["delta"]["partial_json"] for e in seen if e["type"] == "content_block_delta" and e["index"] == 2]
    assert len(fragments) == 5 and json.loads("".join(fragments)) == {"location": "Bogotá, Colombia"}
    # each block is closed before the next opens
    order = [(e["type"], e.get("index")) for e in seen if e["type"].startswith("content_block_") and e["type"] != "content_block_delta"]
    assert order == [("content_block_start", 0), ("content_block_stop", 0), ("content_block_start", 1),
                     ("content_block_stop", 1), ("content_block_start", 2), ("content_block_stop", 2)]
    delta = next(e for e in seen if e["type"] == "message_delta")
    assert delta["usage"] == {"input_tokens": 79, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2048, "output_tokens": 61}


_META = {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1"}


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return sse.encode({**_META, "choices": choices, **extra})


@pytest.mark.parametrize("pieces, message", [
    ([_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hi"})], r"before \[DONE\]"),
    ([_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hi"}, "stop")], r"before \[DONE\]"),
    ([_chunk({"content": "Hi"}), sse.DONE], "without a finish reason"),
    ([sse.DONE], "without a finish reason"),
    ([], r"before \[DONE\]"),
    ([_chunk({"content": "Hi"}), sse.encode({"error": {"message": "The server had an error", "type": "server_error"}})],
     "The server had an error"),
    ([_chunk({"content": "Hi"}), b"data: {not json\n\n"], "not JSON"),
])
def test_a_cut_chat_stream_raises_stream_cut(pieces, message):
    out: list[bytes] = []

    async def run() -> None:
        async def upstream() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        async for chunk in TRANSLATOR.stream(upstream(), BODY, "openai"):
            out.append(chunk)

    with pytest.raises(UpstreamError, match=message) as caught:
        asyncio.run(run())
    assert caught.value.kind == "stream_cut"
    events(b"".join(out))  # what went out before the cut is well-formed
    assert observed(b"".join(out))[1] is None  # and nothing of it is stored


def test_what_came_before_an_error_in_the_same_read_still_goes_out():
    out: list[bytes] = []

    async def run() -> None:
        async def upstream() -> AsyncIterator[bytes]:
            yield _chunk({"content": "Hi"}) + sse.encode({"error": {"message": "overloaded"}})

        async for chunk in TRANSLATOR.stream(upstream(), BODY, "openai"):
            out.append(chunk)

    with pytest.raises(UpstreamError, match="overloaded"):
        asyncio.run(run())
    assert [e["type"] for e in events(b"".join(out))] == ["message_start", "content_block_start", "content_block_delta"]


def test_a_stream_without_usage_still_ends_well():
    out = translate_stream([_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hi"}), _chunk({}, "stop"), sse.DONE])
    delta = [e for e in events(out) if e["type"] == "message_delta"][0]
    assert delta["usage"] == {"output_tokens": 0}
    assert observed(out)[1]["content"] == [{"type": "text", "text": "Hi"}]


def test_an_empty_answer_streams_no_blocks():
    out = translate_stream([_chunk({"role": "assistant", "content": ""}), _chunk({}, "stop"), sse.DONE])
    assert [e["type"] for e in events(out)] == ["message_start", "message_delta", "message_stop"]


def test_text_after_a_tool_call_opens_a_new_block():
    pieces = [_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
              _chunk({"content": "done"}), _chunk({}, "tool_calls"), sse.DONE]
    _, message = observed(translate_stream(pieces))
    assert message["content"] == [{"type": "tool_use", "id": "call_1", "name": "f", "input": {}}, {"type": "text", "text": "done"}]


_texts = st.text(min_size=1, max_size=30)
_values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=12))
_calls = st.lists(st.tuples(st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
                            st.dictionaries(st.text(max_size=8), _values, max_size=4)), max_size=3)


def _pieces(draw: Any, text: str) -> list[str]:
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=6))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if text[a:b]]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), text=st.one_of(st.none(), _texts), calls=_calls,
       finish=st.sampled_from(["stop", "length", "content_filter"]),
       prompt=st.integers(0, 100_000), cached=st.integers(0, 100_000), completion=st.integers(0, 10_000))
def test_any_chat_stream_becomes_the_stream_of_its_answer(data, text, calls, finish, prompt, cached, completion):
    """A chat stream (text and tool calls cut into fragments anywhere) translates into
    valid events that add up, for the dialect's observer and for the SDK, to exactly the
    translation of the chat.completion it streams."""
    cached = min(cached, prompt)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": cached}}
    tool_calls = [_call(f"call_{i}", name, orjson.dumps(args).decode()) for i, (name, args) in enumerate(calls)]
    finish = "tool_calls" if calls else finish
    completion_body = _chat({"content": text, **({"tool_calls": tool_calls} if tool_calls else {})}, finish, usage=usage,
                            id=_META["id"])
    pieces = [_chunk({"role": "assistant", "content": "" if text is not None or not calls else None})]
    pieces += [_chunk({"content": piece}) for piece in _pieces(data.draw, text or "")]
    for i, call in enumerate(tool_calls):
        pieces.append(_chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                              "function": {"name": call["function"]["name"], "arguments": ""}}]}))
        pieces += [_chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]})
                   for p in _pieces(data.draw, call["function"]["arguments"])]
    pieces += [_chunk({}, finish), _chunk(None, usage=usage), sse.DONE]
    raw = b"".join(pieces)
    out = translate_stream(chunked(raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=20))))
    expected = TRANSLATOR.answer(completion_body, BODY)
    valid_message(expected)
    events(out)
    usage_seen, rebuilt = observed(out, cuts=data.draw(st.lists(st.integers(0, len(out)), max_size=20)))
    assert rebuilt == expected
    assert usage_seen == DIALECT.usage(expected) == normalise_usage(expected["usage"])
    assert usage_seen["prompt_tokens"] == prompt and usage_seen["prompt_tokens_details"]["cached_tokens"] == cached
    assert sdk_final_message(out) == valid_message(expected)


# ------------------------------------------------------------------ the observer


def test_observer_usage_from_message_start_and_message_delta():
    usage, _ = observed((DATA / "anthropic_text_stream.sse").read_bytes(), capture=False)
    # input 25 + cache writes 10 + cache reads 2048 from message_start; output from message_delta
    assert usage == {"prompt_tokens": 2083, "completion_tokens": 15, "total_tokens": 2098,
                     "prompt_tokens_details": {"cached_tokens": 2048}}


def test_observer_keeps_input_tokens_when_message_delta_says_null():
    data = (DATA / "anthropic_thinking_tool_stream.sse").read_bytes()
    assert b'"input_tokens":null' in data
    usage, _ = observed(data)
    assert usage == {"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561, "prompt_tokens_details": {"cached_tokens": 0}}


def _stream_with_delta_usage(delta_usage: dict[str, Any]) -> bytes:
    data = (DATA / "anthropic_text_stream.sse").read_text()
    return data.replace('"usage": {"output_tokens": 15}', '"usage": ' + json.dumps(delta_usage)).encode()


@pytest.mark.parametrize("delta_usage, prompt, cached, completion", [
    ({"output_tokens": 15}, 2083, 2048, 15),
    ({"input_tokens": None, "cache_read_input_tokens": None, "output_tokens": 15}, 2083, 2048, 15),
    # current APIs repeat the cumulative input counts in message_delta: they are the counts
    ({"input_tokens": 30, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 2048, "output_tokens": 15}, 2088, 2048, 15),
    ({"input_tokens": 25, "output_tokens": 0}, 2083, 2048, 0),
])
def test_observer_message_delta_usage(delta_usage, prompt, cached, completion):
    usage, answer = observed(_stream_with_delta_usage(delta_usage))
    assert usage["prompt_tokens"] == prompt
    assert usage["prompt_tokens_details"]["cached_tokens"] == cached
    assert usage["completion_tokens"] == completion
    assert usage["total_tokens"] == prompt + completion
    assert DIALECT.usage(answer) == usage


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_observer_captures_the_whole_message_at_any_chunking(data):
    stream = (DATA / "anthropic_thinking_tool_stream.sse").read_bytes()
    expected = json.loads((DATA / "anthropic_thinking_tool_message.json").read_text())
    _, message = observed(stream, cuts=data.draw(st.lists(st.integers(0, len(stream)), max_size=60)))
    assert message == expected
    valid_message(message)


def test_observer_capture_agrees_with_the_sdk():
    stream = (DATA / "anthropic_thinking_tool_stream.sse").read_bytes()
    assert sdk_final_message(stream) == valid_message(observed(stream)[1])
    text = (DATA / "anthropic_text_stream.sse").read_bytes()
    assert sdk_final_message(text) == valid_message(observed(text)[1])


def test_observer_without_capture_rebuilds_nothing():
    usage, answer = observed((DATA / "anthropic_thinking_tool_stream.sse").read_bytes(), capture=False)
    assert usage is not None and answer is None


@pytest.mark.parametrize("cut", [
    lambda s: s[: s.index(b"event: message_stop")],  # no message_stop
    lambda s: s[: s.index(b"event: message_delta")],
    lambda s: s.replace(b"event: message_stop", b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\nevent: message_stop'),
    lambda s: s.replace(b'"renheit\\"}"', b'"renheit"'),  # a tool input that is not JSON
])
def test_observer_stores_nothing_of_a_broken_stream(cut):
    stream = (DATA / "anthropic_thinking_tool_stream.sse").read_bytes()
    broken = cut(stream)
    assert broken != stream
    usage, answer = observed(broken)
    assert answer is None
    assert usage is not None and usage["prompt_tokens"] == 472  # what was seen is still counted


def test_observer_before_any_usage():
    observer = DIALECT.stream_observer(True)
    assert observer.usage is None and observer.answer() is None
    observer.feed(b"event: ping\ndata: {\"type\": \"ping\"}\n\n")
    assert observer.usage is None and observer.answer() is None


# ------------------------------------------------------------------ replay


@pytest.mark.parametrize("message", stored_messages(), ids=lambda m: m["id"])
def test_replay_is_the_stream_of_the_stored_message(message):
    valid_message(message)
    replayed = DIALECT.replay(message, BODY)
    assert all(event.startswith(b"event: ") and event.endswith(b"\n\n") for event in replayed)
    seen = events(b"".join(replayed))
    assert len(seen) == len(replayed)  # one event per item
    start = seen[0]
    assert start["type"] == "message_start" and start["message"]["content"] == []
    assert start["message"]["stop_reason"] is None
    assert start["message"]["usage"]["output_tokens"] == min(message["usage"]["output_tokens"], 1)
    assert start["message"]["usage"]["input_tokens"] == message["usage"]["input_tokens"]
    assert [e["type"] for e in seen[-2:]] == ["message_delta", "message_stop"]
    assert seen[-2]["delta"]["stop_reason"] == message["stop_reason"]
    assert seen[-2]["delta"]["stop_sequence"] == message["stop_sequence"]
    assert seen[-2]["usage"]["output_tokens"] == message["usage"]["output_tokens"]
    usage, rebuilt = observed(b"".join(replayed))
    assert rebuilt == message
    assert usage == DIALECT.usage(message)
    assert sdk_final_message(b"".join(replayed)) == valid_message(message)


def test_replay_streams_each_block_as_anthropic_does():
    message = json.loads((DATA / "anthropic_thinking_tool_message.json").read_text())
    seen = events(b"".join(DIALECT.replay(message, BODY)))
    deltas = [(e["index"], e["delta"]["type"]) for e in seen if e["type"] == "content_block_delta"]
    assert deltas == [(0, "thinking_delta"), (0, "signature_delta"), (1, "text_delta"), (2, "input_json_delta")]
    starts = [e["content_block"] for e in seen if e["type"] == "content_block_start"]
    assert starts == [{"type": "thinking", "thinking": "", "signature": ""}, {"type": "text", "text": ""},
                      {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}]


def test_cacheable_only_with_a_stop_reason():
    assert DIALECT.cacheable({"stop_reason": "end_turn"})
    assert DIALECT.cacheable({"stop_reason": "tool_use"})
    assert not DIALECT.cacheable({"stop_reason": None})
    assert not DIALECT.cacheable({})


# ------------------------------------------------------------------ parse


def test_parse_reads_what_routing_needs():
    body = _req(stream=True, metadata={"user_id": "user-7"}, max_tokens=512)
    assert DIALECT.parse(body) == Inbound(model="claude-sonnet-4-5", stream=True, user="user-7", output_cap=512)
    assert DIALECT.parse({"max_tokens": 1, "messages": USER_HI}) == Inbound(model=None, stream=False, user=None, output_cap=1)
    assert (DIALECT.name, DIALECT.endpoint, DIALECT.operation, DIALECT.anthropic_errors) == ("messages", "messages", "chat", True)


@pytest.mark.parametrize("body", [
    _req(system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]),
    _req(tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}, {"type": "custom", **WEATHER}]),
    _req(tools=[{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]),
    _req(tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
    _req(temperature=1, top_p=0, top_k=0, stop_sequences=[], metadata={}),
    _req(messages=[{"role": "assistant", "content": ""}, {"role": "assistant", "content": []}]),
    _req(thinking={"type": "enabled", "budget_tokens": 2048}),
])
def test_parse_accepts_valid_requests(body):
    DIALECT.parse(body)


@pytest.mark.parametrize("body, param", [
    ({"model": "claude-sonnet-4-5", "messages": USER_HI}, "max_tokens"),
    (_req(max_tokens=0), "max_tokens"),
    (_req(max_tokens="1024"), "max_tokens"),
    (_req(max_tokens=True), "max_tokens"),
    (_req(max_tokens=10.5), "max_tokens"),
    ({"max_tokens": 10}, "messages"),
    (_req(messages=[]), "messages"),
    (_req(messages="Hello"), "messages"),
    (_req(messages=["Hello"]), "messages[0]"),
    (_req(messages=[{"role": "system", "content": "Be brief."}]), "messages[0].role"),
    (_req(messages=[{"content": "Hi"}]), "messages[0].role"),
    (_req(messages=[*USER_HI, {"role": "tool", "content": "x"}]), "messages[1].role"),
    (_req(messages=[{"role": "user"}]), "messages[0].content"),
    (_req(messages=[{"role": "user", "content": 42}]), "messages[0].content"),
    (_req(messages=[{"role": "user", "content": {"type": "text", "text": "Hi"}}]), "messages[0].content"),
    (_req(messages=[{"role": "user", "content": ["Hi"]}]), "messages[0].content[0]"),
    (_req(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"text": "b"}]}]), "messages[0].content[1].type"),
    (_req(messages=[{"role": "user", "content": [{"type": 7}]}]), "messages[0].content[0].type"),
    (_req(model=42), "model"),
    (_req(model="claude\nsonnet"), "model"),
    (_req(model="c" * 300), "model"),
    (_req(system=5), "system"),
    (_req(system={"type": "text", "text": "s"}), "system"),
    (_req(system=["s"]), "system[0]"),
    (_req(system=[{"type": "image", "source": {}}]), "system[0].type"),
    (_req(system=[{"type": "text"}]), "system[0].text"),
    (_req(stream="yes"), "stream"),
    (_req(stream=1), "stream"),
    (_req(temperature=1.5), "temperature"),
    (_req(temperature="hot"), "temperature"),
    (_req(temperature=True), "temperature"),
    (_req(top_p=-0.1), "top_p"),
    (_req(top_k=-1), "top_k"),
    (_req(top_k=2.5), "top_k"),
    (_req(stop_sequences="END"), "stop_sequences"),
    (_req(stop_sequences=["END", 7]), "stop_sequences[1]"),
    (_req(tools={"name": "x"}), "tools"),
    (_req(tools=["get_weather"]), "tools[0]"),
    (_req(tools=[WEATHER, {"description": "no name", "input_schema": {"type": "object"}}]), "tools[1].name"),
    (_req(tools=[{"name": ""}]), "tools[0].name"),
    (_req(tools=[{"name": 5}]), "tools[0].name"),
    (_req(tools=[{"type": 5, "name": "x"}]), "tools[0].type"),
    (_req(tool_choice="auto"), "tool_choice"),
    (_req(tool_choice={"type": "required"}), "tool_choice.type"),
    (_req(tool_choice={}), "tool_choice.type"),
    (_req(tool_choice={"type": "tool"}), "tool_choice.name"),
    (_req(tool_choice={"type": "auto", "disable_parallel_tool_use": "yes"}), "tool_choice.disable_parallel_tool_use"),
    (_req(metadata="user-1"), "metadata"),
    (_req(metadata={"user_id": 42}), "metadata.user_id"),
    (_req(metadata={"user_id": "user\x00one"}), "metadata.user_id"),
    (_req(metadata={"user_id": "u" * 257}), "metadata.user_id"),
])
def test_parse_errors_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as caught:
        DIALECT.parse(body)
    assert caught.value.param == param
    assert caught.value.status == 400
    # and the client gets it in Anthropic's shape
    assert orjson.loads(DIALECT.error_body(caught.value)) == {
        "type": "error", "error": {"type": "invalid_request_error", "message": caught.value.message}}


def test_classifier_view_is_the_conversation_as_chat():
    body = _req(system=[{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in French."}], messages=[
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "easy", "signature": "s"},
                                          {"type": "text", "text": "4"},
                                          {"type": "tool_use", "id": "t1", "name": "calc", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "4"}]}]},
        {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                                     {"type": "text", "text": "Prove"}, {"type": "text", "text": "the Riemann hypothesis."}]},
    ])
    assert DIALECT.classifier_view(body) == {"messages": [
        {"role": "system", "content": "You are terse.\nAnswer in French."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "tool", "content": "4"},
        {"role": "user", "content": "Prove\nthe Riemann hypothesis."},
    ]}
    assert DIALECT.classifier_view({"messages": "nonsense"}) == {"messages": []}


def test_usage_normalised():
    assert DIALECT.usage({"usage": {"input_tokens": 86, "cache_creation_input_tokens": 1024, "cache_read_input_tokens": 1920,
                                    "output_tokens": 9}}) == {
        "prompt_tokens": 3030, "completion_tokens": 9, "total_tokens": 3039, "prompt_tokens_details": {"cached_tokens": 1920}}
    assert DIALECT.usage({"usage": {"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": None}}) == {
        "prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": 0}}
    assert DIALECT.usage({"id": "msg_1"}) is None


# ------------------------------------------------------------------ errors


def _sdk_error(status: int, body: bytes) -> Exception:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, headers={"content-type": "application/json"}, content=body)

    try:
        sdk_client(handler).messages.create(model="gateway-default", max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    except anthropic.APIStatusError as exc:
        return exc
    raise AssertionError("the SDK raised nothing")


@pytest.mark.parametrize("exc, kind, sdk_class", [
    (InvalidRequest("bad", param="max_tokens"), "invalid_request_error", anthropic.BadRequestError),
    (InvalidApiKey("no such key"), "authentication_error", anthropic.AuthenticationError),
    (ModelNotAllowed("not for your team"), "permission_error", anthropic.PermissionDeniedError),
    (ModelNotFound("no such model"), "not_found_error", anthropic.NotFoundError),
    (MethodNotAllowed("use POST"), "invalid_request_error", anthropic.APIStatusError),
    (PayloadTooLarge("too big"), "request_too_large", anthropic.ContentTooLargeError),
    (UnsupportedMediaType("send JSON"), "invalid_request_error", anthropic.APIStatusError),
    (RateLimited("slow down"), "rate_limit_error", anthropic.RateLimitError),
    (BudgetExceeded("out of budget"), "rate_limit_error", anthropic.RateLimitError),
    (InternalError(), "api_error", anthropic.InternalServerError),
    (UpstreamError("provider down"), "api_error", anthropic.InternalServerError),
    (NoHealthyUpstream("none healthy"), "overloaded_error", anthropic.ServiceUnavailableError),
    (GatewayBusy("busy"), "overloaded_error", anthropic.ServiceUnavailableError),
    (UpstreamOverloaded("provider overloaded"), "overloaded_error", anthropic.ServiceUnavailableError),
    (UpstreamTimeout("too slow"), "timeout_error", anthropic.GatewayTimeoutError),
], ids=lambda v: type(v).__name__ if isinstance(v, ProxyError) else None)
def test_error_bodies_per_status(exc, kind, sdk_class):
    body = DIALECT.error_body(exc)
    assert orjson.loads(body) == {"type": "error", "error": {"type": kind, "message": exc.message}}
    if kind != "request_too_large":  # Anthropic's documented 413 type; the SDK's ErrorType list lacks it
        ErrorResponse.model_validate_json(body)
    raised = _sdk_error(exc.status, body)
    assert type(raised) is sdk_class
    assert raised.body == orjson.loads(body)


@pytest.mark.parametrize("status, kind, sdk_class", [
    (402, "billing_error", anthropic.PaymentRequiredError),
    (408, "timeout_error", anthropic.RequestTimeoutError),
    (409, "invalid_request_error", anthropic.ConflictError),
    (422, "invalid_request_error", anthropic.UnprocessableEntityError),
    (501, "api_error", anthropic.HTTPNotImplementedError),
    (529, "overloaded_error", anthropic.OverloadedError),
    (599, "api_error", anthropic.InternalServerError),
])
def test_error_payload_for_other_statuses(status, kind, sdk_class):
    body = error_payload(status, "said")
    assert error_type(status) == kind
    ErrorResponse.model_validate_json(body)
    assert type(_sdk_error(status, body)) is sdk_class


def test_stream_error_is_an_error_event_the_sdk_raises():
    exc = UpstreamError("provider Anthropic ended the stream before message_stop", kind="stream_cut")
    event = DIALECT.stream_error(exc)
    assert event == b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"provider Anthropic ended the stream before message_stop"}}\n\n'
    stream = (DATA / "anthropic_text_stream.sse").read_bytes()
    broken = stream[: stream.index(b"event: content_block_stop")] + event

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=broken)

    with pytest.raises(anthropic.APIStatusError) as caught:
        with sdk_client(handler).messages.stream(model="gateway-default", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]) as live:
            live.get_final_message()
    assert caught.value.body == {"type": "error", "error": {"type": "api_error", "message": exc.message}}
    assert observed(broken)[1] is None


ERRORS = json.loads((DATA / "errors.json").read_text())


@pytest.mark.parametrize("golden", ERRORS, ids=[str(e["status"]) for e in ERRORS])
def test_provider_errors_become_anthropic_errors(golden):
    raw = golden["chat"].encode() if isinstance(golden["chat"], str) else orjson.dumps(golden["chat"])
    status, body = TRANSLATOR.error(golden["status"], raw)
    assert status == golden["status"]
    assert orjson.loads(body) == golden["message"]
    ErrorResponse.model_validate_json(body)
    assert isinstance(_sdk_error(status, body), anthropic.APIStatusError)
