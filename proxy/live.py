"""The live view: this process's traffic second by second, for `/admin/live` and `/dashboard`.

Feeding: `Telemetry.begin()` calls `LiveStats.started()` and `Telemetry.end()` calls
`LiveStats.add(record)`. `add` only appends a few numbers to the bucket of the current
wall-clock second, in a ring of `WINDOW_S` buckets reused in place: no lock (everything
runs on the event loop), no sorting, no new objects past a bucket's first use.

Reading: `LiveStats.seconds(now)` summarizes the complete seconds of the window, each
closed second once (its percentiles are sorted then, and remembered), and
`build_snapshot()` turns them and the process's state into the document a client gets.
Both are pure functions of their inputs, so the tests need no server and no clock.

Serving: `LiveEndpoint` is the WebSocket at `/admin/live`. It sends one snapshot as
soon as the client is authenticated (with the whole window, so a page draws history at
once) and then one a second, built once per second however many clients listen, and
only while one does. The admin key comes in the `Authorization` header (scripts), or,
since a browser cannot set headers on a WebSocket, as the first text message
`{"admin_key": "..."}`; a missing or wrong key closes the socket with 1008.

Each process counts only its own requests: under `serve --workers N` a connection lands
on one worker and shows that worker's share; the snapshot names the worker's `pid`.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import orjson
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from proxy.auth import authenticate_admin, presented_key
from proxy.errors import ProxyError
from proxy.pipeline.record import RequestRecord
from proxy.telemetry.metrics import multiprocess_dir

if TYPE_CHECKING:
    from proxy.runtime import Runtime

WINDOW_S = 60  # seconds of history kept and sent: "spend per minute" is the window's spend
AUTH_TIMEOUT_S = 10.0  # for the first message, when the key is not in a header
POLICY_VIOLATION = 1008  # the WebSocket close code for a refused key
TICK_LAG_S = 0.005  # wake just after a second ends, so that second is complete
NO_TEAM: Final = "-"
SAMPLES_PER_S: Final = 2048  # latencies kept per second for the percentiles (60 s: at most about 2 MiB)


class _Bucket:
    """The raw numbers of one wall-clock second (reset in place when the ring comes round)."""

    __slots__ = ("second", "requests", "durations", "ttfts", "errors", "hits", "misses", "spend")

    def __init__(self) -> None:
        self.second = -1
        self.requests = 0
        self.durations = array("d")  # seconds; doubles, not float objects: 8 bytes each
        self.ttfts = array("d")
        self.errors: dict[str, int] = {}
        self.hits = 0
        self.misses = 0
        self.spend: dict[str, float] = {}  # USD by team

    def reset(self, second: int) -> None:
        self.second = second
        self.requests = self.hits = self.misses = 0
        del self.durations[:]
        del self.ttfts[:]
        self.errors.clear()
        self.spend.clear()


@dataclass(frozen=True, slots=True)
class Second:
    """One complete second, summarized; latencies in milliseconds, None without samples."""

    at: int  # the wall-clock second (Unix time) it covers
    requests: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    errors: Mapping[str, int] = field(default_factory=dict)  # by kind
    cache_hits: int = 0
    cache_misses: int = 0
    spend_usd: Mapping[str, float] = field(default_factory=dict)  # by team


class LiveStats:
    """The last `window_s` seconds of this process's finished requests, a bucket a second."""

    def __init__(self, clock: Callable[[], float] = time.time, window_s: int = WINDOW_S) -> None:
        self._clock = clock
        self.window_s = window_s
        self._ring = [_Bucket() for _ in range(window_s)]
        self._summaries: dict[int, Second] = {}  # closed seconds never change: summarized once
        self._current = self._ring[0]  # the bucket add() fills until _current_ends
        self._current_ends = 0.0
        self.inflight = 0

    def started(self) -> None:
        self.inflight += 1

    def add(self, record: RequestRecord) -> None:
        """The hot path: a few appends and counters into the current second's bucket."""
        self.inflight -= 1
        now = self._clock()
        bucket = self._current if now < self._current_ends else self._roll(now)
        bucket.requests += 1
        # a second keeps at most SAMPLES_PER_S latencies (beyond that, the newest overwrite the
        # older ones in turn): percentiles from 2,048 samples, and memory that does not follow the rate
        durations = bucket.durations
        if len(durations) < SAMPLES_PER_S:
            durations.append(record.duration())
        else:
            durations[bucket.requests % SAMPLES_PER_S] = record.duration()
        if record.first_token_at is not None:
            ttfts = bucket.ttfts
            if len(ttfts) < SAMPLES_PER_S:
                ttfts.append(record.first_token_at - record.started)
            else:
                ttfts[bucket.requests % SAMPLES_PER_S] = record.first_token_at - record.started
        kind = record.error_kind
        if kind is None and record.status >= 400:
            kind = f"status_{record.status}"  # a refusal (401, 404, 429...) has no provider error kind
        if kind is not None:
            bucket.errors[kind] = bucket.errors.get(kind, 0) + 1
        if record.cache == "hit":
            bucket.hits += 1
        elif record.cache == "miss":
            bucket.misses += 1
        if record.cost_usd:
            team = record.team or NO_TEAM
            bucket.spend[team] = bucket.spend.get(team, 0.0) + record.cost_usd

    def _roll(self, now: float) -> _Bucket:
        """A new second began (once a second at most; a clock stepped back keeps filling
        the current bucket until it is past that bucket's end again)."""
        second = int(now)
        bucket = self._ring[second % self.window_s]
        if bucket.second != second:
            bucket.reset(second)
        self._current, self._current_ends = bucket, second + 1.0
        return bucket

    def seconds(self, now: float | None = None) -> list[Second]:
        """The window's complete seconds, oldest first, quiet ones included (as zeros)."""
        current = int(self._clock() if now is None else now)
        first = current - self.window_s
        for stale in [s for s in self._summaries if s < first]:
            del self._summaries[stale]
        return [self._summary(second) for second in range(first, current)]

    def _summary(self, second: int) -> Second:
        summary = self._summaries.get(second)
        if summary is None:
            bucket = self._ring[second % self.window_s]
            summary = summarize(bucket) if bucket.second == second else Second(second)
            self._summaries[second] = summary
        return summary


