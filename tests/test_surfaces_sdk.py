"""Every API surface through the real served gateway, driven by the official SDKs as users
drive them: the Responses API (`openai`), the Messages API (`anthropic`), legacy
Completions, and an OpenAI Agents SDK agent. Each surface is served natively where the
provider speaks it (bytes through untouched) and translated where it does not (the mock,
an OpenAI-compatible upstream, an Anthropic upstream); errors come back in the shape of
the surface the client used."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import agents
import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel

from support import FakeUpstream, ServerProcess, completion

pytestmark = pytest.mark.integration  # the served proxy, in a process of its own

DATA = Path(__file__).parent / "data"
KEY, OTHER_KEY = "sk-surfaces-team", "sk-surfaces-other"
MOCK_MODEL = "gpt-4o-mini"

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}
ANTHROPIC_WEATHER = {"name": "get_weather", "description": "The weather for a city",
                     "input_schema": WEATHER["parameters"]}


def data(path: str) -> bytes:
    return (DATA / path).read_bytes()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[ServerProcess, FakeUpstream]]:
    up = FakeUpstream().start_threaded()
    path = tmp_path_factory.mktemp("surfaces") / "proxy.yaml"
    path.write_text(f"""
ledger: {{path: off}}
resilience: {{retries: 0}}
providers:
  mock: {{type: mock}}
  oai: {{type: openai, base_url: "{up.base_url}", api_key: sk-oai-secret}}
  compat: {{type: openai, base_url: "{up.base_url}", api_key: sk-compat-secret, chat_only: true}}
  claude: {{type: anthropic, base_url: "{up.base_url.removesuffix('/v1')}", api_key: sk-ant-secret}}
pricing:
  mock/{MOCK_MODEL}: {{input: 0.15, output: 0.6}}
  oai/gpt-4.1: {{input: 2, output: 8}}
  compat/llama: {{input: 1, output: 1}}
  claude/claude-x: {{input: 3, output: 15}}
teams:
  t: {{keys: ["{KEY}"]}}
  other: {{keys: ["{OTHER_KEY}"]}}
routes:
  - {{name: fast, match: {{model: fast}}, to: mock/{MOCK_MODEL}}}
  - {{name: native, match: {{model: native}}, to: oai/gpt-4.1}}
  - {{name: compat, match: {{model: compat}}, to: compat/llama}}
  - {{name: claude, match: {{model: claude}}, to: claude/claude-x}}
