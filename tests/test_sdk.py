"""End to end, as users run it: the real server in its own process, the official `openai`
SDK as the client, streaming and not, against the mock provider and a real local upstream."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from aiohttp import web

import proxy
from support import FakeUpstream, ServerProcess, chunk_events, completion

pytestmark = pytest.mark.integration  # the served proxy, in a process of its own

KEY = "sk-sdk-team-1"
OTHER = "sk-sdk-team-2"
USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


def config(upstream: str) -> str:
    return f"""
ledger: {{path: off}}
resilience: {{retries: 0}}  # retries have tests of their own (test_resilience.py)
providers:
  mock: {{type: mock}}
  up: {{type: openai, base_url: "{upstream}", api_key: sk-upstream-secret, timeout_s: 1.5}}
teams:
  search:
    keys: ["{KEY}"]
    default_model: fast
  other: {{keys: ["{OTHER}"], models: [fast]}}
routes:
  - {{name: fast, match: {{model: fast}}, to: mock/mock-fast}}
  - {{name: smart, match: {{model: smart}}, to: up/real-model}}
  - {{name: embed, match: {{model: embed}}, to: mock/embed-small}}
  - {{name: slow, match: {{model: slow}}, to: up/slow-model}}
  - {{name: cut, match: {{model: cut}}, to: up/cut-model}}
  - {{name: flaky, match: {{model: flaky}}, to: up/flaky-model}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start_threaded()
    yield up
    up.stop_threaded()


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream) -> Iterator[ServerProcess]:
    path: Path = tmp_path_factory.mktemp("sdk") / "proxy.yaml"
    path.write_text(config(upstream.base_url))
    with ServerProcess(path) as proc:
        yield proc


def sdk(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=10)


@pytest.fixture
def client(server) -> Iterator[openai.OpenAI]:
    with sdk(server, KEY) as c:  # closed, so no socket is left for the garbage collector
        yield c


def ask(text: str = "hello") -> list[dict]:
    return [{"role": "user", "content": text}]


def test_chat_non_stream_through_mock(client):
    raw = client.chat.completions.with_raw_response.create(model="fast", messages=ask())
    reply = raw.parse()
    assert reply.choices[0].message.content == "This is a mock answer from mock-fast. You said: hello"
    assert reply.usage is not None and reply.usage.total_tokens > 0
    assert raw.headers["x-switchyard-route"] == "fast"
    assert raw.headers["x-switchyard-provider"] == "mock"
    assert raw.headers["x-switchyard-model"] == "mock-fast"
    assert raw.headers["x-switchyard-cache"] == "bypass"
    assert raw.headers["x-request-id"].startswith("req_")


