"""Team budgets: refuse requests once a daily or monthly budget is spent, and raise
each alert threshold exactly once per period.

Admission is checked before the upstream call, spend is added when the request ends.
Near the edge, concurrent requests could all pass the check and overshoot together,
so once what is left is less than the requests in flight could cost (at the largest
recent request's cost), only one request at a time is let through: the overshoot is
at most one request's worth (per replica, with shared counters).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from proxy.accounting.spend import DAY, MONTH, Periods, SpendCounters
from proxy.config import BudgetConfig
from proxy.errors import BudgetExceeded

log = logging.getLogger("switchyard.budget")


@dataclass(frozen=True, slots=True)
class Alert:
    team: str
    period: str  # day | month
    period_key: str  # 2026-11-24 | 2026-11
    threshold: float  # fraction of the budget
    spent_usd: float
    budget_usd: float
    ts: float


AlertSink = Callable[[Alert], None]


class _TeamState:
    __slots__ = ("inflight", "recent")

    def __init__(self) -> None:
        self.inflight = 0
        self.recent: deque[float] = deque(maxlen=20)  # costs of the last requests

    def estimate(self) -> float:
        return max(self.recent, default=0.0)

    def known(self) -> bool:
        """Whether any request has finished: until then, what one costs is anyone's guess."""
        return bool(self.recent)


class Budgets:
    def __init__(self, counters: SpendCounters, on_alert: AlertSink, claim_alert: Callable[[Alert], bool]) -> None:
        self.counters = counters
        self._on_alert = on_alert
        self._claim = claim_alert  # True when this process is the one to raise it (once per period)
        self._teams: dict[str, _TeamState] = {}

    def _state(self, team: str) -> _TeamState:
        state = self._teams.get(team)
        if state is None:
            state = self._teams[team] = _TeamState()
        return state

    def admit(self, team: str, budget: BudgetConfig | None, periods: Periods, estimate: float = 0.0) -> bool:
        """Raise BudgetExceeded, or count the request in flight (True: call `release` later).
        `estimate`: what this request may cost (its input and output cap at list price)."""
        if budget is None:
            return False
        state = self._state(team)
        remaining = self.remaining(team, budget, periods)
        if remaining is not None:
            if remaining <= 0:
                raise BudgetExceeded(_spent_message(team, budget, self, periods),
                                     retry_after=self._until_reset(team, budget, periods))
            if state.inflight and (not state.known()
                                   or remaining < (state.inflight + 1) * max(state.estimate(), estimate)):
                raise BudgetExceeded(
                    f"team {team!r} has ${remaining:.4f} of budget left, less than the requests in flight "
                    "may cost; further requests are admitted one at a time",
                    retry_after=1,
                )
        state.inflight += 1
        return True

    def release(self, team: str, usd: float | None) -> None:
        """A request counted by `admit` has ended, having cost `usd` (None: unpriced, or failed)."""
        self._state(team).inflight -= 1
        self.observed(team, usd)

    def observed(self, team: str, usd: float | None) -> None:
        """A request of the team has ended, having cost `usd`: the estimates learn from it."""
        self._state(team).recent.append(usd or 0.0)

    def remaining(self, team: str, budget: BudgetConfig, periods: Periods) -> float | None:
        left = []
        if budget.daily_usd is not None:
            left.append(budget.daily_usd - self.counters.spent(team, periods.day))
        if budget.monthly_usd is not None:
            left.append(budget.monthly_usd - self.counters.spent(team, periods.month))
        return min(left) if left else None

    def recent_cost(self, team: str) -> tuple[float, bool]:
        """The most one of the team's recent requests cost here, and whether any has finished."""
        state = self._state(team)
        return state.estimate(), state.known()

    def refuse_shared(self, team: str, budget: BudgetConfig, periods: Periods, reason: str) -> BudgetExceeded:
        """The 429 for a refusal by the shared (Redis) admission."""
        if reason == "edge":
            return BudgetExceeded(f"team {team!r} has little budget left and requests in flight may spend it; "
                                  "further requests are admitted one at a time", retry_after=1)
        return BudgetExceeded(_spent_message(team, budget, self, periods),
                              retry_after=self._until_reset(team, budget, periods))

    def _until_reset(self, team: str, budget: BudgetConfig, periods: Periods) -> int:
        """Seconds until every spent budget has reset: SDK retries before then are wasted."""
        ends = [periods.end(period) for period, limit in _limits(budget)
                if self.counters.spent(team, periods.key(period)) >= limit]
        return max(1, math.ceil(max(ends, default=periods.now) - periods.now))

    def check_alerts(self, team: str, budget: BudgetConfig | None, periods: Periods) -> None:
        """Raise every threshold the spend already stands at (a reload lowered the budget,
        or one was added): as if it had just been crossed. Raised ones are not repeated."""
        if budget is None:
            return
        for period, limit in _limits(budget):
            key = periods.key(period)
            spent = self.counters.spent(team, key)
            for threshold in (*budget.alerts, 1.0):
                if threshold * limit <= spent:
                    alert = Alert(team, period, key, threshold, spent, limit, periods.now)
                    if self._claim(alert):
                        self._on_alert(alert)

    def spend(self, team: str, usd: float, budget: BudgetConfig | None, periods: Periods,
              settled: bool = False) -> None:
        """Add a finished request's cost; raise the alerts it crosses. `settled`: the shared
        counter has it already (a Redis reservation became the cost): count it locally only."""
        if usd <= 0:
            return
        if settled:
            self.counters.note(team, (periods.day, periods.month), usd)
        else:
            self.counters.add(team, (periods.day, periods.month), usd)
        if budget is None:
            return
        for period, limit in _limits(budget):
            key = periods.key(period)
            after = self.counters.spent(team, key)
            before = after - usd
            for threshold in (*budget.alerts, 1.0):
                if before < threshold * limit <= after:
                    alert = Alert(team, period, key, threshold, after, limit, periods.now)
                    if self._claim(alert):
                        self._on_alert(alert)


def _limits(budget: BudgetConfig) -> list[tuple[str, float]]:
    """(period, USD) for each budget the team has."""
    return [(p, usd) for p, usd in ((DAY, budget.daily_usd), (MONTH, budget.monthly_usd)) if usd is not None]


def _spent_message(team: str, budget: BudgetConfig, budgets: Budgets, periods: Periods) -> str:
    parts = []
    if budget.daily_usd is not None:
        parts.append(f"${budgets.counters.spent(team, periods.day):.4f} of ${budget.daily_usd:g} today")
    if budget.monthly_usd is not None:
        parts.append(f"${budgets.counters.spent(team, periods.month):.4f} of ${budget.monthly_usd:g} this month")
    return f"team {team!r} has spent its budget ({', '.join(parts)})."
