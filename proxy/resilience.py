"""Getting an answer when providers fail: retries, fallbacks, circuit breakers, balancing.

For one request, `attempt_upstream()` walks the candidate targets (the routed target,
then its fallbacks) in an order the balancing strategy may change, skipping targets
whose circuit is open. Each target gets `1 + retries` attempts on retryable failures
(`retry_on`: statuses, `timeout`, `connect`), with exponential backoff and full jitter,
honouring an upstream's `retry-after`; all attempts share one deadline. A stream is
never retried once its first byte is on the way to the client: only failures before
the upstream's answer starts are retried here.

`Health` keeps, per target (`provider/model`), a circuit breaker (closed → open after
`failures` consecutive failures or a failure share above `error_rate` over the window
→ half-open after `cooldown_s`, where one probe decides), the requests in flight, and
an EWMA of answer latency. It lives for the process, across config reloads.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from proxy.config import CircuitConfig, ResilienceConfig
from proxy.errors import (
    DeadlinePassed,
    GatewayBusy,
    InvalidResponse,
    NoHealthyUpstream,
    ProxyError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.providers.base import UpstreamResponse
from proxy.routing import Decision, Target

CLOSED: Final = "closed"
HALF_OPEN: Final = "half_open"
OPEN: Final = "open"
EWMA_ALPHA: Final = 0.2


@dataclass(slots=True)
class Breaker:
    state: str = CLOSED
    consecutive: int = 0
    opened_at: float = 0.0
    probing: bool = False  # half-open: the one probe is in flight
    recent: deque[tuple[float, bool]] = field(default_factory=deque)  # (time, ok) within the window
    inflight: int = 0
    latency_s: float | None = None  # EWMA of successful attempts
    opens: int = 0


MAX_UNKNOWN_TARGETS = 256  # breakers for targets clients named through templates, least recent dropped


class Health:
    """Breakers per target. Targets the config names (`known`) keep theirs for the
    process's life; those a templated route lets clients name are kept in a bounded LRU,
    so a flood of invented model names cannot grow memory or `/admin/providers`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_unknown: int = MAX_UNKNOWN_TARGETS) -> None:
        self._clock = clock
        self._targets: dict[str, Breaker] = {}
        self._unknown: OrderedDict[str, Breaker] = OrderedDict()
        self.max_unknown = max_unknown
        self.known: frozenset[str] = frozenset()  # set from each snapshot's known_targets
        self.on_change: Callable[[str, str], None] = lambda target, state: None

    def breaker(self, target: str) -> Breaker:
        b = self._targets.get(target)
        if b is not None:
            return b
        if target in self.known:
            b = self._unknown.pop(target, None) or Breaker()
            self._targets[target] = b
            return b
        b = self._unknown.get(target)
        if b is None:
            b = self._unknown[target] = Breaker()
            self._evict()
        else:
            self._unknown.move_to_end(target)
        return b

    def _evict(self) -> None:
        """Drop the least recently used breakers past the cap, sparing any with requests in flight."""
        excess = len(self._unknown) - self.max_unknown
        if excess <= 0:
            return
        for name in [n for n, b in self._unknown.items() if b.inflight == 0][:excess]:
            del self._unknown[name]

    def state(self, target: str, circuit: CircuitConfig) -> str:
        b = self.breaker(target)
        if b.state == OPEN and self._clock() - b.opened_at >= circuit.cooldown_s:
            self._set(target, b, HALF_OPEN)
        return b.state

    def admit(self, target: str, circuit: CircuitConfig) -> bool:
        """May an attempt go to this target now? (Half-open admits one probe at a time.)"""
        state = self.state(target, circuit)
        b = self.breaker(target)
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not b.probing:
            b.probing = True
            return True
        return False

    def reopens_in(self, target: str, circuit: CircuitConfig) -> float:
        b = self.breaker(target)
        return max(0.0, circuit.cooldown_s - (self._clock() - b.opened_at)) if b.state == OPEN else 0.0

    def started(self, target: str) -> None:
        self.breaker(target).inflight += 1

    def succeeded(self, target: str, latency_s: float, circuit: CircuitConfig) -> None:
        b = self.breaker(target)
        b.inflight -= 1
        b.latency_s = latency_s if b.latency_s is None else EWMA_ALPHA * latency_s + (1 - EWMA_ALPHA) * b.latency_s
        b.consecutive = 0
        self._remember(b, True, circuit)
        if b.state != CLOSED:
            b.probing = False
            self._set(target, b, CLOSED)

    def failed(self, target: str, circuit: CircuitConfig) -> None:
        b = self.breaker(target)
        b.inflight -= 1
        b.consecutive += 1
        self._remember(b, False, circuit)
        if b.state == HALF_OPEN:
            b.probing = False
            self._open(target, b)
        elif b.state == CLOSED and (b.consecutive >= circuit.failures or self._rate_exceeded(b, circuit)):
            self._open(target, b)

    def finished_unjudged(self, target: str) -> None:
        """An attempt that says nothing about the target's health (a client error, a disconnect)."""
        b = self.breaker(target)
        b.inflight -= 1
        b.probing = False

    def _remember(self, b: Breaker, ok: bool, circuit: CircuitConfig) -> None:
        if circuit.error_rate is None:
            return
        now = self._clock()
        b.recent.append((now, ok))
        while b.recent and b.recent[0][0] < now - circuit.window_s:
            b.recent.popleft()

    @staticmethod
    def _rate_exceeded(b: Breaker, circuit: CircuitConfig) -> bool:
        if circuit.error_rate is None or len(b.recent) < circuit.min_requests:
            return False
        failures = sum(1 for _, ok in b.recent if not ok)
        return failures / len(b.recent) > circuit.error_rate

    def _open(self, target: str, b: Breaker) -> None:
        b.opened_at = self._clock()
        b.opens += 1
        self._set(target, b, OPEN)

    def _set(self, target: str, b: Breaker, state: str) -> None:
        if b.state != state:
            b.state = state
            self.on_change(target, state)

    def report(self, circuit: CircuitConfig) -> list[dict[str, Any]]:
        out = []
        breakers = {**self._unknown, **self._targets}
        for target in sorted(breakers):
            b = breakers[target]
            out.append({
                "target": target,
                "state": self.state(target, circuit),
                "consecutive_failures": b.consecutive,
                "times_opened": b.opens,
                "reopens_in_s": round(self.reopens_in(target, circuit), 3),
                "inflight": b.inflight,
                "latency_ewma_s": None if b.latency_s is None else round(b.latency_s, 6),
            })
        return out

    # --- balancing

    def order(self, decision: Decision, rand: float) -> list[Target]:
        """Candidates in the order to try them: balancing may pick another primary."""
        candidates = [decision.target, *decision.fallbacks]
        if decision.balance == "weighted" or len(decision.pool) < 2:
            return candidates
        pool = [t for t, _ in decision.pool]
        if decision.balance == "least_inflight":
            best = min(pool, key=lambda t: (self.breaker(str(t)).inflight, pool.index(t)))
        else:  # lowest_latency: unmeasured targets first, so each gets measured
            best = min(pool, key=lambda t: (self.breaker(str(t)).latency_s or 0.0, pool.index(t)))
        return [best, *[t for t in candidates if t != best]]


