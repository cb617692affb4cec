"""Metrics, spans and access logs of the whole app in process, against a real local upstream
and a real OTLP/HTTP receiver."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from proxy.tasks import drain
from proxy.usage import UsageTap, tokens
from support import AppClient, FakeUpstream, chat_body, chunk_events, completion, dead_port, free_port

KEY = "sk-telemetry-team-1"
SECRET_PROMPT = "my secret prompt text 4711"
UP_PORT = free_port()
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def config_text(extra: str = "") -> str:
    return f"""
providers:
  mock: {{type: mock}}
  up: {{type: openai, base_url: "http://127.0.0.1:{UP_PORT}/v1", api_key: sk-up, timeout_s: 1}}
  down: {{type: openai, base_url: "http://127.0.0.1:{dead_port()}/v1", api_key: sk-down}}
pricing:
  up/priced-model: {{input: 1.0, output: 2.0}}
teams:
  search: {{keys: ["{KEY}"]}}
routes:
  - {{name: fast, match: {{model: fast}}, to: mock/mock-fast}}
  - {{name: priced, match: {{model: priced}}, to: up/priced-model}}
  - {{name: broken, match: {{model: broken}}, to: down/some-model}}
  - {{name: any-up, match: {{model: "up-*"}}, to: "up/{{model}}"}}
{extra}
"""


AUTH = {"Authorization": f"Bearer {KEY}"}


chat = partial(chat_body, text=SECRET_PROMPT)  # every request carries the prompt no record may keep


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(UP_PORT) as up:
        yield up


@pytest.fixture
async def client(upstream, app_client) -> AppClient:
    return await app_client(config_text())


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def series(samples: dict, name: str) -> list[dict]:
    return [dict(ls) for (n, ls), _ in samples.items() if n == name]


# ---------------------------------------------------------------- metrics


async def test_metrics_endpoint_lists_every_family(client):
    text = (await client.get("/metrics")).text
    for name in (
        "llm_requests_total", "llm_request_duration_seconds", "llm_time_to_first_token_seconds",
        "llm_tokens_total", "llm_cost_usd_total", "llm_cache_requests_total", "llm_provider_errors_total",
        "llm_inflight_requests", "llm_proxy_overhead_seconds", "switchyard_config_reloads_total",
        "switchyard_config_generation", "switchyard_config_info",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert "_created" not in text


async def test_non_stream_request_counted_with_tokens_and_cost(client, upstream):
    upstream.post("/chat/completions").respond(json=completion(usage=USAGE))
    response = await client.post("/v1/chat/completions", json=chat("priced"), headers=AUTH)
    assert response.status_code == 200
    m = await scrape(client)
    labels = dict(team="search", route="priced", provider="up", model="priced-model")
    assert value(m, "llm_requests_total", **labels, status="200", cache="bypass") == 1
    assert value(m, "llm_tokens_total", type="input", **{k: labels[k] for k in ("team", "provider", "model")}) == 11
    assert value(m, "llm_tokens_total", type="output", provider="up") == 7
    assert value(m, "llm_cost_usd_total", provider="up") == pytest.approx((11 * 1.0 + 7 * 2.0) / 1e6)
    assert value(m, "llm_request_duration_seconds_count", provider="up", model="priced-model") == 1
    assert value(m, "llm_proxy_overhead_seconds_count") == 1
    assert value(m, "llm_inflight_requests") == 0
    assert value(m, "llm_cache_requests_total", result="bypass") == 1


async def test_stream_counts_time_to_first_token_and_usage_chunk(client, upstream):
    upstream.post("/chat/completions").stream(chunk_events(["a", "b", "c"], usage=USAGE), interval_s=0.01)
    body = chat("priced", stream=True, stream_options={"include_usage": True})
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200
    m = await scrape(client)
    assert value(m, "llm_time_to_first_token_seconds_count", provider="up", model="priced-model") == 1
    assert value(m, "llm_tokens_total", type="input", provider="up") == 11
    assert value(m, "llm_tokens_total", type="output", provider="up") == 7
    assert value(m, "llm_cost_usd_total", team="search") > 0
    assert value(m, "llm_inflight_requests") == 0


async def test_unknown_upstream_model_is_labelled_other(client, upstream):
    upstream.post("/chat/completions").respond(json=completion())
    for i in range(40):  # a template route: the client picks the upstream model name
        response = await client.post("/v1/chat/completions", json=chat(f"up-random-{i}"), headers=AUTH)
        assert response.status_code == 200
    m = await scrape(client)
    models = {s["model"] for s in series(m, "llm_requests_total")}
    assert models == {"other"}
    assert value(m, "llm_requests_total", route="any-up", model="other") == 40
    for s in series(m, "llm_request_duration_seconds_count"):
        assert not s["model"].startswith("up-random")


async def test_label_cardinality_bounded_whatever_clients_send(client, upstream):
    upstream.post("/chat/completions").respond(json=completion())
    requests = []
    for i in range(30):
        requests += [
            client.post("/v1/chat/completions", json=chat(f"up-x{i}"), headers=AUTH),
            client.post("/v1/chat/completions", json=chat(f"nonexistent-{i}"), headers=AUTH),
            client.post("/v1/chat/completions", json=chat("fast"), headers={"Authorization": f"Bearer wrong-{i}"}),
            client.post("/v1/chat/completions", json=chat("fast"), headers={**AUTH, "x-switchyard-user": f"user-{i}"}),
        ]
    await asyncio.gather(*requests)
    m = await scrape(client)
    rows = series(m, "llm_requests_total")
    assert len(rows) <= 6, rows  # (route x model x status) combinations, not 120
    for row in rows:
        assert row["team"] in {"search", "none"}
        assert row["route"] in {"fast", "any-up", "none"}
        assert row["model"] in {"mock-fast", "other", "none"}
    assert value(m, "llm_requests_total", status="401", team="none") == 30
    assert value(m, "llm_requests_total", status="404", team="search", route="none") == 30


async def test_cache_hits_counted_and_cost_nothing(upstream, app_client):
    client = await app_client(config_text() + "cache: {backend: memory}\n")
    upstream.post("/chat/completions").respond(json=completion(usage=USAGE))
    for _ in range(3):
        assert (await client.post("/v1/chat/completions", json=chat("priced"), headers=AUTH)).status_code == 200
        await drain()  # the answer is stored in the background
    m = await scrape(client)
    assert value(m, "llm_cache_requests_total", result="miss") == 1
    assert value(m, "llm_cache_requests_total", result="hit") == 2
    assert value(m, "llm_requests_total", cache="hit", route="priced") == 2
    assert value(m, "llm_tokens_total", type="input") == 11  # hits add no spend
    assert value(m, "llm_request_duration_seconds_count", provider="up") == 1


@pytest.mark.parametrize(
    "script, model, kind, status",
    [
        (lambda up: up.post("/chat/completions").respond(500, json={"error": {"message": "boom"}}),
         "priced", "status_5xx", 502),
        (lambda up: up.post("/chat/completions").respond(429, json={"error": {"message": "slow down"}}),
         "priced", "status_429", 429),
        (lambda up: up.post("/chat/completions").fault("hang", seconds=3), "priced", "timeout", 504),
        (lambda up: up.post("/chat/completions").fault("close"), "priced", "connection", 502),
        (lambda up: None, "broken", "connection", 502),
        (lambda up: up.post("/chat/completions").respond(content=b"not json", headers={"content-type": "text/plain"}),
         "priced", "invalid_response", 502),
        (lambda up: up.post("/chat/completions").respond(401, json={"error": {"message": "bad key sk-up"}}),
         "priced", "upstream_auth", 502),
    ],
    ids=["5xx", "429", "timeout", "closed", "refused", "invalid-json", "key-refused"],
)
async def test_provider_errors_counted_by_kind(client, upstream, script, model, kind, status):
    script(upstream)
    response = await client.post("/v1/chat/completions", json=chat(model), headers=AUTH)
    assert response.status_code == status
    m = await scrape(client)
    provider = "down" if model == "broken" else "up"
    assert value(m, "llm_provider_errors_total", provider=provider, kind=kind) == 1
    assert value(m, "llm_requests_total", status=str(status), provider=provider) == 1
    assert value(m, "llm_inflight_requests") == 0


async def test_stream_cut_counted(client, upstream):
    upstream.post("/chat/completions").stream(chunk_events(["a", "b", "c"]), cut_after=2, interval_s=0.02)
    response = await client.post("/v1/chat/completions", json=chat("priced", stream=True), headers=AUTH)
    assert response.status_code == 200
    assert '"upstream_error"' in response.text
    m = await scrape(client)
    assert value(m, "llm_provider_errors_total", provider="up", kind="stream_cut") == 1


async def test_config_reloads_and_generation(client):
    holder = client.runtime.holder
    path = Path(holder.path)
    m = await scrape(client)
    assert value(m, "switchyard_config_reloads_total", result="ok") == 1
    assert value(m, "switchyard_config_generation") == 1
    first_digest = [s["digest"] for s in series(m, "switchyard_config_info")]
    path.write_text(config_text("  - {name: extra, match: {model: extra}, to: mock/extra}"))
    holder.load()
    path.write_text("routes: [")
    holder.load()
    holder.load()  # the same broken bytes again
    m = await scrape(client)
    assert value(m, "switchyard_config_reloads_total", result="ok") == 2
    assert value(m, "switchyard_config_reloads_total", result="error") == 2
    assert value(m, "switchyard_config_generation") == 2
    digests = [s["digest"] for s in series(m, "switchyard_config_info")]
    assert len(digests) == 1 and digests != first_digest


# ---------------------------------------------------------------- access log


async def test_access_log_line_has_fields_and_no_secrets(client, upstream, caplog):
    upstream.post("/chat/completions").respond(json=completion(usage=USAGE))
    with caplog.at_level(logging.INFO, logger="switchyard.access"):
        response = await client.post(
            "/v1/chat/completions", json=chat("priced"), headers={**AUTH, "x-request-id": "req-log-1"}
        )
    assert response.status_code == 200
    lines = [r for r in caplog.records if r.name == "switchyard.access"]
    assert len(lines) == 1
    fields = lines[0].fields
    assert fields["request_id"] == "req-log-1"
    assert fields["team"] == "search"
    assert fields["route"] == "priced"
    assert fields["provider"] == "up"
    assert fields["model"] == "priced-model"
    assert fields["status"] == 200
    assert fields["cache"] == "bypass"
    assert fields["input_tokens"] == 11 and fields["output_tokens"] == 7
    assert fields["cost_usd"] == pytest.approx(25e-6)
    assert fields["latency_ms"] > 0
    from proxy.telemetry.logs import JsonFormatter

    rendered = JsonFormatter().format(lines[0])
    assert json.loads(rendered)["request_id"] == "req-log-1"
    for secret in (KEY, "sk-up", SECRET_PROMPT):
        assert secret not in rendered


async def test_access_log_can_be_turned_off(upstream, app_client, caplog):
    client = await app_client(config_text() + "telemetry: {access_log: false}\n")
    with caplog.at_level(logging.INFO, logger="switchyard.access"):
        assert (await client.post("/v1/chat/completions", json=chat("fast"), headers=AUTH)).status_code == 200
    assert not [r for r in caplog.records if r.name == "switchyard.access"]


# ---------------------------------------------------------------- traces


class OtlpReceiver:
    """A real OTLP/HTTP traces endpoint: decodes each protobuf export into spans."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spans: list = []
        self.runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append((service, span))
        return web.Response(content_type="application/x-protobuf", body=b"")

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = getattr(v, v.WhichOneof("value"))
    return out


