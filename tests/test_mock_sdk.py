"""The mock provider through the real served gateway, driven by the official `openai` SDK:
structured outputs (`parse` with Pydantic models), JSON mode, tool round trips, the SDK's
stream helper accumulating tool-call arguments, `n > 1` streams, and embeddings in the
base64 encoding the SDK asks for by default."""

from __future__ import annotations

import base64
import datetime
import enum
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

from support import ServerProcess

pytestmark = pytest.mark.integration  # the served proxy, in a process of its own

KEY = "sk-test-mock-sdk"
MODEL = "gpt-4o-mini"  # the upstream model behind the `fast` route; the mock names it

CONFIG = f"""
ledger: {{path: off}}
providers:
  mock: {{type: mock}}
teams:
  t: {{keys: ["{KEY}"]}}
routes:
  - {{name: fast, match: {{model: fast}}, to: mock/{MODEL}}}
  - {{name: embed, match: {{model: embed}}, to: mock/text-embedding-3-small}}
"""


class Priority(enum.StrEnum):
    low = "low"
    high = "high"


class Address(BaseModel):
    street: str
    city: str
    postcode: str | None


class Step(BaseModel):
    title: str
    minutes: int = Field(ge=1, le=90)


class Plan(BaseModel):
    name: str
    priority: Priority
    kind: Literal["trip", "errand"]
    address: Address
    backup: Address | None
    steps: list[Step]
    tags: list[str]
    due: datetime.date
    note: str | None = None


class GetWeather(BaseModel):
    """The weather for a city."""

    city: str
    unit: Literal["celsius", "fahrenheit"]
    days: int = Field(ge=1, le=7)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {"type": "function",
             "function": {"name": "current_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path: Path = tmp_path_factory.mktemp("mock-sdk") / "proxy.yaml"
    path.write_text(CONFIG)
    with ServerProcess(path) as proc:
        yield proc


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=10) as c:
        yield c


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assert_usage(usage: object) -> None:
    assert usage is not None
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# ---------------------------------------------------------------- structured output


def test_parse_gives_a_pydantic_instance(client: openai.OpenAI) -> None:
    reply = client.chat.completions.parse(model="fast", messages=ask("plan my day"), response_format=Plan)
    [choice] = reply.choices
    assert choice.finish_reason == "stop"
    plan = choice.message.parsed
    assert isinstance(plan, Plan)
    assert plan.name == "mock name" and plan.address.city == "mock city"
    assert plan.priority is Priority.low and plan.kind == "trip"
    assert isinstance(plan.backup, Address)  # Optional: the non-null branch
    assert plan.steps and 1 <= plan.steps[0].minutes <= 90
    assert plan.tags == ["mock tag"]
    assert isinstance(plan.due, datetime.date)
    assert_usage(reply.usage)
    again = client.chat.completions.parse(model="fast", messages=ask("plan my day"), response_format=Plan)
    assert again.choices[0].message.parsed == plan  # deterministic


def test_json_object_mode(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="fast", messages=ask("answer in JSON"), response_format={"type": "json_object"}
    )
    content = json.loads(reply.choices[0].message.content)
    assert content == {"answer": f"This is a mock answer from {MODEL}. You said: answer in JSON"}
    assert_usage(reply.usage)


# ---------------------------------------------------------------- tools


def test_tool_round_trip(client: openai.OpenAI) -> None:
    messages = ask("please get weather for Paris")
    tools = [TIME_TOOL, WEATHER_TOOL]
    first = client.chat.completions.create(model="fast", messages=messages, tools=tools)
    [choice] = first.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "get_weather"  # named in the question
    arguments = json.loads(call.function.arguments)
    assert arguments == {"city": "mock city", "unit": "celsius"}
    assert_usage(first.usage)

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    second = client.chat.completions.create(model="fast", messages=messages, tools=tools)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == f"This is a mock answer from {MODEL}. The tool returned: sunny, 21 C"
    assert not second.choices[0].message.tool_calls
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result were read


def test_forced_tool_choice(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="fast", messages=ask("what is the weather?"), tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "current_time"}},
    )
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "current_time" and json.loads(call.function.arguments) == {}


def test_parse_with_pydantic_function_tool(client: openai.OpenAI) -> None:
    reply = client.chat.completions.parse(
        model="fast", messages=ask("weather please"), tools=[openai.pydantic_function_tool(GetWeather)]
    )
    [call] = reply.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, GetWeather)
    assert call.function.parsed_arguments.city == "mock city"


def test_stream_helper_accumulates_tool_arguments(client: openai.OpenAI) -> None:
    tool = openai.pydantic_function_tool(GetWeather)
    with client.chat.completions.stream(
        model="fast", messages=ask("weather in Rome"), tools=[tool], stream_options={"include_usage": True}
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(deltas) > 1  # the arguments arrived in pieces
    [done] = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert isinstance(done.parsed_arguments, GetWeather)
    [call] = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.function.parsed_arguments == done.parsed_arguments
    assert_usage(final.usage)
    # the same request without a stream answers the same call
    whole = client.chat.completions.parse(model="fast", messages=ask("weather in Rome"), tools=[tool])
    assert whole.choices[0].message.tool_calls[0].function.arguments == call.function.arguments
    assert whole.choices[0].message.tool_calls[0].id == call.id
    assert whole.usage.model_dump() == final.usage.model_dump()


def test_stream_helper_parses_structured_content(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="fast", messages=ask("plan"), response_format=Plan) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Plan)


def test_n_two_streams_two_choices(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="fast", messages=ask("twice"), n=2, stream=True, stream_options={"include_usage": True}
    ))
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    expected = f"This is a mock answer from {MODEL}. You said: twice"
    assert texts == {0: expected, 1: expected}
    assert finishes == {0: "stop", 1: "stop"}
    usage = chunks[-1].usage
    assert_usage(usage)
    single = client.chat.completions.create(model="fast", messages=ask("twice")).usage
    assert usage.completion_tokens == 2 * single.completion_tokens


# ---------------------------------------------------------------- embeddings


def test_embeddings_default_base64_equals_float(client: openai.OpenAI) -> None:
    inputs = ["alpha", "beta gamma"]
    default = client.embeddings.create(model="embed", input=inputs)  # the SDK asks for base64 and decodes
    floats = client.embeddings.create(model="embed", input=inputs, encoding_format="float")
    assert len(default.data) == len(floats.data) == 2
    for a, b in zip(default.data, floats.data, strict=True):
        assert isinstance(a.embedding, list) and len(a.embedding) == len(b.embedding) == 16
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens > 0
    assert default.usage.total_tokens == default.usage.prompt_tokens


def test_embeddings_explicit_base64_is_a_string(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="embed", input="alpha", encoding_format="base64", dimensions=8)
    encoded = result.data[0].embedding
    assert isinstance(encoded, str)
    assert len(base64.b64decode(encoded)) == 8 * 4  # eight float32s
