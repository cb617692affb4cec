"""Prometheus metrics: what every finished request adds, and the exposition for /metrics.

Labels are only configured names (team, route, provider, and upstream models written
in the config or its price list); anything else is reported as `other`, so the number
of series is bounded by the config, not by what clients send.

The series every request updates are kept, in a single process, as plain numbers
(`LocalCounter`, `LocalGauge`, `LocalHistogram`) and turned into metric families only
when /metrics is scraped: an update is an addition, where prometheus-client takes a lock
per update (about 2 µs each, 9-11 of them per request). With several workers
(`switchyard serve --workers N`) prometheus-client's multiprocess mode is used instead:
`PROMETHEUS_MULTIPROC_DIR` is set by the CLI and /metrics merges the workers' files.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any, Final

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from proxy.pipeline.record import RequestRecord

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` doubles the output

# LLM calls take from milliseconds (cache, small models) to minutes (long generations)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

OTHER = "other"
# request failures that say nothing against the provider: the client left, our own pool was full
NOT_PROVIDER_ERRORS = frozenset({"client_disconnected", "gateway_busy"})
NONE: Final = "none"
INVALIDATION_REASONS = ("feedback", "purge")  # llm_cache_invalidations_total's reasons, exported from 0

CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


class _Children:
    """Label children cached by their value tuple: one dict lookup per update."""

    __slots__ = ("metric", "children")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def get(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


class _Number:
    """One series of a local counter or gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _Buckets:
    """One series of a local histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # a bound is inclusive: le
        self.sum += value


def _inc(series: Any, amount: float = 1.0) -> None:
    """`series.inc(amount)`; direct for a local series (compiled, a method called on an
    untyped value is a generic lookup and call: about 650 instructions, nine a request)."""
    if isinstance(series, _Number):
        series.value += amount
    elif isinstance(series, _Local) and isinstance(series._single, _Number):
        series._single.value += amount
    else:
        series.inc(amount)


def _dec(series: Any) -> None:
    if isinstance(series, _Local) and isinstance(series._single, _Number):
        series._single.value -= 1.0
    else:
        series.dec()


def _observe(series: Any, value: float) -> None:
    """`series.observe(value)`; direct for a local series."""
    if isinstance(series, _Buckets):
        series.observe(value)
    elif isinstance(series, _Local) and isinstance(series._single, _Buckets):
        series._single.observe(value)
    else:
        series.observe(value)


MAX_KINDS = 4096  # kinds of request (team, route, target, status, cache result) remembered


class _Kind:
    """The series one kind of request updates (its team, route, target, status and cache
    result decide them): found with one lookup per request instead of one per metric."""

    __slots__ = ("labels", "requests", "cache", "duration", "input", "output", "cost")

    def __init__(self, labels: tuple[str, str, str], requests: Any, cache: Any) -> None:
        self.labels = labels  # team, provider, model as the upstream's series name them
        self.requests = requests
        self.cache = cache
        self.duration: Any = None
        self.input: Any = None
        self.output: Any = None
        self.cost: Any = None


class _Local:
    """A metric of plain numbers, exported through the registry at scrape time. Updated
    and collected on the event loop's thread only (the per-request series), so no lock."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 registry: CollectorRegistry, buckets: Sequence[float] = (), **_: Any) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self.series: dict[tuple[str, ...], Any] = {}
        self._single: Any = None if labelnames else self.labels()
        registry.register(self)

    def labels(self, *values: str) -> Any:
        found = self.series.get(values)
        if found is None:
            found = self.series[values] = _Buckets(self.bounds) if self.kind == "histogram" else _Number()
        return found

    # a metric without labels is its one series
    def inc(self, amount: float = 1.0) -> None:
        self._single.inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._single.dec(amount)

    def observe(self, value: float) -> None:
        self._single.observe(value)

    def collect(self) -> Iterator[Metric]:
        labels = list(self.labelnames)
        if self.kind == "histogram":
            histogram = HistogramMetricFamily(self.name, self.documentation, labels=labels)
            edges = [repr(b) for b in self.bounds] + ["+Inf"]  # as prometheus-client writes `le`
            for values, h in list(self.series.items()):
                running, cumulative = 0, []
                for edge, count in zip(edges, h.counts, strict=True):
                    running += count
                    cumulative.append((edge, float(running)))
                histogram.add_metric(list(values), cumulative, h.sum)
            yield histogram
            return
        family = (CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily)(
            self.name, self.documentation, labels=labels)
        for values, number in list(self.series.items()):
            family.add_metric(list(values), number.value)
        yield family


