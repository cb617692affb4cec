"""Retries, fallbacks, circuit breakers and balancing: the breaker and backoff as pure
parts, then the proxy in process against real local upstreams that fail on cue."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from proxy.config import CircuitConfig, ResilienceConfig
from proxy.resilience import CLOSED, HALF_OPEN, OPEN, Health, backoff_s
from proxy.routing import Decision, Target
from support import AppClient, FakeUpstream, chat_body, chunk_events, completion, dead_port

KEY = "sk-resilience-1"
ADMIN = "admin-resilience-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


# ---------------------------------------------------------------- the breaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_after_cooldown():
    clock = Clock()
    health = Health(clock)
    changes: list[tuple[str, str]] = []
    health.on_change = lambda t, s: changes.append((t, s))
    circuit = CircuitConfig(failures=3, cooldown_s=10)
    for _ in range(2):
        assert health.admit("p/m", circuit)
        health.started("p/m")
        health.failed("p/m", circuit)
    assert health.state("p/m", circuit) == CLOSED
    health.started("p/m")
    health.succeeded("p/m", 0.1, circuit)  # a success resets the count
    for _ in range(3):
        health.started("p/m")
        health.failed("p/m", circuit)
    assert health.state("p/m", circuit) == OPEN and not health.admit("p/m", circuit)
    assert health.reopens_in("p/m", circuit) == 10
    clock.now = 10
    assert health.state("p/m", circuit) == HALF_OPEN
    assert health.admit("p/m", circuit)  # the one probe
    assert not health.admit("p/m", circuit)  # no second one while it is out
    health.started("p/m")
    health.failed("p/m", circuit)  # probe failed: open again, for a fresh cool-down
    assert health.state("p/m", circuit) == OPEN
    clock.now = 20
    assert health.admit("p/m", circuit)
    health.started("p/m")
    health.succeeded("p/m", 0.1, circuit)
    assert health.state("p/m", circuit) == CLOSED
    assert changes == [("p/m", OPEN), ("p/m", HALF_OPEN), ("p/m", OPEN), ("p/m", HALF_OPEN), ("p/m", CLOSED)]


def test_breaker_opens_on_error_rate_over_the_window():
    clock = Clock()
    health = Health(clock)
    circuit = CircuitConfig(failures=100, error_rate=0.5, window_s=60, min_requests=10)
    for i in range(10):
        clock.now = i
        health.started("t")
        if i % 3 == 1:
            health.succeeded("t", 0.1, circuit)
        else:
            health.failed("t", circuit)
    assert health.state("t", circuit) == OPEN  # 7 of 10 failed, never 100 in a row


def test_unjudged_attempt_releases_a_probe():
    clock = Clock()
    health = Health(clock)
    circuit = CircuitConfig(failures=1, cooldown_s=1)
    health.started("t")
    health.failed("t", circuit)
    clock.now = 1
    assert health.admit("t", circuit)
    health.started("t")
    health.finished_unjudged("t")  # the client left: say nothing, allow another probe
    assert health.admit("t", circuit)


@pytest.mark.parametrize(
    "attempt, base, cap, retry_after, low, high",
    [
        (0, 200, 5000, None, 0.0, 0.2),
        (1, 200, 5000, None, 0.0, 0.4),
        (5, 200, 5000, None, 0.0, 5.0),
        (0, 200, 5000, "2", 2.0, 2.0),
        (0, 200, 1000, "30", 1.0, 1.0),  # retry-after never beyond max_backoff
        (0, 200, 5000, "Wed, 21 Oct 2015 07:28:00 GMT", 0.0, 0.2),
    ],
)
def test_backoff_is_jittered_and_honours_retry_after(attempt, base, cap, retry_after, low, high):
    settings = ResilienceConfig(backoff_ms=base, max_backoff_ms=cap)
    rng = random.Random(7)
    for _ in range(50):
        assert low <= backoff_s(attempt, settings, retry_after, rng) <= high


def decision(balance: str) -> Decision:
    a, b, c = Target("p", "a"), Target("p", "b"), Target("q", "c")
    return Decision("m", "r", 0, a, (b, c), ((a, 1.0), (b, 1.0)), balance)


def test_balancing_orders():
    health = Health()
    circuit = CircuitConfig()
    assert [str(t) for t in health.order(decision("weighted"), 0.5)] == ["p/a", "p/b", "q/c"]
    health.started("p/a")
    assert [str(t) for t in health.order(decision("least_inflight"), 0.5)] == ["p/b", "p/a", "q/c"]
    health.succeeded("p/a", 0.5, circuit)
    health.started("p/b")
    health.succeeded("p/b", 0.1, circuit)
    assert [str(t) for t in health.order(decision("lowest_latency"), 0.5)][0] == "p/b"


# ---------------------------------------------------------------- the proxy


def config(primary: str, backup: str, extra: str = "", route_extra: str = "") -> str:
    return f"""
