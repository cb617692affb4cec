"""The live view (proxy/live.py): the per-second aggregator and its snapshots (pure, table-driven),
the /admin/live WebSocket in process, then served for real (one worker and several), and
/dashboard in a real browser that survives a server restart."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from proxy import live
from proxy.app import create_app
from proxy.live import LiveStats, ProcessState, build_snapshot, first_message_key, percentile
from proxy.pipeline.record import RequestRecord
from support import LoadThreads, ServerProcess, chat_body, eventually

ADMIN_KEY = "adm-live-key"
TEAM_KEYS = {"search": "sk-live-search", "research": "sk-live-research"}
CHROMIUM = Path("/usr/bin/chromium")

# ---------------------------------------------------------------- the aggregator, pure

T0 = 1_000_000  # a wall-clock second the fake clock starts at
PROCESS = ProcessState(at=0.0, pid=4242, started_at=T0 - 100.0, multiprocess=False, generation=3, digest="abc",
                       reload_error=None, inflight=0, upstream_inflight={"mock": 0}, circuits=[])


def rec(ms: float, *, ttft: float | None = None, status: int = 200, kind: str | None = None,
        cache: str = "bypass", team: str | None = None, cost: float | None = None) -> RequestRecord:
    r = RequestRecord("req", "chat")
    r.started, r.finished = 50.0, 50.0 + ms / 1000
    r.first_token_at = None if ttft is None else 50.0 + ttft / 1000
    r.status, r.error_kind, r.cache, r.team, r.cost_usd = status, kind, cache, team, cost
    return r


def snapshot_after(records: list[tuple[float, RequestRecord]], now: float, window_s: int = 60) -> dict[str, Any]:
    """Each record finished at its offset (seconds after T0); the snapshot built at T0 + now."""
    clock = [float(T0)]
    stats = LiveStats(clock=lambda: clock[0], window_s=window_s)
    for at, record in records:
        clock[0] = T0 + at
        stats.started()
        stats.add(record)
    return build_snapshot(stats.seconds(T0 + now), replace(PROCESS, at=T0 + now))


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 0.5, None),
    ([7.0], 0.5, 7.0),
    ([7.0], 0.95, 7.0),
    ([1.0, 2.0], 0.5, 1.0),  # nearest rank: the smallest value half the values are at or below
    ([1.0, 2.0], 0.95, 2.0),
    ([float(i) for i in range(1, 101)], 0.5, 50.0),
    ([float(i) for i in range(1, 101)], 0.95, 95.0),
    ([float(i) for i in range(1, 11)], 0.95, 10.0),
])
def test_percentile_is_nearest_rank(values, q, expected):
    assert percentile(values, q) == expected


TEN_TO_HUNDRED = [(0.5, rec(ms)) for ms in range(10, 101, 10)]  # 10 requests in second 0: 10..100 ms

SNAPSHOT_CASES = [
    ("latencies of the last complete second", TEN_TO_HUNDRED, 1.2,
     {"last_second": {"at": T0, "requests_per_s": 10, "latency_ms": {"p50": 50.0, "p95": 100.0},
                      "ttft_ms": {"p50": None, "p95": None}}}),
    ("time to first token, streams only", [(0.1, rec(300, ttft=20)), (0.2, rec(500, ttft=40)), (0.3, rec(90))], 1.0,
     {"last_second": {"at": T0, "requests_per_s": 3, "latency_ms": {"p50": 300.0, "p95": 500.0},
                      "ttft_ms": {"p50": 20.0, "p95": 40.0}}}),
    ("the second still running is not shown", TEN_TO_HUNDRED, 0.9,
     {"last_second": {"at": T0 - 1, "requests_per_s": 0, "latency_ms": {"p50": None, "p95": None},
                      "ttft_ms": {"p50": None, "p95": None}}}),
    ("a quiet second after a busy one", TEN_TO_HUNDRED, 2.5,
     {"last_second": {"at": T0 + 1, "requests_per_s": 0, "latency_ms": {"p50": None, "p95": None},
                      "ttft_ms": {"p50": None, "p95": None}}}),
    ("errors by kind: the provider's kind, else the status", [
        (0.1, rec(5, status=401)), (0.2, rec(5, status=401)), (0.3, rec(5, status=404)),
        (1.1, rec(900, status=504, kind="timeout")), (1.2, rec(5, status=429, kind="status_429")),
        (1.3, rec(5, status=200, kind="client_disconnected")), (1.4, rec(5, status=200))], 2.0,
     {"window": {"requests": 7, "errors": {"status_401": 2, "client_disconnected": 1, "status_404": 1,
                                           "status_429": 1, "timeout": 1},
                 "cache": {"hits": 0, "misses": 0, "hit_ratio": None}, "spend_usd_per_min": {}}}),
    ("cache hit ratio leaves bypasses out", [
        (0.1, rec(1, cache="hit")), (0.2, rec(1, cache="hit")), (0.3, rec(1, cache="hit")),
        (1.1, rec(9, cache="miss")), (1.2, rec(9, cache="bypass"))], 2.0,
     {"window": {"requests": 5, "errors": {}, "cache": {"hits": 3, "misses": 1, "hit_ratio": 0.75},
                 "spend_usd_per_min": {}}}),
    ("spend per team over the minute", [
        (0.1, rec(9, team="search", cost=0.25)), (30.0, rec(9, team="search", cost=0.5)),
        (40.0, rec(9, team="research", cost=0.125)), (41.0, rec(9, team="research", cost=0.0))], 59.0,
     {"window": {"requests": 4, "errors": {}, "cache": {"hits": 0, "misses": 0, "hit_ratio": None},
                 "spend_usd_per_min": {"research": 0.125, "search": 0.75}}}),
    ("the window rolls: a second 61 s old is gone", [
        (0.1, rec(9, team="search", cost=1.0, status=500, kind="status_5xx")), (60.5, rec(9, team="research", cost=2.0))],
     61.0,
     {"window": {"requests": 1, "errors": {}, "cache": {"hits": 0, "misses": 0, "hit_ratio": None},
                 "spend_usd_per_min": {"research": 2.0}}}),
    ("a ring slot reused a minute later holds only its new second", [
        (0.5, rec(100)), (0.6, rec(100)), (60.5, rec(10))], 61.0,
     {"last_second": {"at": T0 + 60, "requests_per_s": 1, "latency_ms": {"p50": 10.0, "p95": 10.0},
                      "ttft_ms": {"p50": None, "p95": None}}}),
]


@pytest.mark.parametrize(("records", "now", "expected"), [c[1:] for c in SNAPSHOT_CASES],
                         ids=[c[0] for c in SNAPSHOT_CASES])
def test_known_records_give_a_known_snapshot(records, now, expected):
    snapshot = snapshot_after(records, now)
    for key, value in expected.items():
        assert snapshot[key] == value, key


def test_history_is_the_window_oldest_first_with_quiet_seconds_as_gaps():
    snapshot = snapshot_after([(57.5, rec(20, ttft=5)), (58.5, rec(40, status=502, kind="connection"))], 60.0,
                              window_s=5)
    history = snapshot["history"]
    assert snapshot["window_s"] == 5
    assert history["at"] == [T0 + 55, T0 + 56, T0 + 57, T0 + 58, T0 + 59]
    assert history["requests_per_s"] == [0, 0, 1, 1, 0]
    assert history["errors_per_s"] == [0, 0, 0, 1, 0]
    assert history["latency_p50_ms"] == [None, None, 20.0, 40.0, None]
    assert history["ttft_p95_ms"] == [None, None, 5.0, None, None]
    assert snapshot["window"]["spend_usd_per_min"] == {}


def test_the_snapshot_names_the_process_and_its_state():
    circuits = [{"target": "mock/x", "state": "open", "consecutive_failures": 5, "reopens_in_s": 12.5, "inflight": 0}]
    process = replace(PROCESS, at=T0 + 0.25, multiprocess=True, inflight=3, upstream_inflight={"mock": 2},
                      circuits=circuits, reload_error="routes[0]: bad")
    snapshot = build_snapshot([], process)
    assert snapshot["type"] == "snapshot"
    assert snapshot["worker"] == {"pid": 4242, "started_at": T0 - 100.0, "multiprocess": True}
    assert snapshot["config"] == {"generation": 3, "digest": "abc", "reload_error": "routes[0]: bad"}
    assert snapshot["inflight"] == {"requests": 3, "upstream_by_provider": {"mock": 2}}
    assert snapshot["circuits"] == circuits
    orjson.dumps(snapshot)  # all of it is JSON


def test_in_flight_counts_begun_and_not_ended():
    stats = LiveStats(clock=lambda: float(T0))
    for _ in range(3):
        stats.started()
    stats.add(rec(5))
    assert stats.inflight == 2


def test_a_closed_second_is_summarized_once():
    clock = [T0 + 0.5]
    stats = LiveStats(clock=lambda: clock[0], window_s=3)
    stats.add(rec(10))
    first = stats.seconds(T0 + 1.0)[-1]
    assert stats.seconds(T0 + 1.5)[-1] is first  # the same object: not sorted again
    clock[0] = T0 + 1.2
    stats.add(rec(30))  # lands in the running second, not in the summarized one
    assert stats.seconds(T0 + 2.0)[-2] is first


@pytest.mark.parametrize(("text", "key"), [
    ('{"admin_key": "k-1"}', "k-1"),
    ('{"admin_key": "  k-1 "}', "k-1"),
    ('{"admin_key": ""}', None),
    ('{"admin_key": 5}', None),
    ('{"key": "k-1"}', None),
    ('["k-1"]', None),
    ("k-1", None),
    ("", None),
])
def test_the_first_message_carries_the_key(text, key):
    assert first_message_key(text) == key


# ---------------------------------------------------------------- the WebSocket and the page, in process

CONFIG = f"""
ledger: {{path: off}}
server: {{admin_keys: ["{ADMIN_KEY}"], keepalive_timeout_s: 1, header_timeout_s: 1}}
cache: {{backend: memory}}
providers: {{mock: {{type: mock, latency_ms: 15, chunk_interval_ms: 2}}}}
teams:
  search: {{keys: ["{TEAM_KEYS["search"]}"]}}
  research: {{keys: ["{TEAM_KEYS["research"]}"]}}
