"""OpenAIAdapter against a real local upstream (tests/support.py), and ProviderPool reuse/retirement."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from proxy.errors import InvalidResponse, UpstreamAuthError, UpstreamError, UpstreamTimeout
from proxy.providers import ProviderPool, build_adapter
from proxy.providers import openai as openai_module
from proxy.providers.base import Adapter, UpstreamRequest, UpstreamResponse
from proxy.providers.openai import OpenAIAdapter
from proxy.snapshot import ProviderSpec, snapshot_from_text
from proxy.tasks import drain
from support import FakeUpstream, UnansweredPort, dead_port

BASE = "https://up.example/v1"  # for specs that are never sent to

PROVIDER_KEY = "sk-upstream"  # what the gateway sends; "sk-upstream" in every assertion below


def make_spec(**overrides) -> ProviderSpec:
    values = dict(
        name="up",
        type="openai",
        base_url=BASE,
        api_key=PROVIDER_KEY,
        headers=(("openai-organization", "org-42"), ("x-extra", "extra-value")),
        timeout_s=30.0,
        connect_timeout_s=5.0,
        max_connections=10,
        max_keepalive=5,
        latency_ms=0.0,
        chunk_interval_ms=0.0,
    )
    values.update(overrides)
    return ProviderSpec(**values)


def chat_request(stream: bool = False, headers: list[tuple[str, str]] | None = None, **body) -> UpstreamRequest:
    payload = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.3,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "metadata": {"nested": [1, 2, {"deep": None}]},
        **body,
    }
    if stream:
        payload["stream"] = True
    return UpstreamRequest("chat/completions", payload, stream, "req_test", headers or [])


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        yield up


@pytest.fixture
async def adapter(upstream) -> AsyncIterator[OpenAIAdapter]:
    a = OpenAIAdapter(make_spec(base_url=upstream.base_url))
    try:
        yield a
    finally:
        await a.aclose()


# ---------------------------------------------------------------- request shape


async def test_chat_goes_to_chat_completions_with_body_intact(adapter, upstream):
    route = upstream.post("/chat/completions").respond(200, json={"ok": True})
    request = chat_request()
    await adapter.send(request)
    assert route.call_count == 1
    sent = route.calls.last.request
    assert sent.url == f"{upstream.base_url}/chat/completions"
    assert sent.method == "POST"
    assert json.loads(sent.content) == request.body
    assert sent.headers["content-type"] == "application/json"


async def test_rewritten_model_is_sent_and_other_fields_untouched(adapter, upstream):
    route = upstream.post("/chat/completions").respond(200, json={})
    request = chat_request(model="upstream-model-7", max_tokens=12, logit_bias={"50256": -100}, seed=7)
    await adapter.send(request)
    body = json.loads(route.calls.last.request.content)
    assert body["model"] == "upstream-model-7"
    assert body["max_tokens"] == 12
    assert body["logit_bias"] == {"50256": -100}
    assert body["seed"] == 7
    assert body["metadata"] == {"nested": [1, 2, {"deep": None}]}
    assert body["tools"][0]["function"]["name"] == "f"
    assert set(body) == set(request.body)


async def test_embeddings_go_to_embeddings(adapter, upstream):
    route = upstream.post("/embeddings").respond(200, json={"object": "list", "data": []})
    body = {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 8}
    response = await adapter.send(UpstreamRequest("embeddings", body, False, "req_e"))
    assert response.status == 200
    sent = route.calls.last.request
    assert sent.url == f"{upstream.base_url}/embeddings"
    assert json.loads(sent.content) == body


async def test_provider_key_sent_as_bearer(adapter, upstream):
    route = upstream.post("/chat/completions").respond(200, json={})
    await adapter.send(chat_request())
    assert route.calls.last.request.headers.getall("authorization") == ["Bearer sk-upstream"]


async def test_configured_provider_headers_sent(adapter, upstream):
    route = upstream.post("/chat/completions").respond(200, json={})
    await adapter.send(chat_request())
    sent = route.calls.last.request.headers
    assert sent["openai-organization"] == "org-42"
    assert sent["x-extra"] == "extra-value"


async def test_no_authorization_when_provider_has_no_key(upstream):
    a = OpenAIAdapter(make_spec(base_url=upstream.base_url, api_key=None, headers=()))
    try:
        route = upstream.post("/chat/completions").respond(200, json={})
        await a.send(chat_request())
        assert "authorization" not in route.calls.last.request.headers
    finally:
        await a.aclose()


async def test_forwarded_client_headers_arrive(adapter, upstream):
    route = upstream.post("/chat/completions").respond(200, json={})
    await adapter.send(chat_request(headers=[("x-custom", "abc"), ("user-agent", "my-sdk/1.0")]))
    sent = route.calls.last.request.headers
    assert sent["x-custom"] == "abc"
    assert sent["user-agent"] == "my-sdk/1.0"


@pytest.mark.parametrize("name", ["authorization", "Authorization", "AUTHORIZATION"])
async def test_client_authorization_never_overrides_provider_key(adapter, upstream, name):
    route = upstream.post("/chat/completions").respond(200, json={})
    await adapter.send(chat_request(headers=[(name, "Bearer client-secret"), ("x-custom", "kept")]))
    sent = route.calls.last.request.headers
    assert sent.getall("authorization") == ["Bearer sk-upstream"]
    assert "client-secret" not in str(list(sent.values()))
    assert sent["x-custom"] == "kept"


async def test_client_cannot_override_configured_provider_headers(adapter, upstream):
    route = upstream.post("/chat/completions").respond(200, json={})
    await adapter.send(chat_request(headers=[("openai-organization", "org-client"), ("content-type", "text/plain")]))
    sent = route.calls.last.request.headers
    assert sent.getall("openai-organization") == ["org-42"]
    assert sent.getall("content-type") == ["application/json"]


# ---------------------------------------------------------------- non-stream answers


async def test_non_stream_body_returned_byte_identical(adapter, upstream):
    raw = (b'{"id": "chatcmpl-1",   "choices":[{"index":0,"message":{"role":"assistant","content":"h\\u00e9"}}] '
           b',"z":1}\n')
    upstream.post("/chat/completions").respond(
        200, content=raw, headers={"content-type": "application/json", "openai-processing-ms": "12"}
    )
    response = await adapter.send(chat_request())
    assert response.status == 200
    assert response.ok
    assert response.body == raw
    assert response.chunks is None
    headers = {name.lower(): value for name, value in response.headers}
    assert headers["content-type"] == "application/json"
    assert headers["openai-processing-ms"] == "12"


@pytest.mark.parametrize("status", [400, 404, 409, 422, 429])
async def test_4xx_returned_with_status_and_body(adapter, upstream, status):
    error = {"message": f"nope {status}", "type": "invalid_request_error", "param": "x", "code": "c"}
    raw = json.dumps({"error": error}).encode()
    upstream.post("/chat/completions").respond(status, content=raw, headers={"content-type": "application/json"})
    response = await adapter.send(chat_request())
    assert response.status == status
    assert not response.ok
    assert response.body == raw
    assert response.chunks is None


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_provider_key_is_the_gateways_problem_not_the_callers(adapter, upstream, status, caplog):
    """The provider's own words may echo our key: they go to the log, redacted; the caller
    gets a 502 naming the provider."""
    raw = json.dumps({"error": {"message": f"Incorrect API key provided: {PROVIDER_KEY}. Find yours at ...",
                                "type": "invalid_request_error", "code": "invalid_api_key"}}).encode()
    upstream.post("/chat/completions").respond(status, content=raw, headers={"content-type": "application/json"})
    # the line is logged once per provider and status every 30 s: forget what an earlier test
    # (any with a provider named "up" refused) logged, so this one's line is written
    openai_module._refusals._seen.clear()
    with caplog.at_level("WARNING", logger="switchyard.providers"):
        with pytest.raises(UpstreamAuthError) as info:
            await adapter.send(chat_request())
    error = info.value
    assert error.status == 502 and error.code == "upstream_auth_error"
    assert "provider up" in error.message and PROVIDER_KEY not in error.message and "Incorrect" not in error.message
    logged = caplog.text
    assert "Incorrect API key provided" in logged and PROVIDER_KEY not in logged


async def test_5xx_returned_as_response_not_raised(adapter, upstream):
    upstream.post("/chat/completions").respond(503, json={"error": {"message": "overloaded"}})
    response = await adapter.send(chat_request())
    assert response.status == 503
    assert json.loads(response.body) == {"error": {"message": "overloaded"}}


# ---------------------------------------------------------------- transport failures


async def test_connect_error_becomes_upstream_error():
    a = OpenAIAdapter(make_spec(base_url=f"http://127.0.0.1:{dead_port()}/v1"))  # nothing listens
    try:
        with pytest.raises(UpstreamError) as info:
            await a.send(chat_request())
    finally:
        await a.aclose()
    assert type(info.value) is UpstreamError
    assert info.value.status == 502
    assert info.value.code == "upstream_error"
    assert "up" in info.value.message
    assert "refused" in info.value.message


async def test_read_timeout_becomes_upstream_timeout(upstream):
    upstream.post("/chat/completions").fault("hang", seconds=5)
    a = OpenAIAdapter(make_spec(base_url=upstream.base_url, timeout_s=0.2))
    try:
        with pytest.raises(UpstreamTimeout) as info:
            await a.send(chat_request())
    finally:
        await a.aclose()
    assert info.value.status == 504
    assert info.value.code == "upstream_timeout"
    assert "waiting for data" in info.value.message


async def test_connect_timeout_becomes_upstream_timeout():
    with UnansweredPort() as port:
        a = OpenAIAdapter(make_spec(base_url=f"http://127.0.0.1:{port}/v1", connect_timeout_s=0.2))
        try:
            with pytest.raises(UpstreamTimeout) as info:
                await a.send(chat_request())
        finally:
            await a.aclose()
    assert info.value.status == 504
    assert "connecting" in info.value.message


async def test_connection_closed_before_answer_becomes_upstream_error(adapter, upstream):
    upstream.post("/chat/completions").fault("close")
    with pytest.raises(UpstreamError) as info:
        await adapter.send(chat_request())
    assert type(info.value) is UpstreamError
    assert info.value.status == 502
    assert "closed" in info.value.message


# ---------------------------------------------------------------- streams


SSE_EVENTS = [
    b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n',
    b"data: [DONE]\n\n",
]


async def collect(response: UpstreamResponse) -> list[bytes]:
    assert response.chunks is not None
    out = []
    try:
        async for chunk in response.chunks:
            out.append(chunk)
    finally:
        await response.close()
    return out


async def test_stream_yields_chunks(adapter, upstream):
    route = upstream.post("/chat/completions").stream(
        SSE_EVENTS, headers={"content-type": "text/event-stream; charset=utf-8"}
    )
    response = await adapter.send(chat_request(stream=True))
    assert response.status == 200
    assert response.chunks is not None
    assert response.body == b""
    chunks = await collect(response)
    assert b"".join(chunks) == b"".join(SSE_EVENTS)
    assert json.loads(route.calls.last.request.content)["stream"] is True


async def test_stream_chunks_arrive_as_sent(adapter, upstream):
    # the first event must be readable while the upstream is still pausing
    upstream.post("/chat/completions").stream(SSE_EVENTS, pause_after=1, pause_s=0.5)
    response = await adapter.send(chat_request(stream=True))
    assert response.chunks is not None
    first = await asyncio.wait_for(response.chunks.__anext__(), timeout=0.4)
    assert first == SSE_EVENTS[0]
    rest = await collect(response)
    assert first + b"".join(rest) == b"".join(SSE_EVENTS)


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("application/json", b'{"id":"x","object":"chat.completion"}'),  # streaming ignored: still not a stream
        ("text/html", b"<html><body>Please log in to the guest Wi-Fi</body></html>"),  # a captive portal
        (None, b"data: {}\n\n"),
    ],
)
async def test_a_stream_request_answered_with_anything_but_a_stream_is_invalid(adapter, upstream, content_type, raw):
    headers = {"content-type": content_type} if content_type else {}
    upstream.post("/chat/completions").respond(200, content=raw, headers=headers)
    with pytest.raises(InvalidResponse) as info:
        await adapter.send(chat_request(stream=True))
    assert info.value.status == 502 and info.value.code == "invalid_response" and info.value.kind == "invalid_response"


async def test_stream_request_answered_with_error_comes_back_as_body(adapter, upstream):
    raw = b'{"error":{"message":"bad stream request"}}'
    upstream.post("/chat/completions").respond(
        400, content=raw, headers={"content-type": "text/event-stream"}
    )
    response = await adapter.send(chat_request(stream=True))
    assert response.chunks is None
    assert response.status == 400
    assert response.body == raw


@pytest.mark.parametrize(
    "raw",
    [b"<html>captive portal</html>", b"[1, 2]", b'"a string"', b"", b"{truncated", "".join(["data: {}\n\n"]).encode()],
)
async def test_a_2xx_that_is_not_a_json_object_is_invalid(adapter, upstream, raw):
    upstream.post("/chat/completions").respond(200, content=raw, headers={"content-type": "application/json"})
    with pytest.raises(InvalidResponse):
        await adapter.send(chat_request(stream=False))


async def test_non_stream_request_answered_with_event_stream_is_invalid(adapter, upstream):
    upstream.post("/chat/completions").stream(SSE_EVENTS)
    with pytest.raises(InvalidResponse):
        await adapter.send(chat_request(stream=False))


async def test_connection_cut_mid_stream_becomes_upstream_error(adapter, upstream):
    upstream.post("/chat/completions").stream(SSE_EVENTS, cut_after=2, interval_s=0.05)
    response = await adapter.send(chat_request(stream=True))
    assert response.chunks is not None
    received: list[bytes] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in response.chunks:
            received.append(chunk)
    await response.close()
    assert type(info.value) is UpstreamError
    assert info.value.status == 502
    assert b"".join(received) == b"".join(SSE_EVENTS[:2])
    assert "stream" in info.value.message


async def test_timeout_mid_stream_becomes_upstream_timeout(upstream):
    upstream.post("/chat/completions").stream(SSE_EVENTS, pause_after=1, pause_s=3)
    a = OpenAIAdapter(make_spec(base_url=upstream.base_url, timeout_s=0.2))
    try:
        response = await a.send(chat_request(stream=True))
        with pytest.raises(UpstreamTimeout):
            await collect(response)
    finally:
        await a.aclose()


async def test_connection_cut_while_reading_non_stream_body_becomes_upstream_error(adapter, upstream):
    async def half_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/json", "content-length": "100"})
        await response.prepare(request)
        await response.write(b'{"id":')
        await asyncio.sleep(0.05)
        request.transport.abort()
        return response

    upstream.post("/chat/completions").handler(half_body)
    with pytest.raises(UpstreamError) as info:
        await adapter.send(chat_request())
    assert info.value.status == 502


async def test_stream_closed_early_frees_the_upstream(adapter, upstream):
    # a client that goes away mid-stream must not leave the upstream generating
    gone = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(SSE_EVENTS[1])
                await asyncio.sleep(0.02)
        except (ConnectionError, asyncio.CancelledError):
            gone.set()
            raise

    upstream.post("/chat/completions").handler(endless)
    response = await adapter.send(chat_request(stream=True))
    assert response.chunks is not None
    await response.chunks.__anext__()
    await response.close()
    await asyncio.wait_for(gone.wait(), timeout=2)


async def test_build_adapter_picks_openai_for_openai_type():
    a = build_adapter(make_spec())
    try:
        assert isinstance(a, OpenAIAdapter)
        assert a._base == BASE + "/"
    finally:
        await a.aclose()


# ---------------------------------------------------------------- ProviderPool


class RecordingAdapter(Adapter):
    def __init__(self, spec: ProviderSpec) -> None:
        super().__init__(spec)
        self.closed = 0

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:  # pragma: no cover - unused
        return UpstreamResponse(200, [])

    async def aclose(self) -> None:
        self.closed += 1


class RecordingFactory:
    def __init__(self) -> None:
        self.built: list[RecordingAdapter] = []

    def __call__(self, spec: ProviderSpec) -> RecordingAdapter:
        adapter = RecordingAdapter(spec)
        self.built.append(adapter)
        return adapter


def snap(up_timeout: float = 30, extra: str = "", generation: int = 1):
    return snapshot_from_text(
        f"""
