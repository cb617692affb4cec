"""Anthropic translation: requests (table), answers and streams from recorded wire fixtures
(tests/data/anthropic, written from Anthropic's documented formats), errors, and the
openai SDK through the served proxy to a local Anthropic-shaped upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import orjson
import pytest

from proxy.errors import InvalidRequest, UpstreamError
from proxy.forwarding import forwarded
from proxy.providers import build_adapter
from proxy.providers.anthropic import AnthropicAdapter
from proxy.providers.base import UpstreamRequest
from proxy.snapshot import ProviderSpec, provider_apis
from proxy.translate import translator_for
from proxy.translate.chat_anthropic import openai_error, to_chat_completion, to_messages, translate_stream
from support import FakeUpstream, ServerProcess

DATA = Path(__file__).parent / "data" / "anthropic"


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def user(text: str) -> dict:
    return {"role": "user", "content": text}


# ---------------------------------------------------------------- requests

REQUESTS = [
    pytest.param({"model": "c", "messages": [user("hi")]},
                 {"model": "c", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                  "max_tokens": 4096}, id="minimal-default-max-tokens"),
    pytest.param({"model": "c", "messages": [{"role": "system", "content": "be brief"},
                                             {"role": "developer", "content": "use metric"}, user("hi")]},
                 {"system": "be brief\n\nuse metric"}, id="system-and-developer"),
    pytest.param({"model": "c", "messages": [user("a"), user("b")]},
                 {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                            {"type": "text", "text": "b"}]}]},
                 id="same-role-merged"),
    pytest.param({"model": "c", "messages": [user("hi")], "max_tokens": 10, "max_completion_tokens": 20},
                 {"max_tokens": 20}, id="max-completion-tokens-wins"),
    pytest.param({"model": "c", "messages": [user("hi")], "temperature": 1.7, "top_p": 0.9},
                 {"temperature": 1.0, "top_p": 0.9}, id="temperature-capped"),
    pytest.param({"model": "c", "messages": [user("hi")], "stop": "END"}, {"stop_sequences": ["END"]}, id="stop-str"),
    pytest.param({"model": "c", "messages": [user("hi")], "stop": ["a", "b"]}, {"stop_sequences": ["a", "b"]},
                 id="stop-list"),
    pytest.param({"model": "c", "messages": [user("hi")], "user": "alice", "stream": True},
                 {"metadata": {"user_id": "alice"}, "stream": True}, id="user-and-stream"),
    pytest.param({"model": "c", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]},
        {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]}]}, id="images"),
    pytest.param({"model": "c", "messages": [
        user("weather?"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"}]},
        {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                                                "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "12 C"},
                                         {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"}]}]},
        id="tool-round-trip"),
    pytest.param({"model": "c", "messages": [user("hi")], "tools": [
        {"type": "function", "function": {"name": "f", "description": "does f", "parameters": {"type": "object"}}}],
        "tool_choice": "required"},
        {"tools": [{"name": "f", "description": "does f", "input_schema": {"type": "object"}}],
         "tool_choice": {"type": "any"}}, id="tools-required"),
    pytest.param({"model": "c", "messages": [user("hi")], "tools": [{"type": "function", "function": {"name": "f"}}],
                  "tool_choice": {"type": "function", "function": {"name": "f"}}},
                 {"tool_choice": {"type": "tool", "name": "f"}}, id="tool-choice-named"),
    pytest.param({"model": "c", "messages": [user("hi")], "tools": [{"type": "function", "function": {"name": "f"}}],
                  "tool_choice": "auto"}, {"tool_choice": {"type": "auto"}}, id="tool-choice-auto"),
]


@pytest.mark.parametrize("body, expected", REQUESTS)
def test_request_translation(body, expected):
    out = to_messages(body)
    for key, value in expected.items():
        assert out[key] == value, key


def test_tool_choice_none_sends_no_tools():
    out = to_messages({"model": "c", "messages": [user("hi")],
                       "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"})
    assert "tools" not in out and "tool_choice" not in out


@pytest.mark.parametrize("body, param", [
    ({"model": "c", "messages": [user("hi")], "n": 2}, "n"),
    ({"model": "c", "messages": [{"role": "assistant", "tool_calls": [
        {"id": "x", "function": {"name": "f", "arguments": "{not json"}}]}]}, "messages"),
])
def test_untranslatable_requests_are_400(body, param):
    with pytest.raises(InvalidRequest) as info:
        to_messages(body)
    assert info.value.param == param


# ---------------------------------------------------------------- answers


def test_text_answer():
    out = to_chat_completion(json.loads(fixture("message.json")))
    assert out["object"] == "chat.completion" and out["id"] == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hello! How can I help you today?"}
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22,
                            "prompt_tokens_details": {"cached_tokens": 0}}


def test_tool_answer_with_cache_usage():
    out = to_chat_completion(json.loads(fixture("tool_use.json")))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["id"] == "toolu_01A09q90qw90lq917835lq9" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "San Francisco, CA", "unit": "celsius"}
    assert out["usage"]["prompt_tokens"] == 472 + 100 + 2048
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 2048}


@pytest.mark.parametrize("status, name, expected_status, code", [
    (529, "overloaded.json", 503, "overloaded_error"),
    (400, "invalid_request.json", 400, "invalid_request_error"),
])
def test_errors_become_openai_shaped(status, name, expected_status, code):
    new_status, body = openai_error(status, fixture(name))
    error = json.loads(body)["error"]
    assert new_status == expected_status and error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}


# ---------------------------------------------------------------- streams


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def translated(name: str, size: int, include_usage: bool = True) -> list[dict | str]:
    out = b""
    async for chunk in translate_stream(chunks_of(fixture(name), size), include_usage, "anthropic"):
        out += chunk
    events = []
    for block in out.split(b"\n\n"):
        if block.startswith(b"data: "):
            payload = block[6:]
            events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return events


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
async def test_text_stream_at_any_chunking(size):
    events = await translated("text_stream.sse", size)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello!"
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 30
    assert chunks[-1]["usage"]["completion_tokens"] == 15
    assert all(c["object"] == "chat.completion.chunk" and c["id"].startswith("msg_") for c in chunks)


@pytest.mark.parametrize("size", [3, 50, 100_000])
async def test_tool_stream_arguments_arrive_as_deltas(size):
    events = await translated("tool_stream.sse", size, include_usage=False)
    chunks = [e for e in events if e != "[DONE]"]
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0]["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6" and calls[0]["function"]["name"] == "get_weather"
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == {"location": "San Francisco, CA"}
    assert all(c["index"] == 0 for c in calls)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any(c.get("usage") for c in chunks)


async def test_error_event_mid_stream_raises():
    with pytest.raises(UpstreamError) as info:
        await translated("error_stream.sse", 20)
    assert info.value.kind == "stream_cut" and "Overloaded" in info.value.message


async def test_stream_ending_early_raises():
    truncated = fixture("text_stream.sse").split(b"event: message_delta")[0]
    with pytest.raises(UpstreamError):
        async for _ in translate_stream(chunks_of(truncated, 10), False, "anthropic"):
            pass


# ---------------------------------------------------------------- the adapter against a local upstream


def spec(base_url: str) -> ProviderSpec:
    return ProviderSpec(name="anthropic", type="anthropic", base_url=base_url, api_key="sk-ant-secret", headers=(),
                        timeout_s=5, connect_timeout_s=2, max_connections=10, max_keepalive=5, latency_ms=0,
                        chunk_interval_ms=0)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        yield up


async def test_adapter_sends_messages_api_request_with_its_headers(upstream):
    route = upstream.at("POST", "/v1/messages").respond(json=json.loads(fixture("message.json")))
    adapter = build_adapter(spec(upstream.base_url.removesuffix("/v1")))
    assert isinstance(adapter, AnthropicAdapter)
    translator = translator_for("chat/completions", "anthropic", provider_apis("anthropic", chat_only=False))
    body = {"model": "claude-x", "messages": [user("hi")]}
    try:
        client_headers = forwarded({"authorization": "Bearer client", "anthropic-beta": "b1"}, adapter.spec.forwarded)
        response = await adapter.send(UpstreamRequest(translator.upstream_endpoint, translator.request(body), False,
                                                      "r1", client_headers))
    finally:
        await adapter.aclose()
    sent = route.calls.last.request
    assert sent.headers["x-api-key"] == "sk-ant-secret"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "client" not in sent.headers.get("authorization", "")
    assert sent.headers["anthropic-beta"] == "b1"
    assert sent.json()["model"] == "claude-x" and sent.json()["max_tokens"] == 4096
    answer = translator.answer(orjson.loads(response.body), body)
    assert answer["choices"][0]["message"]["content"].startswith("Hello!")


async def test_adapter_keeps_the_clients_anthropic_version(upstream):
    route = upstream.at("POST", "/v1/messages").respond(json=json.loads(fixture("message.json")))
    adapter = build_adapter(spec(upstream.base_url.removesuffix("/v1")))
    try:
        await adapter.send(UpstreamRequest("messages", {"model": "c", "max_tokens": 5, "messages": [user("hi")]},
                                           False, "r1", [("anthropic-version", "2024-01-01")]))
    finally:
        await adapter.aclose()
    assert route.calls.last.request.headers["anthropic-version"] == "2024-01-01"


@pytest.mark.parametrize("endpoint, named", [("embeddings", "embeddings"), ("completions", "legacy completions")])
def test_surfaces_anthropic_cannot_serve_are_refused_naming_the_provider(endpoint, named):
    with pytest.raises(InvalidRequest, match=f"provider claude-prod cannot serve {named}"):
        translator_for(endpoint, "claude-prod", provider_apis("anthropic", chat_only=False))


# ---------------------------------------------------------------- the SDK through the served proxy

KEY = "sk-anthropic-team"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[ServerProcess, FakeUpstream]]:
    up = FakeUpstream().start_threaded()
    path = tmp_path_factory.mktemp("anthropic") / "proxy.yaml"
    path.write_text(f"""