def summarize(bucket: _Bucket) -> Second:
    durations, ttfts = sorted(bucket.durations), sorted(bucket.ttfts)
    return Second(
        at=bucket.second,
        requests=bucket.requests,
        latency_p50_ms=_ms(percentile(durations, 0.50)),
        latency_p95_ms=_ms(percentile(durations, 0.95)),
        ttft_p50_ms=_ms(percentile(ttfts, 0.50)),
        ttft_p95_ms=_ms(percentile(ttfts, 0.95)),
        errors=dict(bucket.errors),
        cache_hits=bucket.hits,
        cache_misses=bucket.misses,
        spend_usd=dict(bucket.spend),
    )


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile of sorted values: the smallest value at least a share
    `q` of the values are at or below (None for no values)."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# ---------------------------------------------------------------- the snapshot


@dataclass(frozen=True, slots=True)
class ProcessState:
    """What the snapshot reports besides the traffic: read from the runtime when it is built."""

    at: float
    pid: int
    started_at: float
    multiprocess: bool  # served with several workers (each sees only its own traffic)
    generation: int
    digest: str
    reload_error: str | None
    inflight: int
    upstream_inflight: Mapping[str, int]  # by provider: calls holding an upstream connection
    circuits: Sequence[Mapping[str, Any]]  # Health.report's rows


def build_snapshot(seconds: Sequence[Second], process: ProcessState) -> dict[str, Any]:
    """The document sent to clients: the last complete second, the window's totals, its
    per-second history (columns, oldest first) and the process's state."""
    last = seconds[-1] if seconds else Second(int(process.at) - 1)
    return {
        "type": "snapshot",
        "at": round(process.at, 3),
        "window_s": len(seconds),
        "worker": {"pid": process.pid, "started_at": round(process.started_at, 3),
                   "multiprocess": process.multiprocess},
        "config": {"generation": process.generation, "digest": process.digest,
                   "reload_error": process.reload_error},
        "last_second": {
            "at": last.at,
            "requests_per_s": last.requests,
            "latency_ms": {"p50": last.latency_p50_ms, "p95": last.latency_p95_ms},
            "ttft_ms": {"p50": last.ttft_p50_ms, "p95": last.ttft_p95_ms},
        },
        "window": _window_totals(seconds),
        "inflight": {"requests": max(process.inflight, 0), "upstream_by_provider": dict(process.upstream_inflight)},
        "circuits": [dict(c) for c in process.circuits],
        "history": {
            "at": [s.at for s in seconds],
            "requests_per_s": [s.requests for s in seconds],
            "errors_per_s": [sum(s.errors.values()) for s in seconds],
            "latency_p50_ms": [s.latency_p50_ms for s in seconds],
            "latency_p95_ms": [s.latency_p95_ms for s in seconds],
            "ttft_p50_ms": [s.ttft_p50_ms for s in seconds],
            "ttft_p95_ms": [s.ttft_p95_ms for s in seconds],
        },
    }


