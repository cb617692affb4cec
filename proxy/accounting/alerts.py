"""Budget alert events: a log line, a metric, a ledger row and an optional webhook POST.

`Budgets` decides that a threshold was crossed (once per process); with shared
counters a Redis `SET NX` makes it once across replicas too. Everything here runs in
the background: the request that crossed the line is not held up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from proxy.accounting.budgets import Alert
from proxy.tasks import spawn
from proxy.telemetry.logs import money

log = logging.getLogger("switchyard.budget")


class AlertDispatcher:
    def __init__(self, writer: Any, metrics: Any) -> None:
        self.writer = writer
        self.metrics = metrics
        self.webhook_for: Any = lambda team: None  # set by Accounting: team -> URL or None
        self.shared: Any = None  # RedisSpendCounters when alerts must be claimed in Redis
        self._session: Any = None
        self.sent: list[Alert] = []  # raised in this process (for /admin/costs and tests)

    def raise_alert(self, alert: Alert) -> None:
        spawn(self._raise(alert))

    async def _raise(self, alert: Alert) -> None:
        if self.shared is not None and not await self.shared.claim(
            f"alert:{alert.team}:{alert.period}:{alert.period_key}:{alert.threshold}"
        ):
            return  # another replica raised it
        self.sent.append(alert)
        log.warning(
            "budget alert: team %s has spent $%.4f, %d%% of its %s budget of $%g (%s)",
            alert.team, alert.spent_usd, round(alert.threshold * 100), alert.period, alert.budget_usd,
            alert.period_key,
        )
        if self.metrics is not None:
            self.metrics.budget_alert(alert.team, alert.period, alert.threshold)
        if self.writer is not None:
            self.writer.append_alert((alert.team, alert.period, alert.period_key, alert.threshold, alert.ts,
                                      alert.spent_usd, alert.budget_usd))
        url = self.webhook_for(alert.team)
        if url:
            await self._post(url, alert)

    async def _post(self, url: str, alert: Alert) -> None:
        import httpx  # rare and off the request path: the convenient client will do

        body = orjson.dumps({
            "event": "budget_alert", "team": alert.team, "period": alert.period, "period_key": alert.period_key,
            "threshold": alert.threshold, "spent_usd": money(alert.spent_usd), "budget_usd": alert.budget_usd,
            "at": alert.ts,
        })
        if self._session is None:
            self._session = httpx.AsyncClient(timeout=10)
        for attempt in range(3):
            try:
                r = await self._session.post(url, content=body, headers={"content-type": "application/json"})
                if r.status_code < 300:
                    return
                log.warning("budget alert webhook answered %d", r.status_code)
            except httpx.HTTPError as exc:
                log.warning("budget alert webhook failed: %s", exc or type(exc).__name__)
            await asyncio.sleep(0.5 * 2**attempt)
        if self.metrics is not None:
            self.metrics.webhook_failed()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.aclose()
