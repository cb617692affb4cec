"""Spend counters per team and period (today, this month), in memory or shared via Redis.

The request path only reads and adds to a local view (no I/O). With Redis, a background
task pushes this process's additions (`INCRBYFLOAT`, pipelined) and reads back every
team's totals, so all replicas enforce one budget to within `sync_interval_s` of each
other's spend. While Redis is down, the local view keeps counting and the additions
wait, so enforcement continues locally and nothing is lost when Redis returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from proxy.data import text as data_text
from proxy.redis_guard import DOWN, RedisGuard

log = logging.getLogger("switchyard.spend")

DAY, MONTH = "day", "month"


@dataclass(slots=True, init=False)
class Periods:  # made twice per budgeted request; __init__ written out: a NamedTuple's runs as bytecode
    """Period keys and starts at one moment, in the accounting time zone."""

    day: str  # 2026-11-24
    month: str  # 2026-11
    day_start: float  # epoch seconds
    month_start: float
    month_end: float  # start of next month
    now: float
    day_end: float  # start of tomorrow (not always day_start + 86400: DST)

    def __init__(self, day: str, month: str, day_start: float, month_start: float, month_end: float,
                 now: float, day_end: float = 0.0) -> None:
        self.day = day
        self.month = month
        self.day_start = day_start
        self.month_start = month_start
        self.month_end = month_end
        self.now = now
        self.day_end = day_end

    def key(self, period: str) -> str:
        return self.day if period == DAY else self.month

    def end(self, period: str) -> float:
        return self.day_end if period == DAY else self.month_end


def periods_at(ts: float, zone: ZoneInfo) -> Periods:
    local = datetime.fromtimestamp(ts, zone)
    day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    # wall-clock arithmetic on an aware datetime: tomorrow's midnight, whatever DST does
    tomorrow = (day_start + timedelta(days=1)).replace(hour=0)
    month_start = day_start.replace(day=1)
    next_month = (month_start.replace(year=month_start.year + 1, month=1) if month_start.month == 12
                  else month_start.replace(month=month_start.month + 1))
    return Periods(
        day=day_start.strftime("%Y-%m-%d"),
        month=month_start.strftime("%Y-%m"),
        day_start=day_start.timestamp(),
        month_start=month_start.timestamp(),
        month_end=next_month.timestamp(),
        now=ts,
        day_end=tomorrow.timestamp(),
    )


class SpendCounters:
    """This process's view: team -> {period key -> USD}. Old period keys are dropped."""

    def __init__(self) -> None:
        self._spent: dict[str, dict[str, float]] = {}

    def spent(self, team: str, key: str) -> float:
        return self._spent.get(team, {}).get(key, 0.0)

    def add(self, team: str, keys: Iterable[str], usd: float) -> None:
        counters = self._spent.setdefault(team, {})
        for key in keys:
            counters[key] = counters.get(key, 0.0) + usd

    def assign(self, team: str, key: str, usd: float) -> None:
        self._spent.setdefault(team, {})[key] = usd

    def note(self, team: str, keys: Iterable[str], usd: float) -> None:
        """Add to this process's view only: the shared total already has it (a settled reservation)."""
        SpendCounters.add(self, team, keys, usd)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def shared(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Reservation:
    """What the shared admission said: admitted, or refused because a period's budget is
    spent (`spent`) or because the requests in flight may already spend what is left (`edge`)."""

    admitted: bool
    reason: str  # ok | spent | edge
    period_key: str | None  # the period that refused
    spent_usd: float
    held_usd: float


_RESERVE = data_text("budget_reserve.lua")  # every Lua script says what its KEYS and ARGV hold

_SETTLE = data_text("budget_settle.lua")


class RedisSpendCounters(SpendCounters):
    def __init__(self, url: str, *, timeout_s: float, sync_interval_s: float, prefix: str = "sy:spend",
                 guard: RedisGuard | None = None) -> None:
        super().__init__()
        self.guard = guard or RedisGuard(url)
        self.guard.users.add("spend counters")
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s * 10, socket_connect_timeout=timeout_s * 10, health_check_interval=0
        )
        self._timeout_s = max(timeout_s * 10, 0.05)  # a background sync can wait longer than a lookup
        self.sync_interval_s = sync_interval_s
        self.prefix = prefix
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._unsent: dict[tuple[str, str], float] = {}
        self._known: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None

    def _key(self, team: str, key: str) -> str:
        return f"{self.prefix}:{team}:{key}"

    def _reservation_keys(self, team: str, keys: Iterable[str]) -> list[str]:
        out = []
        for key in keys:
            out += [self._key(team, key), self._key(team, key) + ":held"]
        return out + [f"{self.prefix}:{team}:estimate"]

    async def reserve(self, team: str, budgets: list[tuple[str, float]], estimate: float, request_id: str,
                      ttl_s: float, known: bool = False) -> Reservation | None:
        """Admit against the shared budget, holding `estimate` until `settle`; None when
        Redis cannot say (skipped, failing, slow): the caller decides locally."""
        if not self.guard.available:
            return None
        keys = self._reservation_keys(team, [k for k, _ in budgets])
        args: list[Any] = [usd for _, usd in budgets] + [max(estimate, 0.0), request_id, ttl_s, int(known)]
        try:
            raw = await asyncio.wait_for(self._reserve(keys=keys, args=args), self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - any Redis trouble: the local view decides
            self.guard.failed(exc)
            return None
        self.guard.ok()
        admitted, reason, index, spent, held = raw
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        period = budgets[int(index) - 1][0] if int(index) else None
        if period is not None:
            self.assign(team, period, float(spent))  # what refused it is what this process should see
        return Reservation(bool(admitted), reason, period, float(spent), float(held))

    async def settle(self, team: str, keys: tuple[str, ...], usd: float, request_id: str) -> None:
        """Turn a reservation into the request's real cost (0 frees it). If Redis cannot take
        it now, the cost is queued and pushed by the next sync; the reservation expires."""
        try:
            await asyncio.wait_for(
                self._settle(keys=self._reservation_keys(team, keys), args=[repr(usd), request_id,
                                                                            *(_ttl(k) for k in keys)]),
                self._timeout_s,
            )
        except Exception as exc:  # noqa: BLE001
            self.guard.failed(exc)
            if usd > 0:
                for key in keys:
                    self._unsent[(team, key)] = self._unsent.get((team, key), 0.0) + usd
            return
        self.guard.ok()

    def add(self, team: str, keys: Iterable[str], usd: float) -> None:
        keys = tuple(keys)
        super().add(team, keys, usd)
        for key in keys:
            self._unsent[(team, key)] = self._unsent.get((team, key), 0.0) + usd
            self._known.add((team, key))

    def watch(self, team: str, keys: Iterable[str]) -> None:
        """Read these counters on every sync even before this process spends on them."""
        self._known.update((team, key) for key in keys)

    def watch_all(self, teams: Iterable[str], periods: Periods) -> None:
        known = {(t, k) for t, k in self._known if k in (periods.day, periods.month)}
        known.update((team, key) for team in teams for key in (periods.day, periods.month))
        self._known = known  # last period's keys are no longer read

    async def claim(self, name: str) -> bool:
        """True for the first replica to claim `name` (for 40 days); True too if Redis is down."""
        try:
            won = await asyncio.wait_for(
                self._redis.set(f"{self.prefix}:{name}", "1", nx=True, ex=40 * 86400), self._timeout_s
            )
        except Exception:  # noqa: BLE001 - better a duplicate alert than none
            return True
        return bool(won)

    async def seed(self, values: dict[tuple[str, str], float]) -> None:
        """Counters Redis does not have yet start from these (the ledger's sums)."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for (team, key), usd in values.items():
                    pipe.set(self._key(team, key), repr(usd), nx=True, ex=_ttl(key))
                await asyncio.wait_for(pipe.execute(), self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - Redis down: the local view starts from the ledger
            log.warning("spend counters: cannot seed Redis (%s); counting locally", exc)
            for (team, key), usd in values.items():
                self.assign(team, key, usd)

    async def start(self) -> None:
        await self.sync()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="spend-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.sync()  # push what this process added
        await self._redis.aclose()

    def shared(self) -> bool:
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval_s)
            await self.sync()

    @property
    def healthy(self) -> bool:
        return self.guard.state != DOWN

    async def sync(self) -> bool:
        """Push unsent additions, then read every known counter. False when Redis failed
        (or is being skipped after failures: what was added stays queued)."""
        if not self.guard.available:
            return False
        unsent, self._unsent = self._unsent, {}
        known = sorted(self._known)
        if not unsent and not known:
            # nothing to push or read: an empty pipeline "succeeds" without asking Redis, and
            # must not tell the guard that a Redis that is down answers again
            return True
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for (team, key), usd in unsent.items():
                    pipe.incrbyfloat(self._key(team, key), usd)
                    pipe.expire(self._key(team, key), _ttl(key))
                for team, key in known:
                    pipe.get(self._key(team, key))
                results = await asyncio.wait_for(pipe.execute(), self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - any Redis failure: keep counting locally
            for item, usd in unsent.items():  # put them back, in front of what came meanwhile
                self._unsent[item] = self._unsent.get(item, 0.0) + usd
            self.guard.failed(exc)  # it logs the change, once, for every user of this Redis
            return False
        self.guard.ok()
        totals = results[2 * len(unsent):]
        for (team, key), raw in zip(known, totals, strict=True):
            if raw is not None:
                # additions made while this sync was in flight are not in Redis yet
                self.assign(team, key, float(raw) + self._unsent.get((team, key), 0.0))
        return True


def _ttl(key: str) -> int:
    return 3 * 86400 if len(key) == 10 else 40 * 86400  # a day key lives 3 days, a month key 40


def now_utc() -> float:
    return datetime.now(UTC).timestamp()