@pytest.fixture
async def traced(upstream, app_client) -> AsyncIterator[tuple]:
    async with OtlpReceiver() as receiver:
        client = await app_client(
            config_text() + f'telemetry: {{otlp_endpoint: "{receiver.url}", service_name: sy-test}}\n')
        try:
            yield client.app, client, receiver
        finally:
            await client.aclose()  # while the receiver still listens: the last spans go out on close


async def flush(app) -> None:
    tracing = app.state.runtime.telemetry.tracing
    assert tracing is not None
    await asyncio.to_thread(tracing.provider.force_flush)


async def test_spans_follow_genai_conventions_and_join_the_clients_trace(traced, upstream):
    app, client, receiver = traced
    upstream.post("/chat/completions").respond(json=completion(usage=USAGE, model="priced-model-2025"))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_id = "00f067aa0ba902b7"
    response = await client.post(
        "/v1/chat/completions",
        json=chat("priced"),
        headers={**AUTH, "traceparent": f"00-{trace_id}-{parent_id}-01"},
    )
    assert response.status_code == 200
    await flush(app)
    spans = {span.name: (service, span) for service, span in receiver.spans}
    assert set(spans) == {"chat priced", "chat priced-model"}
    service, server = spans["chat priced"]
    _, attempt = spans["chat priced-model"]
    assert service == "sy-test"
    assert server.kind == server.SPAN_KIND_SERVER
    assert attempt.kind == attempt.SPAN_KIND_CLIENT
    assert server.trace_id.hex() == trace_id
    assert server.parent_span_id.hex() == parent_id
    assert attempt.parent_span_id == server.span_id
    a = attrs(server)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "up"
    assert a["gen_ai.request.model"] == "priced"
    assert a["gen_ai.response.model"] == "priced-model"
    assert a["gen_ai.usage.input_tokens"] == 11
    assert a["gen_ai.usage.output_tokens"] == 7
    assert a["switchyard.team"] == "search"
    assert a["switchyard.route"] == "priced"
    assert a["switchyard.cache"] == "bypass"
    assert a["switchyard.cost_usd"] == pytest.approx(25e-6)
    assert attrs(attempt)["gen_ai.request.model"] == "priced-model"
    # the upstream call carries the attempt span as its parent
    sent = upstream.post("/chat/completions").calls.last.request.headers["traceparent"]
    assert sent.split("-")[1] == trace_id
    assert sent.split("-")[2] == attempt.span_id.hex()
    # and no prompt text unless asked
    for _, span in receiver.spans:
        assert SECRET_PROMPT not in str(attrs(span))