ledger: {{path: off}}
resilience: {{retries: 0}}
providers:
  anthropic: {{type: anthropic, base_url: "{up.base_url.removesuffix('/v1')}", api_key: sk-ant}}
pricing:
  anthropic/claude-sonnet-4-5: {{input: 3, output: 15}}
teams: {{t: {{keys: ["{KEY}"]}}}}
routes:
  - {{name: claude, match: {{model: "claude-*"}}, to: "anthropic/{{model}}"}}
""")
    with ServerProcess(path) as server:
        yield server, up
    up.stop_threaded()


@pytest.mark.integration
def test_sdk_non_stream_through_anthropic(served):
    server, up = served
    up.at("POST", "/v1/messages").respond(json=json.loads(fixture("tool_use.json")))
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="claude-sonnet-4-5", messages=[user("weather in SF?")],
            tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}])
    reply = raw.parse()
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert reply.usage.prompt_tokens == 2620
    assert float(raw.headers["x-switchyard-cost-usd"]) > 0


@pytest.mark.integration
def test_sdk_stream_through_anthropic(served):
    server, up = served
    up.at("POST", "/v1/messages").stream([fixture("text_stream.sse")], headers={"content-type": "text/event-stream"})
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0) as client:
        chunks = list(client.chat.completions.create(model="claude-sonnet-4-5", messages=[user("hi")], stream=True,
                                                     stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 15


@pytest.mark.integration
def test_sdk_sees_anthropic_errors_as_openai_errors(served):
    server, up = served
    up.at("POST", "/v1/messages").respond(400, content=fixture("invalid_request.json"),
                                          headers={"content-type": "application/json"})
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="claude-sonnet-4-5", messages=[user("hi")])
    assert "max_tokens" in str(info.value)


@pytest.mark.integration
def test_sdk_sees_anthropic_overload_as_a_503_it_can_retry(served):
    server, up = served
    up.at("POST", "/v1/messages").respond(529, content=fixture("overloaded.json"),
                                          headers={"content-type": "application/json", "retry-after": "3"})
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="claude-sonnet-4-5", messages=[user("hi")])
    assert info.value.status_code == 503
    assert info.value.body["code"] == "upstream_overloaded"
    assert info.value.response.headers["retry-after"] == "3"