# ---------------------------------------------------------------- the attempt loop


@dataclass(slots=True, init=False)
class Attempt:
    target: Target
    outcome: str  # ok | retry | failed | status_4xx | circuit_open | refused (never sent)
    kind: str | None = None  # error kind when failed
    duration_s: float = 0.0

    def __init__(self, target: Target, outcome: str, kind: str | None = None, duration_s: float = 0.0) -> None:
        # written out: the __init__ dataclass writes runs as bytecode even in a compiled class
        self.target = target
        self.outcome = outcome
        self.kind = kind
        self.duration_s = duration_s


T = TypeVar("T")
Send = Callable[[Target, float], Awaitable[UpstreamResponse]]  # (target, deadline): an attempt


def retryable_status(status: int, settings: ResilienceConfig) -> bool:
    return status in settings.retry_on


def _retryable_error(exc: ProxyError, settings: ResilienceConfig) -> bool:
    if isinstance(exc, UpstreamTimeout):
        return "timeout" in settings.retry_on
    if isinstance(exc, InvalidResponse):  # a bad gateway in all but the status code
        return 502 in settings.retry_on
    if isinstance(exc, UpstreamAuthError):
        return False  # the same key fails the same way: the next target may hold another
    if isinstance(exc, UpstreamError) and exc.kind == "connection":
        return "connect" in settings.retry_on
    return False