class LocalCounter(_Local):
    kind = "counter"


class LocalGauge(_Local):
    kind = "gauge"


class LocalHistogram(_Local):
    kind = "histogram"


class Metrics:
    def __init__(self, local: bool | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # the series every request updates: plain numbers in one process, files with several
        shared = bool(multiprocess_dir()) if local is None else not local
        Counter_: Any = Counter if shared else LocalCounter
        Gauge_: Any = Gauge if shared else LocalGauge
        Histogram_: Any = Histogram if shared else LocalHistogram
        self.requests = _Children(Counter_(
            "llm_requests", "Proxied requests by outcome.",
            ["team", "route", "provider", "model", "status", "cache"], registry=r))
        self.duration = _Children(Histogram_(
            "llm_request_duration_seconds", "Whole request time, first byte in to last byte out.",
            ["provider", "model"], buckets=DURATION_BUCKETS, registry=r))
        self.ttft = _Children(Histogram_(
            "llm_time_to_first_token_seconds", "Streams: time until the first event reached the client.",
            ["provider", "model"], buckets=TTFT_BUCKETS, registry=r))
        self.tokens = _Children(Counter_(
            "llm_tokens", "Tokens reported by the upstream.",
            ["team", "provider", "model", "type"], registry=r))
        self.cost = _Children(Counter_(
            "llm_cost_usd", "Spend in USD at list prices.", ["team", "provider", "model"], registry=r))
        self.cache = _Children(Counter_(
            "llm_cache_requests", "Cache lookups by result (bypass: not cacheable or asked not to).",
            ["result"], registry=r))
        self.cache_invalidations = _Children(Counter(
            "llm_cache_invalidations",
            "Cache entries invalidated, by reason (feedback: a mean score below cache.min_feedback).",
            ["reason"], registry=r))
        for reason in INVALIDATION_REASONS:  # a series from the start: rate() and alerts see 0, not nothing
            self.cache_invalidations.get(reason)
        self.provider_errors = _Children(Counter_(
            "llm_provider_errors", "Failed upstream calls by kind.", ["provider", "model", "kind"], registry=r))
        self.inflight = Gauge_(
            "llm_inflight_requests", "Proxied requests being served now.", registry=r,
            multiprocess_mode="livesum")
        self.overhead = Histogram_(
            "llm_proxy_overhead_seconds", "Time spent inside the proxy, excluding waiting for the upstream.",
            buckets=OVERHEAD_BUCKETS, registry=r)
        self.reloads = _Children(Counter(
            "switchyard_config_reloads", "Config loads by result (ok, unchanged, error).", ["result"], registry=r))
        self.generation = Gauge(
            "switchyard_config_generation", "Generation of the serving config (1 at start, +1 per reload).",
            registry=r, multiprocess_mode="max")
        self.info = Gauge(
            "switchyard_config_info", "The serving config's digest (value 1).", ["digest"], registry=r,
            multiprocess_mode="max")
        self.ledger_errors = _Children(Counter(
            "switchyard_ledger_write_errors", "Failed ledger writes (rows are kept and retried).", ["kind"],
            registry=r))
        self.ledger_pending = Gauge(
            "switchyard_ledger_rows_pending", "Ledger rows waiting to be written.", registry=r,
            multiprocess_mode="livesum")
        self.budget_alerts = _Children(Counter(
            "switchyard_budget_alerts", "Budget alert events raised.", ["team", "period", "threshold"], registry=r))
        self.team_budget = Gauge(
            "switchyard_team_budget_usd", "Configured team budgets.", ["team", "period"], registry=r,
            multiprocess_mode="max")
        self.webhook_failures = Counter(
            "switchyard_budget_webhook_failures", "Budget alert webhooks that failed after retries.", registry=r)
        self.attempts = _Children(Counter_(
            "llm_upstream_attempts",
            "Upstream attempts by outcome (ok, retry, failed, status_4xx, circuit_open, gateway_busy).",
            ["provider", "model", "outcome"], registry=r))
        self.circuit = _Children(Gauge(
            "llm_circuit_state", "Circuit breaker per target: 0 closed, 1 half-open, 2 open.",
            ["provider", "model"], registry=r, multiprocess_mode="max"))
        self.experiment_requests = _Children(Counter_(
            "llm_experiment_requests", "Requests per experiment variant.", ["experiment", "variant", "status"],
            registry=r))
        self._digest: str | None = None
        self._kinds: dict[tuple[Any, ...], _Kind] = {}

    # --- updates

    def started(self) -> None:
        _inc(self.inflight)

    def finished(self, record: RequestRecord) -> None:
        _dec(self.inflight)
        key = (record.team, record.route, record.provider, record.model, record.known_model, record.status,
               record.cache)
        kind = self._kinds.get(key)
        if kind is None:
            kind = self._kind(record, key)
        _inc(kind.requests)
        _inc(kind.cache)
        if record.experiment is not None:
            _inc(self.experiment_requests.get(record.experiment, record.variant or NONE, str(record.status)))
        _observe(self.overhead, record.overhead())
        for attempt in record.attempts:
            target = attempt.target
            _inc(self.attempts.get(target.provider, _label(record, target), attempt.outcome))
        if record.cache == "hit" or record.upstream_started is None:
            return  # no upstream call: nothing below describes one
        team, provider, model = kind.labels
        duration = kind.duration
        if duration is None:  # each series is made on its first update, as _Children.get makes it
            duration = kind.duration = self.duration.get(provider, model)
        _observe(duration, record.duration())
        ttft = record.ttft()
        if ttft is not None:
            _observe(self.ttft.get(provider, model), ttft)
        if record.error_kind is not None and record.error_kind not in NOT_PROVIDER_ERRORS:
            _inc(self.provider_errors.get(provider, model, record.error_kind))
        input_tokens, output_tokens = record.tokens()
        if input_tokens:
            if kind.input is None:
                kind.input = self.tokens.get(team, provider, model, "input")
            _inc(kind.input, input_tokens)
        if output_tokens:
            if kind.output is None:
                kind.output = self.tokens.get(team, provider, model, "output")
            _inc(kind.output, output_tokens)
        if record.cost_usd:
            if kind.cost is None:
                kind.cost = self.cost.get(team, provider, model)
            _inc(kind.cost, record.cost_usd)

    def _kind(self, record: RequestRecord, key: tuple[Any, ...]) -> _Kind:
        team, provider, model = record.team or NONE, record.provider or NONE, _model_label(record)
        cache = "miss" if record.cache == "invalidated" else record.cache  # as its header says; the ledger tells
        kind = _Kind((team, provider, model),
                     self.requests.get(team, record.route or NONE, provider, model, str(record.status), cache),
                     self.cache.get(cache))
        if len(self._kinds) >= MAX_KINDS:  # templated routes can name any model: keep it bounded
            self._kinds.clear()
        self._kinds[key] = kind
        return kind

    def config_loaded(self, generation: int, digest: str) -> None:
        self.generation.set(generation)
        if self._digest is not None and self._digest != digest:
            if multiprocess_dir():
                self.info.labels(self._digest).set(0)
            else:
                self.info.remove(self._digest)
        self.info.labels(digest).set(1)
        self._digest = digest

    def team_budgets(self, budgets: dict[str, tuple[float | None, float | None]]) -> None:
        """Export each team's (daily, monthly) budget; teams without one have no series.

        With several workers the series live in per-process files that prometheus-client
        cannot remove from: a budget dropped by a reload stays exported until a restart."""
        if not multiprocess_dir():
            self.team_budget.clear()
        for team, (daily, monthly) in budgets.items():
            if daily is not None:
                self.team_budget.labels(team, "day").set(daily)
            if monthly is not None:
                self.team_budget.labels(team, "month").set(monthly)

    def reload_result(self, result: str) -> None:
        self.reloads.get(result).inc()

    def circuit_changed(self, target: str, state: str, known: bool) -> None:
        provider, _, model = target.partition("/")
        self.circuit.get(provider, model if known else OTHER).set(CIRCUIT_VALUES[state])

    def ledger_error(self, kind: str) -> None:
        self.ledger_errors.get(kind).inc()

    def ledger_backlog(self, rows: int) -> None:
        self.ledger_pending.set(rows)

    def cache_invalidated(self, reason: str, entries: int = 1) -> None:
        if entries > 0:
            self.cache_invalidations.get(reason).inc(entries)

    def budget_alert(self, team: str, period: str, threshold: float) -> None:
        self.budget_alerts.get(team, period, f"{threshold:g}").inc()

    def webhook_failed(self) -> None:
        self.webhook_failures.inc()

    # --- exposition

    def exposition(self) -> bytes:
        directory = multiprocess_dir()
        if directory:
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)


CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}


def _label(record: RequestRecord, target: Any) -> str:
    return target.model if target.name in record.known_targets else OTHER


def _model_label(record: RequestRecord) -> str:
    if record.model is None:
        return NONE
    return record.model if record.known_model else OTHER