server: {{admin_keys: ["{ADMIN}"]}}
ledger: {{path: off}}
cache: {{backend: memory}}
resilience:
  retries: 2
  backoff_ms: 10
  max_backoff_ms: 1500
  timeout_s: 5
  circuit: {{failures: 3, cooldown_s: 1}}
{extra}
providers:
  primary: {{type: openai, base_url: "{primary}", api_key: sk-1, timeout_s: 0.5, connect_timeout_s: 0.5}}
  backup: {{type: openai, base_url: "{backup}", api_key: sk-2, timeout_s: 0.5}}
teams:
  t: {{keys: ["{KEY}"]}}
routes:
  - {{name: main, match: {{model: main}}, to: primary/m1, fallbacks: [backup/m2]{route_extra}}}
  - {{name: solo, match: {{model: solo}}, to: primary/m1}}
  - {{name: pair, match: {{model: pair}}, to: [primary/m1, backup/m2], balance: least_inflight}}
"""


@pytest.fixture
async def ups() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream]]:
    async with FakeUpstream() as primary, FakeUpstream() as backup:
        primary.post("/chat/completions").respond(json=completion("from primary"))
        backup.post("/chat/completions").respond(json=completion("from backup"))
        yield primary, backup


@pytest.fixture
def clock() -> Clock:
    """The circuit breakers' clock in the proxy: cool-downs pass when a test moves it on."""
    return Clock()


@pytest.fixture
async def proxy(ups, app_client, clock) -> AppClient:
    primary, backup = ups
    client = await app_client(config(primary.base_url, backup.base_url))
    # Health takes a clock, but create_app builds its own: this one's breakers read the test's
    client.runtime.health._clock = clock
    return client


