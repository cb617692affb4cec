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
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable
from zoneinfo import ZoneInfo

log = logging.getLogger("switchyard.spend")

DAY, MONTH = "day", "month"


@dataclass(frozen=True, slots=True)
class Periods:
    """Period keys and starts at one moment, in the accounting time zone."""

    day: str  # 2026-11-24
    month: str  # 2026-11
    day_start: float  # epoch seconds
    month_start: float
    month_end: float  # start of next month
    now: float
    day_end: float = 0.0  # start of tomorrow (not always day_start + 86400: DST)

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

    def set(self, team: str, key: str, usd: float) -> None:
        self._spent.setdefault(team, {})[key] = usd

    def forget_except(self, keep: set[str]) -> None:
        for counters in self._spent.values():
            for key in [k for k in counters if k not in keep]:
                del counters[key]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def shared(self) -> bool:
        return False


class RedisSpendCounters(SpendCounters):
    def __init__(self, url: str, *, timeout_s: float, sync_interval_s: float, prefix: str = "sy:spend") -> None:
        super().__init__()
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s * 10, socket_connect_timeout=timeout_s * 10, health_check_interval=0
        )
        self._timeout_s = max(timeout_s * 10, 0.05)  # a background sync can wait longer than a lookup
        self.sync_interval_s = sync_interval_s
        self.prefix = prefix
        self._unsent: dict[tuple[str, str], float] = {}
        self._known: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self.healthy = True

    def _key(self, team: str, key: str) -> str:
        return f"{self.prefix}:{team}:{key}"

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
                self.set(team, key, usd)

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

    async def sync(self) -> bool:
        """Push unsent additions, then read every known counter. False when Redis failed."""
        unsent, self._unsent = self._unsent, {}
        known = sorted(self._known)
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
            if self.healthy:
                log.warning("spend counters: Redis unavailable (%s); enforcing budgets locally", exc)
            self.healthy = False
            return False
        if not self.healthy:
            log.info("spend counters: Redis is back; shared counting resumed")
        self.healthy = True
        totals = results[2 * len(unsent):]
        for (team, key), raw in zip(known, totals):
            if raw is not None:
                # additions made while this sync was in flight are not in Redis yet
                self.set(team, key, float(raw) + self._unsent.get((team, key), 0.0))
        return True


def _ttl(key: str) -> int:
    return 3 * 86400 if len(key) == 10 else 40 * 86400  # a day key lives 3 days, a month key 40


def now_utc() -> float:
    return datetime.now(timezone.utc).timestamp()
