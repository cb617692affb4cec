"""Accounting: what each request cost, who pays, and whether they still may.

`Accounting` is the one object the endpoint talks to: `admit()` before the upstream
call (rate limits, then budget; raises the 429s), `finish()` when the request has ended
(ledger row, spend, tokens against limits, budget alerts). Nothing here does I/O on the
request path except the Redis rate-limit script, which is time-boxed.

Settings that are read per request (team budgets and limits, baseline model, alert
webhook, time zone) follow config reloads; where the ledger and the shared counters
live (`ledger.path` or `ledger.url`, `accounting.backend`/`url`) is fixed at start, and a
reload that changes them says so in the log. Spend is restored at start from whichever
ledger is configured: on a shared (PostgreSQL) ledger, that is the whole fleet's spend.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any
from zoneinfo import ZoneInfo

from proxy.accounting.alerts import AlertDispatcher
from proxy.accounting.budgets import Alert, Budgets
from proxy.accounting.ledger import LedgerReader, LedgerSchemaError, LedgerStore, LedgerWriter, SqliteStore
from proxy.accounting.limits import RateLimiter
from proxy.accounting.spend import DAY, MONTH, Periods, RedisSpendCounters, SpendCounters, periods_at
from proxy.config import BudgetConfig
from proxy.pipeline.record import RequestRecord, ms
from proxy.redis_guard import RedisGuards, redacted_url
from proxy.snapshot import Snapshot
from proxy.tasks import spawn

log = logging.getLogger("switchyard.accounting")


def ledger_store(snapshot: Snapshot) -> LedgerStore | None:
    """The configured ledger: PostgreSQL (`ledger.url`), a SQLite file, or None (`path: off`)."""
    ledger = snapshot.config.ledger
    if ledger.url is not None:
        from proxy.accounting.ledger_pg import PostgresStore  # asyncpg only where it is used

        return PostgresStore(ledger.url, retention_days=ledger.retention_days)
    path = ledger_path(snapshot)
    return SqliteStore(path, retention_days=ledger.retention_days) if path else None


def ledger_description(snapshot: Snapshot) -> str:
    """Where the ledger is, for people: a path, a URL without its password, or off."""
    ledger = snapshot.config.ledger
    if ledger.url is not None:
        return redacted_url(ledger.url)
    return ledger_path(snapshot) or "off"


def ledger_path(snapshot: Snapshot) -> str | None:
    """The SQLite file `ledger.path` names (whether or not `ledger.url` is used instead)."""
    path = snapshot.config.ledger.path
    if path == "off":
        return None
    if os.path.isabs(path) or snapshot.source.startswith("<"):
        return path
    return os.path.join(os.path.dirname(os.path.abspath(snapshot.source)), path)


class Accounting:
    def __init__(self, snapshot: Snapshot, metrics: Any = None, guards: RedisGuards | None = None) -> None:
        self._metrics = metrics
        self.store = ledger_store(snapshot)
        ledger = snapshot.config.ledger
        self.writer = (
            LedgerWriter(self.store, batch_size=ledger.batch_size, flush_interval_s=ledger.flush_interval_s,
                         max_pending=ledger.max_pending, on_error=self._ledger_error,
                         on_pending=self._ledger_pending)
            if self.store else None
        )
        self.reader = LedgerReader(self.store) if self.store else None
        settings = snapshot.config.accounting
        self._fixed = (snapshot.config.ledger, settings.backend, settings.url, settings.key_prefix)
        shared = settings.backend == "redis"
        guard = (guards or RedisGuards()).get(settings.url) if shared else None
        self.counters: SpendCounters = (
            RedisSpendCounters(settings.url, timeout_s=settings.timeout_ms / 1000, prefix=settings.key_prefix + "spend",
                               sync_interval_s=settings.sync_interval_s, guard=guard)
            if shared else SpendCounters()
        )
        self.limiter = RateLimiter(settings.url if shared else None, timeout_s=settings.timeout_ms / 1000,
                                   prefix=settings.key_prefix + "rl", guard=guard)
        self.alerts = AlertDispatcher(self.writer, metrics)
        self.alerts.webhook_for = self._webhook_for
        if isinstance(self.counters, RedisSpendCounters):
            self.alerts.shared = self.counters
        self.budgets = Budgets(self.counters, self.alerts.raise_alert, self._claim_alert)
        self._claimed: set[tuple[str, str, str, float]] = set()
        self._started: asyncio.Task[None] | None = None
        self._ready = False  # started, and the counters seeded
        self._periods: tuple[Periods, float, float, str] | None = None
        self.snapshot = snapshot

    # --- lifecycle (lazy, so in-process apps without a lifespan work too)

    def start_soon(self) -> None:
        """Begin opening the ledger and seeding the counters, without waiting for it."""
        if self._started is None:
            # a task of its own: the request that happened to start it may be cancelled (its
            # client left) without cancelling the start every other request is waiting for
            self._started = asyncio.get_running_loop().create_task(self._start())

    async def ready(self) -> None:
        if self._ready:
            return
        self.start_soon()
        assert self._started is not None
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        if self.writer is not None:
            await self.writer.start()
        if self.store is not None:
            await self._open_ledger(self.store)
        await self._seed()
        await self.counters.start()
        self._check_alerts()
        self._ready = True

    async def _open_ledger(self, store: LedgerStore) -> None:
        """Create or migrate the schema before the first read. A store that does not answer
        does not stop serving (the writer retries, rows queue); a schema newer than this
        Switchyard is said loudly, and nothing is written into it."""
        try:
            await asyncio.wait_for(store.open(), 10)
        except LedgerSchemaError as exc:
            log.critical("ledger %s: %s", store.name, exc)
        except store.errors + (TimeoutError,) as exc:
            log.error("ledger %s: cannot open it yet (%s); rows queue until it answers", store.name, exc)

    async def _seed(self) -> None:
        """Counters and raised alerts of the current periods, from the ledger."""
        if self.reader is None:
            return
        periods = self.periods()
        try:
            # awaited directly, not through wait_for: a start cancelled at shutdown then takes the
            # gather's cancellation itself (wait_for leaves it unretrieved, logged as an error)
            async with asyncio.timeout(10):
                day, month, raised = await asyncio.gather(
                    self.reader.spend_by_team_since(periods.day_start),
                    self.reader.spend_by_team_since(periods.month_start),
                    self.reader.alerts_since(periods.month_start),
                )
        except Exception as exc:  # noqa: BLE001 - an unreadable ledger must not stop serving
            log.error("cannot read the ledger to restore today's spend (%s); counting from zero", exc)
            return
        values = {(t, periods.day): v for t, v in day.items()} | {(t, periods.month): v for t, v in month.items()}
        if isinstance(self.counters, RedisSpendCounters):
            await self.counters.seed(values)
            self.counters.watch_all(self.snapshot.teams, periods)
        else:
            for (team, key), usd in values.items():
                self.counters.assign(team, key, usd)
        for row in raised:
            self._claimed.add((row["team"], row["period"], row["period_key"], row["threshold"]))

    async def aclose(self) -> None:
        if self._started is None:
            return
        if not self._started.done():  # still seeding: what it opens is closed below
            self._started.cancel()
            await asyncio.gather(self._started, return_exceptions=True)
        # the ledger first: its rows are the record of what was spent, and nothing that
        # talks to Redis (bounded below) may stand between them and the disk
        if self.writer is not None:
            await self.writer.close()
        for closing in (self.counters.close(), self.limiter.aclose(), self.alerts.aclose()):
            try:
                await asyncio.wait_for(closing, 5)
            except TimeoutError:
                log.warning("accounting: a Redis client did not close within 5 s; leaving it")

    def configure(self, snapshot: Snapshot) -> None:
        settings = snapshot.config.accounting
        if (snapshot.config.ledger, settings.backend, settings.url, settings.key_prefix) != self._fixed:
            log.warning("ledger and accounting backend/url/key_prefix changes take effect at the next restart")
        self.snapshot = snapshot
        if isinstance(self.counters, RedisSpendCounters):
            self.counters.watch_all(snapshot.teams, self.periods())
        if self._ready:
            self._check_alerts()  # before that, _start() checks once the counters are seeded

    def _check_alerts(self) -> None:
        """A budget lowered (or added) below what is spent raises its alerts now, as crossing it would."""
        periods = self.periods()
        for name, team in self.snapshot.config.teams.items():
            self.budgets.check_alerts(name, team.budget, periods)

    def periods(self, ts: float | None = None) -> Periods:
        if ts is not None:
            return periods_at(ts, self.zone())
        now = time.time()
        cached = self._periods
        # the day's keys hold until midnight: compute them once a day, not per request
        zone = self.snapshot.timezone
        if cached is None or not cached[1] <= now < cached[2] or cached[3] != zone:
            p = periods_at(now, self.zone())
            self._periods = cached = (p, p.day_start, p.day_end, zone)
        p = cached[0]
        return Periods(p.day, p.month, p.day_start, p.month_start, p.month_end, now, p.day_end)

    # --- the request path

    async def admit(self, record: RequestRecord, snapshot: Snapshot,
                    estimate: float = 0.0) -> list[tuple[bytes, bytes]]:
        """Rate limits, then budget; the rate-limit headers for the response. `estimate`:
        what the request may cost, held against a shared budget until it ends."""
        team = snapshot.team_index.get(record.team or "")
        if team is None or (team.limits is None and team.budget is None):
            return []
        if not self._ready:
            await self.ready()
        assert record.team is not None
        headers = await self.limiter.admit(record.team, record.user, team.limits)
        budget = team.budget
        if budget is None:
            return headers
        periods = self.periods()
        if isinstance(self.counters, RedisSpendCounters) and await self._reserve(record, budget, periods, estimate):
            return headers
        if self.budgets.admit(record.team, budget, periods, estimate):
            record.budget_held = True
        return headers

    async def _reserve(self, record: RequestRecord, budget: BudgetConfig, periods: Periods, estimate: float) -> bool:
        """Admission against the budget all replicas share, atomically in Redis; False when
        Redis cannot say and the local view must decide."""
        assert isinstance(self.counters, RedisSpendCounters) and record.team is not None
        limits = [(periods.key(p), usd) for p, usd in ((DAY, budget.daily_usd), (MONTH, budget.monthly_usd))
                  if usd is not None]
        ttl = self.snapshot.config.resilience.timeout_s + 60  # a replica that dies leaks nothing for long
        recent, known = self.budgets.recent_cost(record.team)
        outcome = await self.counters.reserve(record.team, limits, max(estimate, recent), record.request_id, ttl,
                                              known)
        if outcome is None:
            return False
        if not outcome.admitted:
            raise self.budgets.refuse_shared(record.team, budget, periods, outcome.reason)
        record.reservation = tuple(k for k, _ in limits)
        return True

    def finish(self, record: RequestRecord, snapshot: Snapshot) -> None:
        """Everything a finished request leaves behind, none of it awaited."""
        if record.team is None:
            return  # not a team's request (refused before auth): nothing to attribute
        team = snapshot.team_index.get(record.team)
        if record.budget_held:
            self.budgets.release(record.team, record.cost_usd)
        settled = record.reservation is not None and isinstance(self.counters, RedisSpendCounters)
        if settled:
            self.budgets.observed(record.team, record.cost_usd)
            assert isinstance(self.counters, RedisSpendCounters) and record.reservation is not None
            spawn(self.counters.settle(record.team, record.reservation, record.cost_usd or 0.0, record.request_id))
        baseline = snapshot.baseline_model
        if baseline and record.usage is not None:
            record.baseline_usd = snapshot.prices.cost(baseline, record.usage)
        if self.writer is not None:
            self.start_soon()
            self.writer.append(ledger_row(record))
        if team is None:
            return
        if record.cost_usd:
            self.budgets.spend(record.team, record.cost_usd, team.budget, self.periods(), settled=settled)
        if team.limits is not None and record.usage is not None:
            self.limiter.charge(record.team, record.user, team.limits, sum(record.tokens()))

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.snapshot.timezone)

    # --- alerts: once per team, period and threshold

    def _claim_alert(self, alert: Alert) -> bool:
        key = (alert.team, alert.period, alert.period_key, alert.threshold)
        if key in self._claimed:
            return False
        self._claimed.add(key)
        return True

    def _webhook_for(self, team: str) -> str | None:
        config = self.snapshot.config
        budget = config.teams[team].budget if team in config.teams else None
        return (budget.webhook_url if budget is not None else None) or config.accounting.alert_webhook

    def _ledger_error(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.ledger_error(kind)

    def _ledger_pending(self, rows: int) -> None:
        if self._metrics is not None:
            self._metrics.ledger_backlog(rows)


def ledger_row(record: RequestRecord) -> tuple[Any, ...]:
    input_tokens, output_tokens = record.tokens()
    ttft = record.ttft()
    has_usage = record.usage is not None
    return (
        record.request_id, record.started_wall, record.team, record.user, record.requested_model, record.route,
        record.provider, record.model, record.status, record.error_kind, int(record.stream), record.cache,
        input_tokens if has_usage else None, output_tokens if has_usage else None,
        record.cost_usd, record.saved_usd, record.baseline_usd,
        ms(record.duration()), None if ttft is None else ms(ttft),
        record.experiment, record.variant, record.prompt_id, record.prompt_version, record.cache_entry,
    )


__all__ = ["Accounting", "DAY", "MONTH", "ledger_description", "ledger_path", "ledger_row", "ledger_store"]