@pytest.mark.parametrize(
    "client_flags, exported",
    [
        (None, False),  # our own trace, sampled out at ratio 0
        ("00", False),  # the client's trace, which it did not sample
        ("01", True),  # the client sampled its trace: its decision wins over our ratio
    ],
)
async def test_sampling(upstream, app_client, client_flags, exported):
    upstream.post("/chat/completions").respond(json=completion(usage=USAGE))
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = dict(AUTH)
    if client_flags is not None:
        headers["traceparent"] = f"00-{trace_id}-{parent_id}-{client_flags}"
    async with OtlpReceiver() as receiver:
        client = await app_client(config_text() + f'telemetry: {{otlp_endpoint: "{receiver.url}", sample_ratio: 0}}\n')
        try:
            for _ in range(3):
                r = await client.post("/v1/chat/completions", json=chat("priced"), headers=headers)
                assert r.status_code == 200
            await flush(client.app)
        finally:
            await client.aclose()
    assert (len(receiver.spans) == 6) if exported else (receiver.spans == [])
    # sampled or not, the upstream is told the trace and the decision
    sent = upstream.post("/chat/completions").calls.last.request.headers["traceparent"].split("-")
    assert int(sent[3], 16) & 1 == exported  # the sampled bit (0x02, "random", may be set too)
    if client_flags is not None:
        assert sent[1] == trace_id