routes: [{{name: fast, match: {{model: fast}}, to: mock/gpt-4o-mini}}]
"""


@pytest.fixture
def app_config(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def client(app_config: Path) -> Iterator[TestClient]:
    """The app in process (without its lifespan: that freezes the collector for the process's life)."""
    app = create_app(str(app_config), watch=False)
    yield TestClient(app)
    asyncio.run(app.state.runtime.aclose())


def closed_with(session: Any) -> tuple[int, str]:
    with pytest.raises(WebSocketDisconnect) as closed:
        session.receive_text()
    return closed.value.code, closed.value.reason


def test_the_key_as_the_first_message_gets_snapshots(client):
    with client.websocket_connect("/admin/live") as ws:
        ws.send_text(orjson.dumps({"admin_key": ADMIN_KEY}).decode())
        snapshot = ws.receive_json()
    assert snapshot["type"] == "snapshot"
    assert snapshot["window_s"] == live.WINDOW_S and len(snapshot["history"]["at"]) == live.WINDOW_S
    assert snapshot["config"]["generation"] == 1


def test_the_key_in_the_authorization_header_gets_snapshots(client):
    with client.websocket_connect("/admin/live", headers={"authorization": f"Bearer {ADMIN_KEY}"}) as ws:
        assert ws.receive_json()["type"] == "snapshot"


@pytest.mark.parametrize(("headers", "message", "reason"), [
    ({}, '{"admin_key": "wrong"}', "an admin key is required"),
    ({}, "not json", "an admin key is required"),
    ({}, '{"admin_key": "sk-live-search"}', "an admin key is required"),  # a team key is not an admin key
    ({"authorization": "Bearer wrong"}, None, "an admin key is required"),
])
def test_a_bad_key_is_closed_with_1008(client, headers, message, reason):
    with client.websocket_connect("/admin/live", headers=headers) as ws:
        if message is not None:
            ws.send_text(message)
        code, said = closed_with(ws)
    assert code == 1008
    assert said.startswith(reason), said


def test_no_key_in_time_is_closed_with_1008(client, monkeypatch):
    monkeypatch.setattr(live, "AUTH_TIMEOUT_S", 0.05)
    with client.websocket_connect("/admin/live") as ws:
        assert closed_with(ws) == (1008, "no admin key within 0.05 s")


def test_without_admin_keys_the_live_view_is_off(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG.replace(f'admin_keys: ["{ADMIN_KEY}"], ', ""))
    app = create_app(str(path), watch=False)
    with TestClient(app).websocket_connect("/admin/live") as ws:
        ws.send_text(orjson.dumps({"admin_key": ADMIN_KEY}).decode())
        code, reason = closed_with(ws)
    asyncio.run(app.state.runtime.aclose())
    assert code == 1008 and "admin API is disabled" in reason


def test_a_key_dropped_by_a_reload_ends_the_stream(client, app_config):
    with client.websocket_connect("/admin/live", headers={"x-api-key": ADMIN_KEY}) as ws:
        ws.receive_json()
        app_config.write_text(CONFIG.replace(ADMIN_KEY, "another-admin-key"))
        response = client.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert response.status_code == 200
        while True:  # the snapshot of the second running may come first
            try:
                ws.receive_json()
            except WebSocketDisconnect as closed:
                assert (closed.code, closed.reason) == (1008, "the admin key is no longer in the config")
                break


def test_requests_through_the_app_show_up(client):
    for team in ("search", "research"):
        response = client.post("/v1/chat/completions", json=chat_body(stream=True),
                               headers={"authorization": f"Bearer {TEAM_KEYS[team]}"})
        assert response.status_code == 200
    client.post("/v1/chat/completions", json=chat_body(), headers={"authorization": "Bearer nope"})
    stats = client.app.state.runtime.telemetry.live
    eventually(lambda: sum(s.requests for s in stats.seconds()) == 3, timeout=3, what="the seconds to complete")
    seconds = stats.seconds()
    assert sum(s.errors.get("status_401", 0) for s in seconds) == 1
    assert sum(s.spend_usd.get("search", 0) for s in seconds) > 0
    assert sum(s.spend_usd.get("research", 0) for s in seconds) > 0
    assert any(s.ttft_p50_ms is not None for s in seconds)  # the streams'
    assert stats.inflight == 0


def test_the_page_is_served_without_a_key_and_loads_nothing_from_outside(client):
    response = client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "connect-src 'self'" in response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    page = response.text
    assert "/admin/live" in page and "sessionStorage" in page and "<canvas" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no outside assets"
    assert "innerHTML" not in page  # server strings (team names, targets) are set as text only


# ---------------------------------------------------------------- served for real


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
    return path


class Load(LoadThreads):
    """Chat requests from a few threads until stopped; refused connections (a restart) are retried."""

    def __init__(self, base_url: str, threads: int = 4) -> None:
        super().__init__(threads)
        self.base_url = base_url
        self.sent = 0

    def _run(self, index: int) -> None:
        team = list(TEAM_KEYS)[index % 2]
        with httpx.Client(timeout=10) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    http.post(f"{self.base_url}/v1/chat/completions",
                              json=chat_body(text=f"load {index} {n}", stream=n % 2 == 0),
                              headers={"authorization": f"Bearer {TEAM_KEYS[team]}"})
                    self.sent += 1
                except httpx.HTTPError:
                    self._stop.wait(0.05)


def ws_url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}/admin/live"


