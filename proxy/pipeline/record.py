"""What one proxied request did, filled in as it goes and reported once at its end.

The endpoint writes plain attributes (no calls, no locks) on the hot path; metrics,
the span and the access-log line are all produced from the finished record.
"""

from __future__ import annotations

import math
import time
from typing import Any

from proxy.usage import tokens


def ms(seconds: float) -> float:
    """Seconds as milliseconds to the microsecond, for log lines and ledger rows: what
    round(seconds * 1000, 3) gives, at a fraction of its cost (five times on every request)."""
    return rounded(seconds * 1e6) / 1000


def rounded(value: float) -> int:
    """round(value): the nearest whole number, a half to the even one. Compiled, round() is
    looked up in builtins and called with a boxed float (about 700 instructions); math.floor
    is a C call. (value - floor(value) is exact for any float; inf and NaN raise as in round.)"""
    whole = math.floor(value)
    rest = value - whole
    if rest > 0.5 or (rest == 0.5 and whole % 2 == 1):
        whole += 1
    return whole


class RequestRecord:
    __slots__ = (
        "request_id", "operation", "started", "started_wall", "team", "user", "requested_model",
        "route", "provider", "model", "known_model", "stream", "status", "cache", "error_kind",
        "error_message", "usage", "cost_usd", "saved_usd", "upstream_started", "upstream_answered",
        "response_started", "first_token_at", "finished", "outcome", "span", "attempt_span",
        "prompt", "completion", "budget_held", "reservation", "baseline_usd", "experiment", "variant", "attempts",
        "known_targets", "endpoint", "prompt_id", "prompt_version", "cache_entry", "_counted",
    )

    def __init__(self, request_id: str, operation: str) -> None:
        self.request_id = request_id
        self.operation = operation  # GenAI operation: "chat" | "embeddings" | "text_completion"
        self.endpoint = ""  # the API surface it came in on: chat/completions, responses, messages, ...
        self.started = time.perf_counter()
        self.started_wall = time.time()
        self.team: str | None = None
        self.user: str | None = None
        self.requested_model: str | None = None
        self.route: str | None = None
        self.provider: str | None = None
        self.model: str | None = None  # the upstream model called
        self.known_model = False  # whether `model` is named in the config (label-safe)
        self.stream = False
        self.status = 200
        self.cache = "bypass"
        self.error_kind: str | None = None  # provider failures only
        self.error_message: str | None = None
        self.usage: dict[str, Any] | None = None
        self.cost_usd: float | None = None
        self.saved_usd: float | None = None
        self.upstream_started: float | None = None
        self.upstream_answered: float | None = None  # headers (stream) or whole body read
        self.response_started: float | None = None  # stream: headers sent to the client
        self.first_token_at: float | None = None  # stream: first event sent to the client
        self.finished: float | None = None
        self.outcome = "complete"  # or client_disconnected, upstream_failed
        self.span: Any = None  # tracing's server span, when tracing is on
        self.attempt_span: Any = None
        self.prompt: Any = None  # messages, kept only when capture_content asks
        self.completion: Any = None
        self.budget_held = False  # counted in flight by the team's budget
        self.reservation: tuple[str, ...] | None = None  # period keys holding a shared (Redis) reservation
        self.baseline_usd: float | None = None  # what accounting.baseline_model would have cost
        self.experiment: str | None = None
        self.attempts: list[Any] = []  # resilience.Attempt per upstream try
        self.known_targets: frozenset[str] = frozenset()  # the snapshot's label-safe targets
        self.variant: str | None = None
        self.prompt_id: str | None = None  # a registered prompt the request named (proxy/prompts.py)
        self.prompt_version: str | None = None
        self.cache_entry: str | None = None  # the cache entry its answer was stored as or served from
        self._counted: tuple[Any, tuple[int, int]] = (None, (0, 0))  # usage object -> its token counts

    def tokens(self) -> tuple[int, int]:
        """(input, output) tokens of `usage`, counted once for the ledger, metrics, log and limits."""
        usage, counts = self._counted
        if usage is not self.usage:
            counts = tokens(self.usage)
            self._counted = (self.usage, counts)
        return counts

    def duration(self) -> float:
        end = self.finished if self.finished is not None else time.perf_counter()
        return end - self.started

    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    def overhead(self) -> float:
        """Time spent in the proxy itself: everything but waiting for the upstream."""
        total = self.duration()
        if self.upstream_started is None or self.upstream_answered is None:
            return total  # answered without an upstream call (cache hit, refusal) or it failed
        before = self.upstream_started - self.started
        if self.stream and self.response_started is not None:
            return before + max(self.response_started - self.upstream_answered, 0.0)
        return before + max(total - (self.upstream_answered - self.started), 0.0)


_NOT_SENT = frozenset({"circuit_open", "refused"})  # attempts that never reached a provider


def tries(attempts: list[Any]) -> int:
    """How many of a request's attempts (resilience.Attempt) reached, or tried to reach, a provider.
    (A loop: compiled, sum() over a generator makes a generator object, three times a request.)"""
    count = 0
    for attempt in attempts:
        if attempt.outcome not in _NOT_SENT:
            count += 1
    return count