async def test_failed_request_span_has_error_status(traced, upstream):
    app, client, receiver = traced
    upstream.post("/chat/completions").respond(500, json={"error": {"message": "broken"}})
    response = await client.post("/v1/chat/completions", json=chat("priced"), headers=AUTH)
    assert response.status_code == 502
    await flush(app)
    spans = {span.name: span for _, span in receiver.spans}
    server, attempt = spans["chat priced"], spans["chat priced-model"]
    assert server.status.code == server.status.STATUS_CODE_ERROR
    assert attrs(server)["error.type"] == "status_5xx"
    assert attrs(attempt)["error.type"] == "status_5xx"


async def test_prompt_on_spans_only_when_configured(upstream, app_client):
    upstream.post("/chat/completions").respond(json=completion(content="the answer"))
    async with OtlpReceiver() as receiver:
        client = await app_client(
            config_text() + f'telemetry: {{otlp_endpoint: "{receiver.url}", capture_content: true}}\n')
        try:
            assert (await client.post("/v1/chat/completions", json=chat("priced"), headers=AUTH)).status_code == 200
            await flush(client.app)
        finally:
            await client.aclose()
    server = next(span for _, span in receiver.spans if span.name == "chat priced")
    a = attrs(server)
    assert SECRET_PROMPT in a["gen_ai.input.messages"]
    assert "the answer" in a["gen_ai.output.messages"]


