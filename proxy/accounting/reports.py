"""Usage and cost reports from the ledger: what `/v1/usage`, `/admin/usage`, `/admin/costs`
and `switchyard usage` show.

Month-end projection: the month's spend so far plus the mean daily spend of the
month's complete days times the days left. Days before the ledger's first row were
not observed: they count neither as days nor as zero-spend days. With two or more complete days there is a
95% interval from Student's t over the daily spends (the uncertainty of each remaining
day plus that of the mean), and the chance of ending over the monthly budget.
"""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from proxy.accounting.ledger import LedgerReader
from proxy.accounting.spend import Periods

GROUPS = {
    "team": "team",
    "model": "COALESCE(provider || '/' || model, '(none)')",
    "route": "COALESCE(route, '(none)')",
    "provider": "COALESCE(provider, '(none)')",
    "user": "COALESCE(\"user\", '(none)')",  # quoted: a reserved word in PostgreSQL
    "day": "",  # the store's: SQLite and PostgreSQL tell a local day differently
}

# portable SQL (SQLite and PostgreSQL): CASE, not sums of booleans
_TOTALS = """
    COUNT(*) AS requests,
    SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors,
    SUM(CASE WHEN cache = 'hit' THEN 1 ELSE 0 END) AS cache_hits,
    COALESCE(SUM(input_tokens), 0) AS input_tokens,
    COALESCE(SUM(output_tokens), 0) AS output_tokens,
    COALESCE(SUM(cost_usd), 0) AS cost_usd,
    COALESCE(SUM(saved_usd), 0) AS cache_savings_usd,
    SUM(CASE WHEN cache = 'invalidated' THEN 1 ELSE 0 END) AS invalidated_misses,
    COALESCE(SUM(CASE WHEN cache = 'invalidated' THEN cost_usd END), 0) AS savings_lost_usd,
    COALESCE(SUM(CASE WHEN baseline_usd IS NOT NULL AND cost_usd IS NOT NULL
                      THEN baseline_usd - cost_usd END), 0) AS routing_savings_usd,
    SUM(CASE WHEN cost_usd IS NULL AND status < 400 AND cache != 'hit' THEN 1 ELSE 0 END) AS unpriced,
    AVG(latency_ms) AS avg_latency_ms
"""


def parse_time(value: str | None, default: float, zone: ZoneInfo) -> float:
    """ISO date or datetime (in the accounting zone when it has none), or epoch seconds."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.timestamp()


async def usage(
    reader: LedgerReader, *, since: float, until: float, team: str | None, group_by: str, zone: ZoneInfo
) -> list[dict[str, Any]]:
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    expr, params = reader.day_key(zone, until) if group_by == "day" else (GROUPS[group_by], [])
    where = "ts >= ? AND ts < ?"
    params += [since, until]
    if team is not None:
        where += " AND team = ?"
        params.append(team)
    order = "key" if group_by == "day" else "cost_usd DESC"
    sql = f"SELECT {expr} AS key, {_TOTALS} FROM requests WHERE {where} GROUP BY key ORDER BY {order}"
    return [_row(r) for r in await reader.query(sql, params)]


def _row(r: Any) -> dict[str, Any]:
    out = dict(r)
    for name in ("cost_usd", "cache_savings_usd", "savings_lost_usd", "routing_savings_usd"):
        out[name] = round(out[name] or 0.0, 10)
    if out.get("avg_latency_ms") is not None:
        out["avg_latency_ms"] = round(out["avg_latency_ms"], 3)
    return out


async def daily_spend(reader: LedgerReader, team: str | None, since: float, until: float) -> dict[int, float]:
    """Spend per 24 h bucket counted from `since` (bucket 0 is the first day)."""
    where = "ts >= ? AND ts < ? AND cost_usd IS NOT NULL"
    params: list[Any] = [since, since, until]
    if team is not None:
        where += " AND team = ?"
        params.append(team)
    rows = await reader.query(
        f"SELECT {reader.whole('(ts - ?) / 86400')} AS day, SUM(cost_usd) AS spent FROM requests "
        f"WHERE {where} GROUP BY day", params,
    )
    return {int(r["day"]): float(r["spent"] or 0) for r in rows}


async def observed_since(reader: LedgerReader, month_start: float, now: float) -> float:
    """Where this month's history begins: the month's start, or the ledger's first row when
    the ledger is younger. Days before it were not observed, and are not zero-spend days."""
    rows = await reader.query("SELECT MIN(ts) AS first FROM requests", ())
    first = rows[0]["first"] if rows else None
    return max(month_start, float(first)) if first is not None else now


def projection(spent_month: float, daily: dict[int, float], periods: Periods,
               monthly_budget: float | None, since: float | None = None) -> dict[str, Any]:
    """`daily` holds spend per 24 h bucket counted from `since` (default: the month's start)."""
    start = periods.month_start if since is None else max(since, periods.month_start)
    elapsed = max((periods.now - start) / 86400, 1 / 1440)
    remaining = max((periods.month_end - periods.now) / 86400, 0.0)
    complete = [daily.get(i, 0.0) for i in range(int(elapsed))]
    rate = statistics.fmean(complete) if complete else spent_month / elapsed
    projected = spent_month + rate * remaining
    out: dict[str, Any] = {
        "month_end_usd": round(projected, 6),
        "daily_rate_usd": round(rate, 6),
        "days_remaining": round(remaining, 2),
        "complete_days": len(complete),
        "observed_since": iso(start),
        "confidence": None,
        "low_usd": None,
        "high_usd": None,
        "chance_over_budget": None,
    }
    if len(complete) < 2:
        out["note"] = "an interval needs at least two complete days of history this month"
        if monthly_budget is not None:
            out["over_budget"] = projected > monthly_budget
        return out
    from scipy import stats  # imported here: reports are rare, the import is not cheap

    k = len(complete)
    sd = statistics.stdev(complete)
    scale = sd * math.sqrt(remaining + remaining**2 / k)
    t = float(stats.t.ppf(0.975, k - 1))
    out.update(
        confidence=0.95,
        low_usd=round(max(spent_month, projected - t * scale), 6),
        high_usd=round(projected + t * scale, 6),
    )
    if monthly_budget is not None:
        out["over_budget"] = projected > monthly_budget
        if scale > 0:
            out["chance_over_budget"] = round(float(stats.t.sf((monthly_budget - projected) / scale, k - 1)), 4)
        else:
            out["chance_over_budget"] = 1.0 if projected > monthly_budget else 0.0
    return out


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