def test_chat_stream_through_mock(client):
    chunks = list(client.chat.completions.create(model="fast", messages=ask(), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "This is a mock answer from mock-fast. You said: hello"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # not asked for: not sent


def test_chat_stream_with_usage(client):
    chunks = list(client.chat.completions.create(
        model="fast", messages=ask(), stream=True, stream_options={"include_usage": True}
    ))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_chat_through_upstream_both_ways(client, upstream):
    route = upstream.post("/chat/completions").respond(json=completion("from upstream", usage=USAGE))
    reply = client.chat.completions.create(model="smart", messages=ask(), temperature=0.2, user="alice")
    assert reply.choices[0].message.content == "from upstream"
    sent = route.calls.last.request
    assert sent.json()["model"] == "real-model" and sent.json()["temperature"] == 0.2
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret"
    upstream.post("/chat/completions").stream(chunk_events(["from ", "a ", "stream"], usage=USAGE))
    with client.chat.completions.with_streaming_response.create(model="smart", messages=ask(), stream=True) as r:
        assert r.headers["x-switchyard-provider"] == "up"
        chunks = list(r.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "from a stream"


def test_embeddings(client):
    result = client.embeddings.create(model="embed", input=["one", "two"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 16
    assert result.data[0].embedding != result.data[1].embedding


def test_models_list_and_retrieve(client, server):
    assert sorted(m.id for m in client.models.list()) == ["cut", "embed", "fast", "flaky", "slow", "smart"]
    assert client.models.retrieve("fast").id == "fast"
    with sdk(server, OTHER) as other:
        assert [m.id for m in other.models.list()] == ["fast"]
        with pytest.raises(openai.PermissionDeniedError):  # as chat with it would: not this team's
            other.models.retrieve("smart")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def call_with(server: ServerProcess, key: str, model: str) -> object:
    with sdk(server, key) as other:
        return other.chat.completions.create(model=model, messages=ask())


@pytest.mark.parametrize(
    "call, error, status",
    [
        (lambda c, s: call_with(s, "sk-wrong", "fast"), openai.AuthenticationError, 401),
        (lambda c, s: call_with(s, OTHER, "smart"), openai.PermissionDeniedError, 403),
        (lambda c, s: c.chat.completions.create(model="no-such-model", messages=ask()), openai.NotFoundError, 404),
        (lambda c, s: c.chat.completions.create(model="fast", messages=[]), openai.BadRequestError, 400),
        (lambda c, s: c.chat.completions.create(model="fast", messages=ask(), temperature="hot"),
         openai.BadRequestError, 400),
    ],
    ids=["bad-key", "not-allowed", "unknown-model", "empty-messages", "bad-temperature"],
)
def test_errors_reach_the_sdk_as_its_exceptions(client, server, call, error, status):
    with pytest.raises(error) as info:
        call(client, server)
    assert info.value.status_code == status
    assert info.value.body is not None and "message" in info.value.body
    assert client.chat.completions.create(model="fast", messages=ask()).choices  # still serving


def test_unknown_model_message_lists_allowed_names(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=ask())
    assert "fast" in str(info.value) and "smart" in str(info.value)


def test_upstream_500_is_502_and_hang_is_504(client, upstream):
    upstream.post("/chat/completions").respond(500, json={"error": {"message": "exploded"}})
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="flaky", messages=ask())
    assert info.value.status_code == 502 and "exploded" in str(info.value)
    # a hang far beyond the SDK's own 10 s timeout: a 504 at all is the provider's read
    # timeout (1.5 s) speaking, not the end of the hang
    upstream.post("/chat/completions").fault("hang", seconds=60)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="slow", messages=ask())
    assert info.value.status_code == 504
    assert client.chat.completions.create(model="fast", messages=ask()).choices


def test_stream_events_arrive_before_the_upstream_finishes(client, upstream):
    received_first = threading.Event()
    waited: list[bool] = []

    async def held_after_two(request: web.Request) -> web.StreamResponse:
        """Two events, then nothing more until the client has the first: a proxy that
        buffered the stream would never deliver it, and this upstream would give up."""
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        events = chunk_events(["first", " second"])
        for event in events[:2]:
            await response.write(event)
        waited.append(await asyncio.to_thread(received_first.wait, 5))
        for event in events[2:]:
            await response.write(event)
        await response.write_eof()
        return response

    upstream.post("/chat/completions").handler(held_after_two)
    stream = client.chat.completions.create(model="smart", messages=ask(), stream=True)
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        received_first.set()
    assert len(chunks) >= 3
    assert waited == [True]  # the first events came while the upstream was still holding the rest


def test_client_disconnect_cancels_the_upstream_request(client, upstream):
    gone = threading.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            for event in chunk_events(["tok "] * 500):
                await response.write(event)
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            gone.set()
            raise
        return response

    upstream.post("/chat/completions").handler(endless)
    stream = client.chat.completions.create(model="smart", messages=ask(), stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    assert gone.wait(5), "the upstream kept streaming after the client went away"


def test_upstream_cut_mid_stream_ends_with_an_error_the_sdk_raises(client, upstream):
    upstream.post("/chat/completions").stream(chunk_events(["a", "b", "c", "d"]), cut_after=2, interval_s=0.05)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="cut", messages=ask(), stream=True):
            received.append(chunk)
    assert received  # what arrived before the cut was delivered
    assert "broke off" in str(info.value)
    assert client.chat.completions.create(model="fast", messages=ask()).choices


def test_health_and_readiness(server):
    assert httpx.get(server.base_url + "/healthz").json() == {"status": "ok", "version": proxy.__version__}
    ready = httpx.get(server.base_url + "/readyz").json()
    assert ready["status"] == "ready" and ready["generation"] == 1