@pytest.mark.integration
async def test_served_snapshots_arrive_each_second_and_count_the_load(tmp_path):
    from websockets.asyncio.client import connect

    with ServerProcess(write_config(tmp_path)) as server:
        async with connect(ws_url(server)) as ws:
            await ws.send(orjson.dumps({"admin_key": ADMIN_KEY}).decode())
            first = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            assert first["worker"]["multiprocess"] is False
            assert first["last_second"]["requests_per_s"] == 0
            snapshots = []
            with Load(server.base_url):
                # the server's keep-alive and head timers (1 s here) must not touch an upgraded connection
                while len(snapshots) < 4 or snapshots[-1]["last_second"]["requests_per_s"] == 0:
                    snapshots.append(orjson.loads(await asyncio.wait_for(ws.recv(), 5)))
                    assert len(snapshots) < 15, "no requests counted while the load ran"
        seconds = [s["last_second"]["at"] for s in snapshots]
        assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), "one snapshot per second"
        gaps = [b["at"] - a["at"] for a, b in zip(snapshots, snapshots[1:], strict=False)]
        assert all(0.5 < gap < 1.8 for gap in gaps), gaps
        busy = snapshots[-1]
        assert busy["last_second"]["latency_ms"]["p95"] >= 15  # the mock's latency_ms
        assert busy["window"]["spend_usd_per_min"].keys() <= set(TEAM_KEYS) and busy["window"]["spend_usd_per_min"]
        assert busy["circuits"] == [{"target": "mock/gpt-4o-mini", "state": "closed", "consecutive_failures": 0,
                                     "reopens_in_s": 0.0, "inflight": busy["circuits"][0]["inflight"]}]
        assert busy["worker"]["pid"] == server.proc.pid


