"""What the ledger and the spend counters tell: a team's own usage (`GET /v1/usage`), usage
reports (`/admin/usage`), and every team's costs and projections (`/admin/costs`).

Reads only. The request path (admission, the accounting of finished requests) is
`service.Accounting`'s; a report asks it for the ledger, the counters and the periods,
and writes queued rows first so it sees every finished request.
"""

from __future__ import annotations

from typing import Any

from proxy.accounting import reports
from proxy.accounting.ledger import LedgerReader
from proxy.accounting.service import Accounting
from proxy.errors import LedgerUnavailable


class Reports:
    def __init__(self, accounting: Accounting) -> None:
        self.accounting = accounting

    async def ledger(self) -> LedgerReader | None:
        """The ledger, once queued rows are written; None when the ledger is off."""
        acct = self.accounting
        await acct.ready()
        if acct.reader is None or acct.writer is None:
            return None
        if not acct.writer.failing:  # while it fails, waiting would only delay a stale answer
            await acct.writer.flush()
        return acct.reader

    def freshness(self, unreadable: str | None = None) -> dict[str, Any]:
        """Whether a report saw every finished request: rows this process could not write yet
        (its ledger's database down, or its disk unwritable) are missing from it, and all of
        them when the ledger could not be read (`unreadable` says why)."""
        writer = self.accounting.writer
        if writer is None:
            return {"backend": "off", "stale": False, "pending_rows": 0}
        pending = writer.stats().pending
        out = {"backend": writer.backend, "stale": writer.failing or pending > 0 or unreadable is not None,
               "pending_rows": pending}
        if unreadable is not None:
            out["unreadable"] = unreadable
        return out

    def _unreadable(self, exc: BaseException) -> LedgerUnavailable:
        store = self.accounting.store
        name = store.name if store is not None else "the ledger"
        return LedgerUnavailable(f"the ledger {name} cannot be read now ({type(exc).__name__}: {str(exc)[:200]}); "
                                 "requests are served and their rows queue meanwhile")

    async def team_usage(self, team: str) -> dict[str, Any]:
        """What `GET /v1/usage` shows a team about itself."""
        acct = self.accounting
        reader = await self.ledger()
        config = acct.snapshot.config.teams.get(team)
        budget = config.budget if config else None
        limits = config.limits if config else None
        periods = acct.periods()
        today = acct.counters.spent(team, periods.day)
        month = acct.counters.spent(team, periods.month)
        totals: dict[str, Any] = {}
        daily: dict[int, float] = {}
        since = periods.month_start
        unreadable = None
        if reader is not None:
            try:
                rows = await reports.usage(reader, since=periods.month_start, until=periods.now + 1, team=team,
                                           group_by="team", zone=acct.zone())
                totals = rows[0] if rows else {}
                since = await reports.observed_since(reader, periods.month_start, periods.now)
                daily = await reports.daily_spend(reader, team, since, periods.now + 1)
            except reader.store.errors as exc:  # spend and budget still come from the counters
                unreadable = self._unreadable(exc).message
        monthly = budget.monthly_usd if budget else None
        remaining = acct.budgets.remaining(team, budget, periods) if budget else None
        return {
            "object": "usage",
            "team": team,
            "day": periods.day,
            "month": periods.month,
            "spend": {"today_usd": round(today, 10), "month_usd": round(month, 10)},
            "requests": {"month": totals.get("requests", 0), "errors": totals.get("errors", 0),
                         "cache_hits": totals.get("cache_hits", 0)},
            "tokens": {"input": totals.get("input_tokens", 0), "output": totals.get("output_tokens", 0)},
            "budget": None if budget is None else {
                "daily_usd": budget.daily_usd,
                "monthly_usd": budget.monthly_usd,
                "remaining_today_usd": None if budget.daily_usd is None else round(budget.daily_usd - today, 10),
                "remaining_month_usd": None if monthly is None else round(monthly - month, 10),
                "alerts": budget.alerts,
                "exceeded": remaining is not None and remaining <= 0,
            },
            "limits": None if limits is None else limits.model_dump(exclude_none=True),
            "projection": reports.projection(month, daily, periods, monthly, since),
            "savings": {
                "cache_usd": totals.get("cache_savings_usd", 0.0),
                # what answers re-fetched after feedback invalidated their cache entry cost
                "cache_lost_usd": totals.get("savings_lost_usd", 0.0),
                "routing_usd": totals.get("routing_savings_usd", 0.0),
                "baseline_model": acct.snapshot.config.accounting.baseline_model,
            },
            "ledger": self.freshness(unreadable),
        }

    async def usage_report(self, *, since: str | None, until: str | None, team: str | None,
                           group_by: str) -> dict[str, Any]:
        """Ledger totals grouped by team, model, route, provider, user or day (`/admin/usage`)."""
        reader = await self.ledger()
        periods = self.accounting.periods()
        zone = self.accounting.zone()
        start = reports.parse_time(since, periods.month_start, zone)
        end = reports.parse_time(until, periods.now + 1, zone)
        rows = []
        if reader is not None:
            try:
                rows = await reports.usage(reader, since=start, until=end, team=team, group_by=group_by, zone=zone)
            except reader.store.errors as exc:
                raise self._unreadable(exc) from None
        return {"object": "usage_report", "since": reports.iso(start), "until": reports.iso(end),
                "group_by": group_by, "team": team, "data": rows, "ledger": self.freshness()}

    async def costs(self) -> dict[str, Any]:
        """`GET /admin/costs`: per-team spend, budgets and projections, 30 days of history, alerts."""
        reader = await self.ledger()
        periods = self.accounting.periods()
        teams = []
        for name in self.accounting.snapshot.config.teams:
            usage = await self.team_usage(name)
            teams.append({"team": name, "spend": usage["spend"], "budget": usage["budget"],
                          "projection": usage["projection"], "savings": usage["savings"]})
        history: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        unreadable = None
        if reader is not None:
            try:
                history = (await self.usage_report(since=str(periods.now - 30 * 86400), until=None, team=None,
                                                   group_by="day"))["data"]
                for row in await reader.alerts_since(periods.month_start):
                    if row["period_key"] in (periods.day, periods.month):
                        alerts.append({k: row[k] for k in row.keys()})
            except LedgerUnavailable as exc:  # spend and budgets still come from the counters
                unreadable = exc.message
            except reader.store.errors as exc:
                unreadable = self._unreadable(exc).message
        return {"object": "costs", "day": periods.day, "month": periods.month, "teams": teams,
                "history": history, "active_alerts": alerts, "ledger": self.freshness(unreadable)}