async def test_tracing_off_by_default_forwards_client_traceparent(client, upstream):
    assert client.runtime.telemetry.tracing is None
    upstream.post("/chat/completions").respond(json=completion())
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await client.post("/v1/chat/completions", json=chat("priced"), headers={**AUTH, "traceparent": parent})
    assert upstream.post("/chat/completions").calls.last.request.headers["traceparent"] == parent


async def test_tracing_follows_config_reload(client, upstream):
    telemetry = client.runtime.telemetry
    holder = client.runtime.holder
    async with OtlpReceiver() as receiver:
        Path(holder.path).write_text(config_text() + f'telemetry: {{otlp_endpoint: "{receiver.url}"}}\n')
        assert holder.load() == "ok"
        assert telemetry.tracing is not None
        assert telemetry.tracing.endpoint == receiver.url + "/v1/traces"
        assert (await client.post("/v1/chat/completions", json=chat("fast"), headers=AUTH)).status_code == 200
        await flush(client.app)
        assert sorted(span.name for _, span in receiver.spans) == ["chat fast", "chat mock-fast"]
    Path(holder.path).write_text(config_text())
    assert holder.load() == "ok"
    assert telemetry.tracing is None


# ---------------------------------------------------------------- usage tap (pure)


USAGE_STREAM = b"".join(chunk_events(["x", "y"], usage=USAGE))


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 64, len(USAGE_STREAM)])
def test_usage_tap_finds_usage_at_any_chunking(size):
    tap = UsageTap()
    for i in range(0, len(USAGE_STREAM), size):
        tap.feed(USAGE_STREAM[i : i + size])
    assert tap.usage == USAGE


@pytest.mark.parametrize(
    "stream",
    [
        b"".join(chunk_events(["x"])),  # no usage chunk
        b'data: {"choices":[],"usage":null}\n\ndata: [DONE]\n\n',
        b'data: {"usage": {"prompt_tokens": 1\n\n',  # broken JSON
        b": comment with \"usage\": {\n\n",
    ],
)
def test_usage_tap_without_usable_usage(stream):
    tap = UsageTap()
    tap.feed(stream)
    assert tap.usage is None


def test_usage_tap_handles_crlf_and_spaces():
    tap = UsageTap()
    tap.feed(b'data: {"choices": [], "usage" : {"prompt_tokens": 2, "completion_tokens": 3}}\r\n\r\n')
    assert tokens(tap.usage) == (2, 3)


@pytest.mark.parametrize(
    "usage, expected",
    [
        ({"prompt_tokens": 3, "completion_tokens": 4}, (3, 4)),
        ({"prompt_tokens": 3}, (3, 0)),
        ({"prompt_tokens": -1, "completion_tokens": True}, (0, 0)),
        ({"prompt_tokens": "3"}, (0, 0)),
        (None, (0, 0)),
        ([], (0, 0)),
    ],
)
def test_tokens(usage, expected):
    assert tokens(usage) == expected


# ---------------------------------------------------------------- usage asked for, then stripped