def fail_then(times: int, status: int, answer: dict, headers: dict | None = None):
    """A handler failing `times` times with `status`, then answering."""
    seen = {"n": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen["n"] += 1
        if seen["n"] <= times:
            return web.json_response({"error": {"message": f"failure {seen['n']}"}}, status=status,
                                     headers=headers or {})
        return web.json_response(answer)

    return handler


async def test_500_then_success_is_retried_on_the_same_target(proxy, ups):
    primary, backup = ups
    primary.post("/chat/completions").handler(fail_then(2, 500, completion("third time")))
    r = await proxy.post("/v1/chat/completions", json=chat_body("main", "retry-500"), headers=AUTH)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "third time"
    assert r.headers["x-switchyard-attempts"] == "3"
    assert r.headers["x-switchyard-provider"] == "primary"
    assert backup.post("/chat/completions").call_count == 0


async def test_429_retry_after_is_honoured(proxy, ups):
    primary, _ = ups
    primary.post("/chat/completions").handler(fail_then(1, 429, completion("after waiting"), {"retry-after": "1"}))
    started = asyncio.get_running_loop().time()
    r = await proxy.post("/v1/chat/completions", json=chat_body("main", "retry-429"), headers=AUTH)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "after waiting"
    assert asyncio.get_running_loop().time() - started >= 1.0


async def test_exhausted_retries_fall_back_and_headers_name_the_answering_target(proxy, ups):
    primary, backup = ups
    primary.post("/chat/completions").respond(503, json={"error": {"message": "overloaded"}})
    r = await proxy.post("/v1/chat/completions", json=chat_body("main", "fallback"), headers=AUTH)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "from backup"
    assert r.headers["x-switchyard-provider"] == "backup" and r.headers["x-switchyard-model"] == "m2"
    assert r.headers["x-switchyard-attempts"] == "4"
    assert primary.post("/chat/completions").call_count == 3
    assert backup.post("/chat/completions").calls.last.request.json()["model"] == "m2"
    metrics = (await proxy.get("/metrics")).text
    assert 'llm_upstream_attempts_total{model="m1",outcome="retry",provider="primary"} 3.0' in metrics
    assert 'llm_upstream_attempts_total{model="m2",outcome="ok",provider="backup"} 1.0' in metrics


async def test_fallback_answers_are_not_cached_as_the_primarys(proxy, ups, clock):
    primary, _ = ups
    primary.post("/chat/completions").respond(500, json={"error": {"message": "down"}})
    await proxy.post("/v1/chat/completions", json=chat_body("main", "cache-fb"), headers=AUTH)
    primary.post("/chat/completions").respond(json=completion("primary is back"))
    clock.now += 2.1  # past the circuit's cool-down: the primary gets a probe
    r = await proxy.post("/v1/chat/completions", json=chat_body("main", "cache-fb"), headers=AUTH)
    assert r.headers["x-switchyard-cache"] == "miss"
    assert r.json()["choices"][0]["message"]["content"] == "primary is back"


@pytest.mark.parametrize(
    "fault",
    [
        lambda up: up.post("/chat/completions").fault("hang", seconds=3),  # read timeout, before headers
        lambda up: up.post("/chat/completions").fault("close"),  # connection dropped, no answer
    ],
    ids=["hang", "close"],
)
async def test_transport_failures_retry_then_fall_back(proxy, ups, fault):
    primary, backup = ups
    fault(primary)
    r = await proxy.post("/v1/chat/completions", json=chat_body("main", "transport"), headers=AUTH)
    assert r.status_code == 200 and r.headers["x-switchyard-provider"] == "backup"


async def test_connection_refused_falls_back(ups, app_client):
    _, backup = ups
    dead = f"http://127.0.0.1:{dead_port()}/v1"
    client = await app_client(config(dead, backup.base_url))
    r = await client.post("/v1/chat/completions", json=chat_body("main"), headers=AUTH)
    assert r.status_code == 200 and r.headers["x-switchyard-provider"] == "backup"


async def test_4xx_is_not_retried(proxy, ups):
    primary, backup = ups
    primary.post("/chat/completions").respond(400, json={"error": {"message": "bad request"}})
    r = await proxy.post("/v1/chat/completions", json=chat_body("main", "4xx"), headers=AUTH)
    assert r.status_code == 400 and primary.post("/chat/completions").call_count == 1
    assert backup.post("/chat/completions").call_count == 0


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [(b"{not json", "application/json"), (b"<html>Sign in to the hotel Wi-Fi</html>", "text/html")],
)
async def test_an_answer_that_breaks_the_contract_is_retried_then_falls_back(proxy, ups, raw, content_type):
    primary, backup = ups
    route = primary.post("/chat/completions").respond(200, content=raw, headers={"content-type": content_type})
    r = await proxy.post("/v1/chat/completions", json=chat_body("main", "garbage"), headers=AUTH)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "from backup"
    assert r.headers["x-switchyard-provider"] == "backup" and r.headers["x-switchyard-attempts"] == "4"
    assert route.call_count == 3  # 1 + retries: a bad gateway in all but the status code
    m = (await proxy.get("/metrics")).text
    assert 'llm_upstream_attempts_total{model="m1",outcome="retry",provider="primary"} 3.0' in m


async def test_an_invalid_answer_with_no_fallback_left_is_a_502(ups, app_client):
    primary, backup = ups
    primary.post("/chat/completions").respond(200, content=b"<html>", headers={"content-type": "text/html"})
    backup.post("/chat/completions").respond(200, content=b"[]", headers={"content-type": "application/json"})
    client = await app_client(config(primary.base_url, backup.base_url))
    r = await client.post("/v1/chat/completions", json=chat_body("main", "garbage", stream=True), headers=AUTH)
    assert r.status_code == 502 and r.json()["error"]["code"] == "invalid_response"
    assert "provider backup" in r.json()["error"]["message"]
    assert 'kind="invalid_response"' in (await client.get("/metrics")).text


async def test_stream_cut_mid_way_is_not_retried_and_ends_cleanly(proxy, ups):
    primary, backup = ups
    primary.post("/chat/completions").stream(chunk_events(["a", "b", "c"]), cut_after=2)
    r = await proxy.post("/v1/chat/completions", json=chat_body("main", "cut", stream=True), headers=AUTH)
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert '"upstream_error"' in events[-1]
    assert primary.post("/chat/completions").call_count == 1 and backup.post("/chat/completions").call_count == 0
    primary.post("/chat/completions").respond(json=completion("whole"))
    again = await proxy.post("/v1/chat/completions", json=chat_body("main", "cut"), headers=AUTH)
    assert again.headers["x-switchyard-cache"] == "miss"  # the broken stream was not stored