@pytest.mark.integration
async def test_served_bad_key_is_closed_with_1008(tmp_path):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosedError

    with ServerProcess(write_config(tmp_path)) as server:
        async with connect(ws_url(server)) as ws:
            await ws.send(orjson.dumps({"admin_key": "wrong"}).decode())
            with pytest.raises(ConnectionClosedError) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason == "an admin key is required for /admin"
        async with connect(ws_url(server), additional_headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as ws:
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "snapshot"


@pytest.mark.integration
async def test_served_oversized_or_binary_first_messages_are_refused_and_serving_goes_on(tmp_path):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    with ServerProcess(write_config(tmp_path)) as server:
        async with connect(ws_url(server), max_size=None) as ws:
            await ws.send("x" * 200_000)  # over the 64 KiB a message may have
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
        async with connect(ws_url(server)) as ws:
            await ws.send(b"\x00\x01 binary")
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        async with connect(ws_url(server), additional_headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as ws:
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "snapshot"


@pytest.mark.integration
async def test_with_several_workers_each_answers_for_itself(tmp_path):
    from websockets.asyncio.client import connect

    with ServerProcess(write_config(tmp_path), args=["--workers", "2"]) as server:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with connect(ws_url(server), additional_headers=headers) as ws:
            worker = orjson.loads(await asyncio.wait_for(ws.recv(), 5))["worker"]
        assert worker["multiprocess"] is True
        assert worker["pid"] != server.proc.pid  # a worker, not the supervising process


# ---------------------------------------------------------------- the page in a real browser


@pytest.mark.integration
def test_the_dashboard_shows_the_load_and_survives_a_restart(tmp_path):
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `apt-get install chromium` (tests/install-tools.sh does)"
    from playwright.sync_api import sync_playwright

    config = write_config(tmp_path)
    first = ServerProcess(config, log=tmp_path / "first.log").start()
    second = ServerProcess(config, log=tmp_path / "second.log")
    second.port, second.base_url = first.port, first.base_url  # the restart comes back on the same port
    try:
        with Load(first.base_url), sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(f"{first.base_url}/dashboard")
                page.fill("#key", ADMIN_KEY)
                page.click("button[type=submit]")
                # functions, not expressions: the page's CSP forbids evaluating strings
                showing_load = ("(pid) => document.body.dataset.state === 'live' && document.body.dataset.pid === pid"
                                " && Number(document.getElementById('rps').textContent) > 0")
                page.wait_for_function(showing_load, arg=str(first.proc.pid), timeout=15_000)
                assert page.text_content("#generation") == "1"
                assert page.locator("#spend tr").count() >= 1

                first.stop()
                page.wait_for_function("() => document.body.dataset.state === 'reconnecting'", timeout=10_000)
                second.start()
                page.wait_for_function(showing_load, arg=str(second.proc.pid), timeout=20_000)
                assert page.evaluate("sessionStorage.getItem('switchyard.adminKey')") == ADMIN_KEY
            finally:
                browser.close()
    finally:
        first.stop()
        second.stop()


def test_a_busy_second_keeps_a_bounded_sample_of_latencies():
    from proxy.live import SAMPLES_PER_S, LiveStats

    clock = [1000.25]
    stats = LiveStats(clock=lambda: clock[0])
    for n in range(SAMPLES_PER_S * 3):
        record = RequestRecord(f"r{n}", "chat")
        record.finished = record.started + (0.010 if n < SAMPLES_PER_S * 2 else 0.030)
        record.first_token_at = record.started + 0.005
        stats.started()
        stats.add(record)
    bucket = stats._current
    assert bucket.requests == SAMPLES_PER_S * 3
    assert len(bucket.durations) == SAMPLES_PER_S and len(bucket.ttfts) == SAMPLES_PER_S
    clock[0] = 1001.5
    (second,) = [s for s in stats.seconds(clock[0]) if s.requests]
    assert second.requests == SAMPLES_PER_S * 3
    assert second.latency_p50_ms == pytest.approx(30.0, rel=0.01)  # the newest third overwrote the rest