providers:
  mock: {{type: mock}}
  up: {{type: openai, base_url: "{BASE}", api_key: sk-upstream, timeout_s: {up_timeout}}}
{extra}
routes:
  - {{name: a, match: {{model: a}}, to: mock/a}}
""",
        generation=generation,
    )


async def test_pool_reuses_adapter_when_spec_unchanged():
    factory = RecordingFactory()
    pool = ProviderPool(factory)
    first = pool.sync(snap())
    assert set(first) == {"mock", "up"}
    assert len(factory.built) == 2
    second = pool.sync(snap(generation=2))
    await drain()  # retiring and closing adapters run in the background
    assert second["mock"] is first["mock"]
    assert second["up"] is first["up"]
    assert len(factory.built) == 2
    assert all(a.closed == 0 for a in factory.built)
    await pool.aclose()


async def test_pool_builds_new_adapter_when_spec_changes_and_retires_old():
    factory = RecordingFactory()
    pool = ProviderPool(factory)
    first = pool.sync(snap(up_timeout=30))
    second = pool.sync(snap(up_timeout=60, generation=2))
    await drain()  # retiring and closing adapters run in the background
    assert second["mock"] is first["mock"]
    assert second["up"] is not first["up"]
    assert second["up"].spec.timeout_s == 60
    assert len(factory.built) == 3
    assert first["up"].closed == 1
    assert second["up"].closed == 0
    assert first["mock"].closed == 0
    await pool.aclose()


async def test_pool_retires_removed_provider():
    factory = RecordingFactory()
    pool = ProviderPool(factory)
    first = pool.sync(snap())
    second = pool.sync(
        snapshot_from_text("providers: {mock: {type: mock}}\nroutes: [{name: a, match: {model: a}, to: mock/a}]")
    )
    await drain()  # retiring and closing adapters run in the background
    assert set(second) == {"mock"}
    assert first["up"].closed == 1
    assert first["mock"].closed == 0
    await pool.aclose()


async def test_pool_mapping_is_read_only():
    pool = ProviderPool(RecordingFactory())
    adapters = pool.sync(snap())
    with pytest.raises(TypeError):
        adapters["x"] = adapters["mock"]  # type: ignore[index]
    await pool.aclose()


async def test_pool_delays_close_while_request_in_flight():
    factory = RecordingFactory()
    pool = ProviderPool(factory)
    first = pool.sync(snap(up_timeout=30))
    old = first["up"]
    old.acquire()
    old.acquire()
    pool.sync(snap(up_timeout=45, generation=2))
    await drain()  # retiring and closing adapters run in the background
    assert old.inflight == 2
    assert old.closed == 0
    old.release()
    await drain()  # retiring and closing adapters run in the background
    assert old.closed == 0
    old.release()
    await drain()  # retiring and closing adapters run in the background
    assert old.inflight == 0
    assert old.closed == 1
    await pool.aclose()


async def test_pool_retires_real_openai_adapter_closing_its_connections():
    pool = ProviderPool()
    first = pool.sync(snap(up_timeout=30))
    old = first["up"]
    assert isinstance(old, OpenAIAdapter)
    old_session = old._pool()
    new_session = None
    old.acquire()
    second = pool.sync(snap(up_timeout=31, generation=2))
    await drain()  # retiring and closing adapters run in the background
    assert not old_session.closed
    new_session = second["up"]._pool()
    old.release()
    await drain()  # retiring and closing adapters run in the background
    assert old_session.closed
    assert not new_session.closed
    await pool.aclose()
    assert new_session.closed


async def test_pool_aclose_closes_everything():
    factory = RecordingFactory()
    pool = ProviderPool(factory)
    pool.sync(snap())
    await pool.aclose()
    assert [a.closed for a in factory.built] == [1, 1]


# ---------------------------------------------------------------- Azure OpenAI


async def test_azure_puts_the_deployment_in_the_url_and_the_key_in_api_key(upstream):
    from proxy.providers.openai import AzureOpenAIAdapter

    base = upstream.base_url.removesuffix("/v1")
    route = upstream.at("POST", "/openai/deployments/gpt-4o-prod/chat/completions").respond(200, json={"id": "azure"})
    a = AzureOpenAIAdapter(make_spec(type="azure", base_url=base, api_key="azure-key", headers=(),
                                     api_version="2024-10-21"))
    try:
        response = await a.send(chat_request(model="gpt-4o-prod"))
    finally:
        await a.aclose()
    assert response.status == 200
    sent = route.calls.last.request
    assert sent.url.endswith("/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21")
    assert sent.headers["api-key"] == "azure-key"
    assert "authorization" not in sent.headers


@pytest.mark.parametrize(
    "provider, problem",
    [
        ("{type: azure, base_url: 'https://x.openai.azure.com'}", "api_version"),
        ("{type: azure, api_version: '2024-10-21'}", "base_url"),
        ("{type: openai, api_version: '2024-10-21'}", "azure only"),
    ],
)
def test_azure_config_checks(provider, problem):
    from proxy.config import ConfigError

    with pytest.raises(ConfigError) as info:
        snapshot_from_text(f"providers: {{az: {provider}}}\nroutes: []")
    assert any(problem in reason for _, reason in info.value.problems), info.value.problems


def test_build_adapter_picks_azure():
    from proxy.providers.openai import AzureOpenAIAdapter

    assert isinstance(build_adapter(make_spec(type="azure", api_version="2024-10-21")), AzureOpenAIAdapter)