def _window_totals(seconds: Sequence[Second]) -> dict[str, Any]:
    errors: dict[str, int] = {}
    spend: dict[str, float] = {}
    for s in seconds:
        for kind, n in s.errors.items():
            errors[kind] = errors.get(kind, 0) + n
        for team, usd in s.spend_usd.items():
            spend[team] = spend.get(team, 0.0) + usd
    hits, misses = sum(s.cache_hits for s in seconds), sum(s.cache_misses for s in seconds)
    per_minute = 60 / len(seconds) if seconds else 0.0
    return {
        "requests": sum(s.requests for s in seconds),
        "errors": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        # bypassed requests (no-store, cache off, errors) are neither hits nor misses
        "cache": {"hits": hits, "misses": misses,
                  "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None},
        "spend_usd_per_min": {team: round(usd * per_minute, 8) for team, usd in sorted(spend.items())},
    }


def process_state(runtime: Runtime, now: float) -> ProcessState:
    active = runtime.active()
    snapshot = active.snapshot
    failure = runtime.holder.last_failure
    circuit = snapshot.config.resilience.circuit
    circuits = [{k: row[k] for k in ("target", "state", "consecutive_failures", "reopens_in_s", "inflight")}
                for row in runtime.health.report(circuit)]
    return ProcessState(
        at=now,
        pid=os.getpid(),
        started_at=runtime.started_at,
        multiprocess=multiprocess_dir() is not None,
        generation=snapshot.generation,
        digest=snapshot.digest,
        reload_error="; ".join(f"{p or '<file>'}: {r}" for p, r in failure.problems) if failure else None,
        inflight=runtime.telemetry.live.inflight,
        upstream_inflight={name: adapter.inflight for name, adapter in sorted(active.adapters.items())},
        circuits=circuits,
    )


# ---------------------------------------------------------------- the WebSocket and the page


class LiveEndpoint:
    """The WebSocket at /admin/live (plain ASGI). One instance serves every connection of
    the process, so the snapshot of a second is built and encoded once for all of them."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._frame_second = -1
        self._frame = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()  # before the key check: a refusal is a close code, not an HTTP 403
        try:
            key = await self._authenticated(websocket)
            if key is not None:
                await self._stream(websocket, key)
        except WebSocketDisconnect:
            pass  # the client left (or the server is shutting down: uvicorn sent 1012)

    async def _authenticated(self, websocket: WebSocket) -> str | None:
        """The admin key, from the Authorization header or the first message; None once
        the socket is closed with 1008 and the reason."""
        # refusals are awaited after their except blocks: compiled by mypyc, an await inside
        # one can raise the caught exception again
        refusal: str | None = None
        key = presented_key(websocket.headers)
        if key is None:
            try:
                key = first_message_key(await asyncio.wait_for(_first_text(websocket), AUTH_TIMEOUT_S))
            except TimeoutError:
                refusal = f"no admin key within {AUTH_TIMEOUT_S:g} s"
        if refusal is None:
            try:  # the one admin check, given the key as a header would have carried it
                authenticate_admin(self._runtime.active().snapshot, {"x-api-key": key} if key else {})
            except ProxyError as exc:
                refusal = exc.message
        if refusal is not None:
            await _refuse(websocket, refusal)
            return None
        assert key is not None
        return key

    async def _stream(self, websocket: WebSocket, key: str) -> None:
        closed = asyncio.ensure_future(_until_disconnect(websocket))
        try:
            while not closed.done():
                if not self._runtime.active().snapshot.is_admin_key(key):
                    await _refuse(websocket, "the admin key is no longer in the config")
                    return
                await websocket.send_text(self.frame(time.time()))
                await asyncio.wait({closed}, timeout=1.0 - time.time() % 1.0 + TICK_LAG_S)
        finally:
            closed.cancel()

    def frame(self, now: float) -> str:
        """This second's snapshot as JSON text, built by the first connection that asks."""
        if int(now) != self._frame_second:
            snapshot = build_snapshot(self._runtime.telemetry.live.seconds(now), process_state(self._runtime, now))
            self._frame, self._frame_second = orjson.dumps(snapshot).decode(), int(now)
        return self._frame


async def _first_text(websocket: WebSocket) -> str:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message.get("text") or ""  # a binary message carries no key


def first_message_key(text: str) -> str | None:
    """The key in a `{"admin_key": "..."}` message, or None for anything else."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    key = message.get("admin_key") if isinstance(message, dict) else None
    return (key.strip() or None) if isinstance(key, str) else None


async def _refuse(websocket: WebSocket, reason: str) -> None:
    # a close reason is at most 123 bytes; ours are ASCII
    await websocket.close(POLICY_VIOLATION, reason[:123])


async def _until_disconnect(websocket: WebSocket) -> None:
    """Reads (and ignores) what the client sends, and returns when it has gone."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


# The page holds no data and no key, so it is served without one; what it shows comes
# over /admin/live. The policy keeps it self-contained: its own inline script and
# style, connections back to this origin only, and no framing by other sites.
DASHBOARD_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
    "cache-control": "no-cache",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


@functools.cache
def dashboard_html() -> bytes:
    return resources.files("proxy.data").joinpath("dashboard.html").read_bytes()