async def test_truncated_sse_without_done_is_not_stored(proxy, ups):
    primary, _ = ups
    primary.post("/chat/completions").stream(chunk_events(["a", "b"])[:-2])  # no finish, no [DONE]
    r = await proxy.post("/v1/chat/completions", json=chat_body("main", "trunc", stream=True), headers=AUTH)
    assert r.status_code == 200
    primary.post("/chat/completions").respond(json=completion("whole"))
    again = await proxy.post("/v1/chat/completions", json=chat_body("main", "trunc"), headers=AUTH)
    assert again.headers["x-switchyard-cache"] == "miss"


async def test_every_target_down_is_a_fast_503_once_circuits_open(proxy, ups):
    primary, backup = ups
    for up in ups:
        up.post("/chat/completions").respond(500, json={"error": {"message": "down"}})
    first = await proxy.post("/v1/chat/completions", json=chat_body("main", "down"), headers=AUTH)
    assert first.status_code == 502  # both tried, three times each: both circuits now open
    reached = primary.post("/chat/completions").call_count, backup.post("/chat/completions").call_count
    second = await asyncio.wait_for(  # the wait_for only guards against a hang
        proxy.post("/v1/chat/completions", json=chat_body("main", "down"), headers=AUTH), 5)
    assert second.status_code == 503 and second.json()["error"]["code"] == "no_healthy_upstream"
    # fast: refused without trying either upstream, so nothing waited on them
    assert (primary.post("/chat/completions").call_count, backup.post("/chat/completions").call_count) == reached
    assert primary.post("/chat/completions").call_count == 3
    report = (await proxy.get("/admin/providers", headers={"Authorization": f"Bearer {ADMIN}"})).json()
    states = {t["target"]: t["state"] for t in report["targets"]}
    assert states == {"primary/m1": "open", "backup/m2": "open"}
    metrics = (await proxy.get("/metrics")).text
    assert 'llm_circuit_state{model="m1",provider="primary"} 2.0' in metrics


async def test_breaker_cycle_open_half_open_closed(proxy, ups, clock):
    primary, _ = ups
    primary.post("/chat/completions").respond(500, json={"error": {"message": "down"}})
    await proxy.post("/v1/chat/completions", json=chat_body("solo", "cycle"), headers=AUTH)  # 3 failures: open
    r = await proxy.post("/v1/chat/completions", json=chat_body("solo", "cycle"), headers=AUTH)
    assert r.status_code == 503
    primary.post("/chat/completions").respond(json=completion("recovered"))
    clock.now += 1.1  # past the circuit's cool-down
    r = await proxy.post("/v1/chat/completions", json=chat_body("solo", "cycle2"), headers=AUTH)
    assert r.status_code == 200 and r.headers["x-switchyard-attempts"] == "1"
    report = (await proxy.get("/admin/providers", headers={"Authorization": f"Bearer {ADMIN}"})).json()
    assert {t["target"]: t["state"] for t in report["targets"]}["primary/m1"] == "closed"


async def test_concurrent_requests_during_a_breaker_trip_all_get_answers(proxy, ups):
    primary, backup = ups
    primary.post("/chat/completions").respond(500, json={"error": {"message": "down"}})
    results = await asyncio.gather(*(
        proxy.post("/v1/chat/completions", json=chat_body("main", f"conc{i}"), headers=AUTH) for i in range(30)
    ))
    assert all(r.status_code == 200 for r in results)
    assert {r.headers["x-switchyard-provider"] for r in results} == {"backup"}
    # once open, the primary is skipped: far fewer than 30 x 3 attempts reached it
    assert primary.post("/chat/completions").call_count < 30 * 3


async def test_deadline_bounds_all_attempts(ups, app_client):
    primary, backup = ups
    for up in ups:
        up.post("/chat/completions").fault("hang", seconds=5)
    text = config(primary.base_url, backup.base_url).replace("timeout_s: 5\n", "timeout_s: 1.2\n")
    client = await app_client(text)
    r = await asyncio.wait_for(  # the wait_for only guards against a hang
        client.post("/v1/chat/completions", json=chat_body("main", "deadline"), headers=AUTH), 10)
    assert r.status_code == 504
    # each attempt waits 0.5 s for its answer, so a fourth can never start within the 1.2 s
    # deadline: the deadline ended the request, not the six attempts (3 + 3) it would otherwise make
    assert primary.post("/chat/completions").call_count + backup.post("/chat/completions").call_count <= 3