def backoff_s(attempt: int, settings: ResilienceConfig, retry_after: str | None, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max, base * 2^attempt)]; `retry-after` raises the floor."""
    ceiling = min(settings.max_backoff_ms, settings.backoff_ms * 2**attempt) / 1000
    delay = rng.uniform(0, ceiling)
    if retry_after:
        try:
            delay = max(delay, min(float(retry_after), settings.max_backoff_ms / 1000))
        except ValueError:
            pass  # an HTTP date: the jittered delay stands
    return delay


async def attempt_upstream(
    candidates: list[Target],
    send: Send,
    *,
    settings: ResilienceConfig,
    health: Health,
    attempts: list[Attempt],
    deadline: float,
    rng: random.Random,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Target, UpstreamResponse]:
    """The first acceptable answer (2xx, or a 4xx that retrying cannot fix) and its target.

    Raises the last failure when every candidate is exhausted, or NoHealthyUpstream at
    once when every candidate's circuit is open. The health of a target that answered
    below 500 is left for the caller to judge (a stream's success is known only at its
    end): it reports with `health.succeeded`, `failed` or `finished_unjudged`.
    """
    circuit = settings.circuit
    last: ProxyError | None = None
    last_response: tuple[Target, UpstreamResponse] | None = None
    for target in candidates:
        name = target.name
        for attempt in range(settings.retries + 1):
            if not health.admit(name, circuit):
                attempts.append(Attempt(target, "circuit_open"))
                break
            remaining = deadline - clock()
            if remaining <= 0:
                raise last or DeadlinePassed()
            health.started(name)
            started = clock()
            try:
                response = await send(target, deadline)  # it ends with DeadlinePassed at the deadline
            except DeadlinePassed:
                health.failed(name, circuit)
                attempts.append(Attempt(target, "failed", "timeout", clock() - started))
                raise
            except GatewayBusy as exc:
                # our own pool is full: the provider did nothing wrong. Its circuit stays as it
                # is, and another candidate (another provider's pool) may still have room
                health.finished_unjudged(name)
                last, last_response = exc, None
                attempts.append(Attempt(target, "gateway_busy", exc.kind, clock() - started))
                break
            except ProxyError as exc:
                if exc.status < 500:
                    # refused before reaching the provider (a request this target cannot take,
                    # e.g. one with no translation to its wire): not the provider's failure,
                    # and another target may take it
                    health.finished_unjudged(name)
                    last, last_response = exc, None
                    attempts.append(Attempt(target, "refused", exc.kind, clock() - started))
                    break
                health.failed(name, circuit)
                last, last_response = exc, None
                retry = _retryable_error(exc, settings)
                attempts.append(Attempt(target, "retry" if retry else "failed", exc.kind, clock() - started))
                if not retry:
                    break  # a failure retrying will not fix: try the next target
            except BaseException:
                health.finished_unjudged(name)
                raise
            else:
                if response.status < 500 and response.status != 429 or not retryable_status(response.status, settings):
                    if response.status >= 500:
                        health.failed(name, circuit)  # not retried, but still a provider failure
                        attempts.append(Attempt(target, "failed", "status_5xx", clock() - started))
                    else:
                        attempts.append(Attempt(target, "ok" if response.ok else "status_4xx",
                                                None, clock() - started))
                    return target, response
                health.failed(name, circuit)
                kind = "status_429" if response.status == 429 else "status_5xx"
                attempts.append(Attempt(target, "retry", kind, clock() - started))
                await response.close()
                last, last_response = None, (target, response)
            if attempt < settings.retries:
                retry_after = _header(last_response[1].headers, "retry-after") if last_response else None
                delay = backoff_s(attempt, settings, retry_after, rng)
                if clock() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
    if last_response is not None:  # the last failure was an answer: the client gets it (mapped)
        return last_response
    if last is not None:
        raise last
    raise NoHealthyUpstream(_all_open_message(candidates, health, circuit))


async def within(deadline: float, attempt: Awaitable[T]) -> T:
    """An attempt by an adapter that does not keep the deadline itself (Adapter.keeps_deadline),
    cut off by asyncio.timeout; the HTTP adapters end their waits on their own timers."""
    try:
        async with asyncio.timeout(deadline - time.monotonic()):
            return await attempt
    except TimeoutError:
        raise DeadlinePassed() from None


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _all_open_message(candidates: list[Target], health: Health, circuit: CircuitConfig) -> str:
    parts = [f"{t} (circuit open, retried in {health.reopens_in(str(t), circuit):.0f} s)" for t in candidates]
    return "every target is failing and has been taken out of rotation: " + "; ".join(parts)