""")
    with ServerProcess(path) as server:
        yield server, up
    up.stop_threaded()


@pytest.fixture
def oai(served) -> Iterator[openai.OpenAI]:
    server, _ = served
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0) as client:
        yield client


@pytest.fixture
def ant(served) -> Iterator[anthropic.Anthropic]:
    server, _ = served
    with anthropic.Anthropic(base_url=server.base_url, api_key=KEY, max_retries=0) as client:
        yield client


# ---------------------------------------------------------------- Responses, translated (mock)


def test_responses_text_through_the_mock(oai):
    raw = oai.responses.with_raw_response.create(model="fast", input="hello there", instructions="be brief")
    response = raw.parse()
    assert response.status == "completed" and response.id.startswith("resp_")
    assert response.output_text == f"This is a mock answer from {MOCK_MODEL}. You said: hello there"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert raw.headers["x-switchyard-provider"] == "mock" and float(raw.headers["x-switchyard-cost-usd"]) > 0


def test_responses_stream_through_the_mock(oai):
    with oai.responses.stream(model="fast", input="stream to me") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert final.output_text == f"This is a mock answer from {MOCK_MODEL}. You said: stream to me"
    assert final.usage is not None and final.usage.output_tokens > 0


def test_responses_tool_round_trip_by_previous_response_id(oai):
    first = oai.responses.create(model="fast", input="weather in Paris?", tools=[WEATHER], tool_choice="required")
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    second = oai.responses.create(model="fast", previous_response_id=first.id, tools=[WEATHER],
                                  input=[{"type": "function_call_output", "call_id": call.call_id,
                                          "output": "sunny, 21C"}])
    assert second.previous_response_id == first.id
    assert second.output_text.endswith("The tool returned: sunny, 21C")
    # the whole conversation is the stored input of the second response
    items = list(oai.responses.input_items.list(second.id, order="asc"))
    assert [item.type for item in items] == ["message", "function_call", "function_call_output"]


def test_responses_tool_round_trip_streaming_with_the_whole_input(oai):
    with oai.responses.stream(model="fast", input="weather in Oslo?", tools=[WEATHER],
                              tool_choice="required") as stream:
        first = stream.get_final_response()
    (call,) = [item for item in first.output if item.type == "function_call"]
    history = [{"role": "user", "content": "weather in Oslo?"}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "snow"}]
    with oai.responses.stream(model="fast", input=history, tools=[WEATHER], store=False) as stream:
        second = stream.get_final_response()
    assert second.output_text.endswith("The tool returned: snow")
    with pytest.raises(openai.NotFoundError):  # store: false is honoured
        oai.responses.retrieve(second.id)


class Weather(BaseModel):
    city: str
    celsius: int


def test_responses_structured_output(oai):
    parsed = oai.responses.parse(model="fast", input="weather in Rome as JSON", text_format=Weather)
    assert isinstance(parsed.output_parsed, Weather)


def test_stored_responses_are_retrieved_listed_and_deleted_by_their_team_only(served, oai):
    server, _ = served
    made = oai.responses.create(model="fast", input="keep me")
    assert oai.responses.retrieve(made.id).output_text == made.output_text
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=OTHER_KEY, max_retries=0) as other:
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(made.id)
        with pytest.raises(openai.BadRequestError) as info:  # nor continue it
            other.responses.create(model="fast", previous_response_id=made.id, input="and then?")
        assert info.value.body["param"] == "previous_response_id"
    oai.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(made.id)


def test_unknown_previous_response_is_a_400_naming_it(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model="fast", previous_response_id="resp_nope", input="continue")
    assert info.value.body["param"] == "previous_response_id" and "resp_nope" in info.value.message


@pytest.mark.parametrize("kwargs, param", [
    ({"input": "hi", "temperature": 9}, "temperature"),
    ({"input": [{"role": "wizard", "content": "hi"}]}, "input[0].role"),
    ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"input": "hi", "conversation": "conv_1"}, "conversation"),
])
def test_bad_responses_requests_are_openai_shaped_400s(oai, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model="fast", **kwargs)
    assert info.value.body["param"] == param and info.value.body["type"] == "invalid_request_error"


def test_responses_dropped_fields_are_named(served):
    server, _ = served
    r = httpx.post(server.base_url + "/v1/responses", headers={"authorization": f"Bearer {KEY}"},
                   json={"model": "fast", "input": "hi", "reasoning": {"effort": "high"}, "truncation": "auto"})
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-dropped-fields"] == "reasoning, truncation"


# ---------------------------------------------------------------- Responses, native and to Anthropic


def test_responses_pass_through_untouched_to_a_provider_serving_them(served, oai):
    _, up = served
    answer = json.loads(data("responses/text.json"))["response"]
    route = up.post("/responses").respond(json=answer)
    raw = oai.responses.with_raw_response.create(model="native", input="a story", previous_response_id="resp_up_1",
                                                 reasoning={"effort": "low"})
    response = raw.parse()
    sent = route.calls.last.request
    body = json.loads(sent.content)
    assert body["model"] == "gpt-4.1" and body["previous_response_id"] == "resp_up_1"  # the provider's own id
    assert body["reasoning"] == {"effort": "low"} and sent.headers["authorization"] == "Bearer sk-oai-secret"
    assert response.id == answer["id"] and response.output_text == answer["output"][0]["content"][0]["text"]
    assert float(raw.headers["x-switchyard-cost-usd"]) > 0  # priced from the Responses usage
    assert "x-switchyard-dropped-fields" not in raw.headers


def test_responses_stream_passes_through_a_provider_serving_them(served, oai):
    _, up = served
    up.post("/responses").stream([data("responses/openai_stream.sse")], headers={"content-type": "text/event-stream"})
    with oai.responses.stream(model="native", input="a story") as stream:
        final = stream.get_final_response()
    assert final.id == "resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654" and final.output_text


def test_responses_to_a_chat_only_openai_compatible_server(served, oai):
    _, up = served
    route = up.post("/chat/completions").respond(json=completion(content="from llama"))
    response = oai.responses.create(model="compat", input="hi", instructions="be kind")
    assert response.output_text == "from llama"
    sent = json.loads(route.calls.last.request.content)
    assert sent["messages"] == [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]


def test_responses_to_anthropic(served, oai):
    _, up = served
    route = up.at("POST", "/v1/messages").respond(json=json.loads(data("anthropic/message.json")))
    response = oai.responses.create(model="claude", input="hi", instructions="be brief", max_output_tokens=50)
    assert response.output_text.startswith("Hello!")
    sent = json.loads(route.calls.last.request.content)
    assert sent["system"] == "be brief" and sent["max_tokens"] == 50 and sent["model"] == "claude-x"


def test_responses_stream_to_anthropic(served, oai):
    _, up = served
    up.at("POST", "/v1/messages").stream([data("anthropic/text_stream.sse")],
                                         headers={"content-type": "text/event-stream"})
    with oai.responses.stream(model="claude", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello!" and final.usage.output_tokens == 15


# ---------------------------------------------------------------- Messages, translated (mock, OpenAI-compatible)


def test_messages_text_through_the_mock(ant):
    raw = ant.messages.with_raw_response.create(model="fast", max_tokens=200, system="be brief",
                                                messages=[{"role": "user", "content": "hello there"}])
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.stop_reason == "end_turn"
    assert message.content[0].text == f"This is a mock answer from {MOCK_MODEL}. You said: hello there"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert float(raw.headers["x-switchyard-cost-usd"]) > 0


def test_messages_stream_through_the_mock(ant):
    with ant.messages.stream(model="fast", max_tokens=200, messages=[{"role": "user", "content": "stream it"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == f"This is a mock answer from {MOCK_MODEL}. You said: stream it"
    assert final.content[0].text == text and final.usage.output_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_messages_tool_round_trip_through_the_mock(ant, stream):
    ask = [{"role": "user", "content": "weather in Lima?"}]
    kwargs = {"model": "fast", "max_tokens": 300, "tools": [ANTHROPIC_WEATHER]}
    if stream:
        with ant.messages.stream(messages=ask, tool_choice={"type": "any"}, **kwargs) as s:
            first = s.get_final_message()
    else:
        first = ant.messages.create(messages=ask, tool_choice={"type": "any"}, **kwargs)
    assert first.stop_reason == "tool_use"
    (use,) = [block for block in first.content if block.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input, dict) and "city" in use.input
    follow = [*ask, {"role": "assistant", "content": [block.model_dump() for block in first.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "foggy"}]}]
    second = ant.messages.create(messages=follow, **kwargs)
    assert second.content[0].text.endswith("The tool returned: foggy")


def test_messages_to_an_openai_compatible_server(served, ant):
    _, up = served
    route = up.post("/chat/completions").respond(json=completion(content="hi from compat"))
    message = ant.messages.create(model="compat", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                                  system=[{"type": "text", "text": "terse", "cache_control": {"type": "ephemeral"}}])
    assert message.content[0].text == "hi from compat"
    sent = json.loads(route.calls.last.request.content)
    assert sent["messages"][0] == {"role": "system", "content": "terse"} and sent["max_tokens"] == 10


# ---------------------------------------------------------------- Messages, native (Anthropic)


def test_messages_pass_through_untouched_to_anthropic(served, ant):
    _, up = served
    route = up.at("POST", "/v1/messages").respond(json=json.loads(data("anthropic/tool_use.json")))
    raw = ant.messages.with_raw_response.create(
        model="claude", max_tokens=100, tools=[ANTHROPIC_WEATHER], thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": [{"type": "text", "text": "weather?",
                                                "cache_control": {"type": "ephemeral"}}]}],
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14", "anthropic-version": "2024-10-22"})
    message = raw.parse()
    sent = route.calls.last.request
    body = json.loads(sent.content)
    assert body["model"] == "claude-x" and body["thinking"]["budget_tokens"] == 1024  # nothing lost
    assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent.headers["x-api-key"] == "sk-ant-secret" and sent.headers["anthropic-beta"].startswith("interleaved")
    assert sent.headers["anthropic-version"] == "2024-10-22"  # the client's own
    assert message.stop_reason == "tool_use" and message.content[-1].name == "get_weather"
    # priced with cache reads and writes counted as input
    assert float(raw.headers["x-switchyard-cost-usd"]) > 0


def test_messages_stream_passes_through_anthropic(served, ant):
    _, up = served
    up.at("POST", "/v1/messages").stream([data("anthropic/tool_stream.sse")],
                                         headers={"content-type": "text/event-stream"})
    with ant.messages.stream(model="claude", max_tokens=100, tools=[ANTHROPIC_WEATHER],
                             messages=[{"role": "user", "content": "weather in SF?"}]) as s:
        final = s.get_final_message()
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {"location": "San Francisco, CA"}


def test_anthropic_errors_reach_the_anthropic_sdk_as_they_are(served, ant):
    _, up = served
    up.at("POST", "/v1/messages").respond(400, content=data("anthropic/invalid_request.json"),
                                          headers={"content-type": "application/json"})
    with pytest.raises(anthropic.BadRequestError) as info:
        ant.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["type"] == "invalid_request_error"


def test_anthropic_overload_is_an_overloaded_error_in_anthropics_shape(served, ant):
    _, up = served
    up.at("POST", "/v1/messages").respond(529, content=data("anthropic/overloaded.json"),
                                          headers={"content-type": "application/json"})
    with pytest.raises(anthropic.APIStatusError) as info:
        ant.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 503
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "overloaded_error"


# ---------------------------------------------------------------- Messages: the rest of the surface


def test_count_tokens_asks_anthropic_or_estimates(served, ant):
    _, up = served
    route = up.at("POST", "/v1/messages/count_tokens").respond(json={"input_tokens": 42})
    counted = ant.messages.count_tokens(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens == 42 and json.loads(route.calls.last.request.content)["model"] == "claude-x"
    raw = ant.messages.with_raw_response.count_tokens(model="fast", tools=[ANTHROPIC_WEATHER],
                                                      messages=[{"role": "user", "content": "hi " * 100}])
    assert raw.headers["x-switchyard-token-count"] == "estimated"
    assert 50 < raw.parse().input_tokens < 400


def test_models_list_in_anthropics_shape(ant):
    ids = [model.id for model in ant.models.list()]
    assert {"fast", "claude", "native"} <= set(ids)
    assert ant.models.retrieve("claude").type == "model"


@pytest.mark.parametrize("kwargs, fragment", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"max_tokens": 5, "messages": [{"role": "system", "content": "hi"}]}, "role"),
    ({"max_tokens": 5, "messages": []}, "messages"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "document"),
])
def test_bad_messages_requests_are_anthropic_shaped_400s(served, kwargs, fragment):
    server, _ = served
    r = httpx.post(server.base_url + "/v1/messages", json={"model": "fast", **kwargs},
                   headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert fragment in body["error"]["message"]


def test_refusals_on_the_messages_surface_are_anthropic_shaped(served):
    server, _ = served
    with anthropic.Anthropic(base_url=server.base_url, api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as info:
            bad.messages.create(model="fast", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert info.value.body["error"]["type"] == "authentication_error"
        with pytest.raises(anthropic.AuthenticationError):
            bad.messages.count_tokens(model="fast", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(anthropic.AuthenticationError):
            bad.models.list()
    with anthropic.Anthropic(base_url=server.base_url, api_key=KEY, max_retries=0) as good:
        with pytest.raises(anthropic.NotFoundError) as missing:
            good.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert missing.value.body["error"]["type"] == "not_found_error"
    r = httpx.post(server.base_url + "/v1/messages", content=b"{not json", headers={
        "x-api-key": KEY, "content-type": "application/json", "anthropic-version": "2023-06-01"})
    assert r.status_code == 400 and r.json()["type"] == "error"


# ---------------------------------------------------------------- legacy completions


def test_legacy_completions_pass_through_to_openai(served, oai):
    _, up = served
    answer = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-4.1",
              "choices": [{"text": " world", "index": 0, "logprobs": None, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    route = up.post("/completions").respond(json=answer)
    result = oai.completions.create(model="native", prompt="hello", max_tokens=3)
    assert result.choices[0].text == " world"
    assert json.loads(route.calls.last.request.content)["model"] == "gpt-4.1"


def test_legacy_completions_on_a_provider_without_them_is_a_400_naming_it(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model="claude", prompt="hello")
    assert "provider claude cannot serve legacy completions" in info.value.message


# ---------------------------------------------------------------- the OpenAI Agents SDK


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_an_agent_with_a_function_tool_runs_offline(served, api):
    server, _ = served
    agents.set_tracing_disabled(True)
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather for a city."""
        calls.append(city)
        return f"sunny in {city}"

    model_class = agents.OpenAIResponsesModel if api == "responses" else agents.OpenAIChatCompletionsModel

    async def run() -> agents.RunResult:
        async with openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0) as client:
            agent = agents.Agent(name="forecaster", instructions="Answer with the weather.", tools=[get_weather],
                                 model=model_class(model="fast", openai_client=client))
            return await agents.Runner.run(agent, "What is the weather in get_weather Paris?")

    result = asyncio.run(run())
    assert len(calls) == 1
    assert f"The tool returned: sunny in {calls[0]}" in result.final_output