async def test_the_deadline_ends_an_attempt_whose_read_timeout_is_longer(ups, app_client):
    # the HTTP adapters end their waits on their own timers at the deadline: no per-attempt timer
    primary, backup = ups
    primary.post("/chat/completions").fault("hang", seconds=5)
    text = (config(primary.base_url, backup.base_url).replace("timeout_s: 5\n", "timeout_s: 0.4\n")
            .replace("timeout_s: 0.5, connect", "timeout_s: 30, connect"))
    client = await app_client(text)
    started = time.monotonic()
    r = await asyncio.wait_for(client.post("/v1/chat/completions", json=chat_body("solo", "late"), headers=AUTH), 10)
    assert r.status_code == 504 and time.monotonic() - started < 3
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert "deadline (resilience.timeout_s)" in r.json()["error"]["message"]
    assert primary.post("/chat/completions").call_count == 1  # the deadline is not retried


async def test_the_deadline_ends_an_attempt_on_an_adapter_without_timers(app_client):
    # the mock provider keeps no deadline itself: the attempt is cut off around it
    text = f"""
ledger: {{path: off}}
resilience: {{timeout_s: 0.3, retries: 2}}
providers:
  slow: {{type: mock, latency_ms: 5000}}
teams:
  t: {{keys: ["{KEY}"]}}
routes:
  - {{name: slow, match: {{model: "*"}}, to: slow/m}}
"""
    client = await app_client(text)
    started = time.monotonic()
    r = await asyncio.wait_for(client.post("/v1/chat/completions", json=chat_body("m", "late"), headers=AUTH), 10)
    assert r.status_code == 504 and time.monotonic() - started < 3
    assert "deadline (resilience.timeout_s)" in r.json()["error"]["message"]
    assert r.headers["x-switchyard-attempts"] == "1"


async def test_equivalent_targets_are_balanced_by_inflight(proxy, ups):
    primary, backup = ups

    async def slow(request: web.Request) -> web.StreamResponse:
        await request.read()
        await asyncio.sleep(0.3)
        return web.json_response(completion("slow primary"))

    primary.post("/chat/completions").handler(slow)
    results = await asyncio.gather(*(
        proxy.post("/v1/chat/completions", json=chat_body("pair", f"bal{i}"), headers=AUTH) for i in range(6)
    ))
    providers = [r.headers["x-switchyard-provider"] for r in results]
    assert "backup" in providers and "primary" in providers


REFUSING = f"""
ledger: {{path: off}}
resilience: {{retries: 2, backoff_ms: 1, circuit: {{failures: 2, cooldown_s: 60}}}}
providers:
  claude: {{type: anthropic, base_url: "http://127.0.0.1:9", api_key: sk-a}}
  mock: {{type: mock}}
teams:
  t: {{keys: ["{KEY}"]}}
routes:
  - {{name: embed, match: {{model: embed}}, to: claude/x, fallbacks: [mock/text-embedding-3-small]}}
  - {{name: only, match: {{model: only}}, to: claude/x}}
"""


async def test_a_target_that_cannot_take_the_request_passes_it_on_and_keeps_its_circuit(app_client):
    """Embeddings cannot go to Anthropic: the fallback answers, nothing is sent to Anthropic,
    and however often it happens the client's request never counts against its circuit."""
    client = await app_client(REFUSING)
    for _ in range(4):
        r = await client.post("/v1/embeddings", json={"model": "embed", "input": "hi"}, headers=AUTH)
        assert r.status_code == 200 and r.headers["x-switchyard-provider"] == "mock"
        assert r.headers["x-switchyard-attempts"] == "1"
        refused = await client.post("/v1/embeddings", json={"model": "only", "input": "hi"}, headers=AUTH)
        assert refused.status_code == 400 and "provider claude cannot serve embeddings" in refused.json()["error"][
            "message"]
        assert refused.headers["x-switchyard-attempts"] == "0"
    circuit = client.runtime.active().snapshot.config.resilience.circuit
    claude = [row for row in client.runtime.health.report(circuit) if row["target"] == "claude/x"]
    assert all(row["state"] == "closed" and row["consecutive_failures"] == 0 for row in claude)