async def test_stream_usage_requested_upstream_and_stripped_for_client(client, upstream):
    route = upstream.post("/chat/completions").stream(chunk_events(["a", "b"], usage=USAGE))
    response = await client.post("/v1/chat/completions", json=chat("priced", stream=True), headers=AUTH)
    assert response.status_code == 200
    assert route.calls.last.request.json()["stream_options"] == {"include_usage": True}
    events = [e for e in response.text.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    assert '"usage":{' not in response.text.replace(" ", "")
    assert "".join(
        json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[:-1]
    ) == "ab"
    m = await scrape(client)
    assert value(m, "llm_tokens_total", type="input", provider="up") == 11  # still priced


async def test_stream_usage_kept_when_client_asked(client, upstream):
    route = upstream.post("/chat/completions").stream(chunk_events(["a"], usage=USAGE))
    body = chat("priced", stream=True, stream_options={"include_usage": True})
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert route.calls.last.request.json()["stream_options"] == {"include_usage": True}
    usage_events = [e for e in response.text.split("\n\n") if '"usage":{' in e.replace(" ", "")]
    assert len(usage_events) == 1
    assert json.loads(usage_events[0][6:])["usage"] == USAGE


STRIP_CASES = [
    pytest.param(chunk_events(["x", "y"], usage=USAGE), b"".join(chunk_events(["x", "y"])), id="usage-chunk-dropped"),
    pytest.param(chunk_events(["x"]), b"".join(chunk_events(["x"])), id="no-usage-untouched"),
    pytest.param(
        [b'data: {"choices":[{"index":0,"delta":{"content":"z"}}],"usage":{"prompt_tokens":1}}\n\n',
         b"data: [DONE]\n\n"],
        b'data: {"choices":[{"index":0,"delta":{"content":"z"}}],"usage":null}\n\ndata: [DONE]\n\n',
        id="usage-on-content-chunk-nulled",
    ),
    pytest.param([b'data: {"choices":[],"usage":null}\n\n'], b'data: {"choices":[],"usage":null}\n\n', id="null-usage"),
]


@pytest.mark.parametrize("events, expected", STRIP_CASES)
@pytest.mark.parametrize("size", [1, 5, 13, 1000])
def test_usage_stripper_at_any_chunking(events, expected, size):
    from proxy.usage import UsageStripper

    raw = b"".join(events)
    strip = UsageStripper()
    out = b"".join(strip(raw[i : i + size]) for i in range(0, len(raw), size))
    assert out == expected


async def test_a_failed_attempts_span_ends_when_it_failed_not_after_the_backoff(upstream, app_client):
    calls = []

    async def fail_once(request):
        from aiohttp import web

        calls.append(1)
        if len(calls) == 1:  # retry-after over max_backoff_ms: the backoff is exactly 0.4 s, not jittered
            return web.json_response({"error": {"message": "busy"}}, status=503, headers={"retry-after": "1"})
        return web.json_response(completion(usage=USAGE))

    upstream.post("/chat/completions").handler(fail_once)
    async with OtlpReceiver() as receiver:
        client = await app_client(config_text("resilience: {retries: 1, backoff_ms: 400, max_backoff_ms: 400}")
                                  + f'telemetry: {{otlp_endpoint: "{receiver.url}"}}\n')
        try:
            r = await client.post("/v1/chat/completions", json=chat("priced"), headers=AUTH)
            assert r.status_code == 200 and r.headers["x-switchyard-attempts"] == "2"
            await flush(client.app)
        finally:
            await client.aclose()
    first, second = sorted((s for _, s in receiver.spans if s.name == "chat priced-model"),
                           key=lambda s: s.start_time_unix_nano)
    assert attrs(first)["error.type"] == "status_5xx" and "error.type" not in attrs(second)
    assert first.end_time_unix_nano <= second.start_time_unix_nano  # the backoff belongs to neither:
    # the whole 0.4 s wait lies between the spans (a span that held it would end as the next began)
    assert second.start_time_unix_nano - first.end_time_unix_nano >= 0.3e9


def test_plain_number_metrics_expose_exactly_what_prometheus_client_would():
    """The per-request series are plain numbers in one process: fed the same requests,
    their exposition must equal prometheus-client's own, line for line."""
    import random as rand

    from prometheus_client.exposition import generate_latest

    from proxy.pipeline.record import RequestRecord
    from proxy.resilience import Attempt
    from proxy.routing import Target
    from proxy.telemetry.metrics import Metrics

    local, reference = Metrics(local=True), Metrics(local=False)
    draw = rand.Random(7)
    for n in range(300):
        record = RequestRecord(f"r{n}", "chat")
        record.team, record.route, record.provider, record.model = "t", "fast", "mock", "m"
        record.known_model = n % 3 != 0
        record.status = draw.choice([200, 200, 429, 502])
        record.cache = draw.choice(["hit", "miss", "bypass"])
        record.stream = n % 2 == 0
        record.usage = {"prompt_tokens": n, "completion_tokens": 2 * n, "total_tokens": 3 * n}
        record.cost_usd = n / 1e6
        record.experiment, record.variant = ("e", "b") if n % 5 == 0 else (None, None)
        record.error_kind = "timeout" if record.status == 502 else None
        record.attempts = [Attempt(Target("mock", "m"), "ok")]
        record.known_targets = frozenset({"mock/m"})
        record.started -= draw.choice([0.0001, 0.003, 0.02, 0.5, 1.0, 7.0, 200.0])
        record.upstream_started = record.started + 0.0001
        record.upstream_answered = record.upstream_started + 0.001
        record.first_token_at = record.started + 0.01 if record.stream else None
        record.finished = record.upstream_answered + 0.0005
        for metrics in (local, reference):
            metrics.started()
            metrics.finished(record)
    local.started()
    reference.started()
    assert generate_latest(local.registry).decode().splitlines() == \
        generate_latest(reference.registry).decode().splitlines()


def _request(n: int, draw, **fields):
    from proxy.pipeline.record import RequestRecord

    record = RequestRecord(f"r{n}", "chat")
    record.team, record.route = draw.choice(["a", "b", None]), draw.choice(["fast", "cheap"])
    record.provider, record.model = "mock", draw.choice(["m1", "m2", "unknown-model"])
    record.known_model = record.model != "unknown-model"
    record.status = draw.choice([200, 200, 429, 502])
    record.cache = draw.choice(["hit", "miss", "bypass", "invalidated"])
    record.usage = draw.choice([None, {"prompt_tokens": n, "completion_tokens": 0}, {"prompt_tokens": 3, "completion_tokens": n}])
    record.cost_usd = draw.choice([None, 0.0, n / 1e6])
    record.upstream_started = record.started
    record.upstream_answered = record.started + 0.001
    record.finished = record.started + 0.002
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def test_per_request_series_found_once_per_kind_of_request_count_as_if_looked_up_each_time(monkeypatch):
    """finished() remembers the series of each kind of request (team, route, target, status,
    cache result); remembering only a few at a time must count exactly the same."""
    import random as rand

    from prometheus_client.exposition import generate_latest

    from proxy.telemetry import metrics as metrics_module

    def exposition(bound: int) -> list[str]:
        monkeypatch.setattr(metrics_module, "MAX_KINDS", bound)
        metrics, draw = metrics_module.Metrics(local=True), rand.Random(11)
        for n in range(500):
            metrics.started()
            metrics.finished(_request(n, draw))
        return generate_latest(metrics.registry).decode().splitlines()

    assert exposition(2) == exposition(4096)


def test_a_cache_hit_makes_no_upstream_series_and_a_miss_of_the_same_kind_of_request_does():
    import random as rand

    from prometheus_client.exposition import generate_latest

    from proxy.telemetry.metrics import Metrics

    metrics, draw = Metrics(local=True), rand.Random(1)
    common = {"team": "a", "route": "fast", "model": "m1", "known_model": True, "status": 200,
              "usage": {"prompt_tokens": 5, "completion_tokens": 7}, "cost_usd": 0.5}
    metrics.finished(_request(1, draw, cache="hit", **common))
    text = generate_latest(metrics.registry).decode()
    assert 'llm_requests_total{cache="hit",model="m1",provider="mock",route="fast",status="200",team="a"} 1.0' in text
    assert "llm_request_duration_seconds_count{" not in text and "llm_tokens_total{" not in text
    assert "llm_cost_usd_total{" not in text
    metrics.finished(_request(2, draw, cache="miss", **common))
    metrics.finished(_request(3, draw, cache="miss", **common))
    text = generate_latest(metrics.registry).decode()
    assert 'llm_request_duration_seconds_count{model="m1",provider="mock"} 2.0' in text
    assert 'llm_tokens_total{model="m1",provider="mock",team="a",type="input"} 10.0' in text
    assert 'llm_tokens_total{model="m1",provider="mock",team="a",type="output"} 14.0' in text
    assert 'llm_cost_usd_total{model="m1",provider="mock",team="a"} 1.0' in text
