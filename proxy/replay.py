"""Replay recorded traffic through a candidate policy: what would move, cost and break.

`replay(current, candidate, rows, ...)` is pure: every ledger row is routed by `decide` under
both snapshots with the row's team, user, requested model, stream flag and time, and one
draw derived from the request id, so a weighted split or a `sticky: request` experiment
compares the same request on both sides. What cannot be replayed is said in `notes`:
prompts are not stored, so complexity conditions see no level (None); experiments assign
variants by the recorded user or team (as the server does), with no promoted winners.

Costs after the change are the recorded tokens at the candidate's price for the new target;
a cache hit stays free. Latency and error rate per target are what the ledger observed for
that target in the same rows. Budget spend is the candidate's cost per team in time order;
requests past an exhausted budget are still counted (the replay shows the demand, not what
the gate would have let through).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from proxy.accounting.ledger import LedgerReader
from proxy.accounting.spend import periods_at
from proxy.errors import ProxyError
from proxy.routing import RouteRequest, decide
from proxy.snapshot import Snapshot

UNKNOWN = "unknown"
UNKNOWN_TEAM = "unknown_team"
_COLUMNS = ('id', 'ts', 'team', '"user"', 'requested_model', 'provider', 'model', 'status', 'stream', 'cache',
            'input_tokens', 'output_tokens', 'cost_usd', 'latency_ms', 'prompt')


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where one policy sends one recorded request: a route and target, or the refusal's code."""

    route: str | None
    target: str | None
    refused: str | None = None

    @property
    def label(self) -> str:
        return self.target if self.target is not None else f"refused: {self.refused}"


async def read_rows(reader: LedgerReader, since: float, until: float, team: str | None) -> list[dict[str, Any]]:
    """The window's ledger rows in time order (ties by id, so a replay is repeatable)."""
    sql = f"SELECT {', '.join(_COLUMNS)} FROM requests WHERE ts >= ? AND ts < ?"
    params: list[Any] = [since, until]
    if team is not None:
        sql += " AND team = ?"
        params.append(team)
    return await reader.query(sql + " ORDER BY ts, id", params)


def draw(request_id: str) -> float:
    """A uniform number in [0, 1) fixed by the request id: the same on both sides of a replay."""
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) / 2**32


def route_row(snapshot: Snapshot, row: Mapping[str, Any]) -> Outcome:
    team = snapshot.teams.get(row["team"] or "")
    if team is None:
        return Outcome(None, None, UNKNOWN_TEAM)
    request = RouteRequest(row["requested_model"], team, row["user"], bool(row["stream"]),
                           datetime.fromtimestamp(row["ts"], UTC), draw(str(row["id"])), prompt=row["prompt"])
    try:
        decision = decide(snapshot, request)
    except ProxyError as exc:
        return Outcome(None, None, exc.code or exc.type)
    return Outcome(decision.route, decision.target.name)


def replay(current: Snapshot, candidate: Snapshot, rows: Sequence[Mapping[str, Any]], *, since: float,
           until: float, team: str | None = None, top: int = 10) -> dict[str, Any]:
    """The report (JSON-serialisable) of `rows` replayed under both policies; see the module docstring."""
    routes: dict[str, Counter[str]] = defaultdict(Counter)
    targets: dict[str, Counter[str]] = defaultdict(Counter)
    moves: Counter[tuple[str, str]] = Counter()
    refused: dict[str, Counter[str]] = {"before": Counter(), "after": Counter()}
    cost = _CostAfter(candidate)
    before_usd = 0.0
    after_rows: list[tuple[Mapping[str, Any], float | None]] = []
    rows = sorted(rows, key=lambda r: (r["ts"], str(r["id"])))  # budgets are spent in time order
    for row in rows:
        old, new = route_row(current, row), route_row(candidate, row)
        for side, outcome in (("before", old), ("after", new)):
            if outcome.refused is not None:
                refused[side][outcome.refused] += 1
            else:
                routes[outcome.route or ""][side] += 1
                targets[outcome.target or ""][side] += 1
        if old.label != new.label:
            moves[(old.label, new.label)] += 1
        before_usd += row["cost_usd"] or 0.0
        after_rows.append((row, cost.of(row, new)))
    notes = []
    if current.uses_complexity or candidate.uses_complexity:
        notes.append("complexity conditions were not evaluated: prompts are not recorded, so every request is "
                     "unclassified (a rule matching on complexity does not apply)")
    return {
        "window": {"since": _iso(since), "until": _iso(until), "team": team},
        "requests": len(rows),
        "routes": _sides(routes),
        "targets": _sides(targets),
        "moves": [{"from": a, "to": b, "requests": n}
                  for (a, b), n in sorted(moves.items(), key=lambda kv: (-kv[1], kv[0]))[:top]],
        "moved": sum(moves.values()),
        "refused": {side: dict(sorted(c.items())) for side, c in refused.items()},
        "cost": cost.report(before_usd),
        "expected": _expected(rows, targets),
        "budgets": _budgets(candidate, after_rows),
        "notes": notes,
    }


class _CostAfter:
    """The candidate's cost of each replayed row, and what could not be priced."""

    def __init__(self, candidate: Snapshot) -> None:
        self.prices = candidate.prices
        self.total = 0.0
        self.no_tokens = 0
        self.unpriced: Counter[str] = Counter()

    def of(self, row: Mapping[str, Any], outcome: Outcome) -> float | None:
        if outcome.target is None:
            return 0.0  # refused: never sent, nothing spent
        if row["cache"] == "hit":
            return 0.0
        if row["input_tokens"] is None and row["output_tokens"] is None:
            self.no_tokens += 1
            return None
        price = self.prices.price(outcome.target)
        if price is None:
            self.unpriced[outcome.target] += 1
            return None
        usd = price.cost({"prompt_tokens": row["input_tokens"] or 0, "completion_tokens": row["output_tokens"] or 0})
        self.total += usd
        return usd

    def report(self, before_usd: float) -> dict[str, Any]:
        return {
            "before_usd": round(before_usd, 10),
            "after_usd": round(self.total, 10),
            "unknown": {"requests": self.no_tokens + sum(self.unpriced.values()), "without_tokens": self.no_tokens,
                        "unpriced_targets": dict(sorted(self.unpriced.items()))},
        }


def _sides(counts: Mapping[str, Counter[str]]) -> dict[str, dict[str, int]]:
    return {name: {"before": c["before"], "after": c["after"]} for name, c in sorted(counts.items())}


def _expected(rows: Sequence[Mapping[str, Any]], targets: Mapping[str, Counter[str]]) -> dict[str, Any]:
    """Per target the candidate uses: mean latency of its successful answers (cache hits left
    out: they say nothing of the upstream) and its share of 5xx, as observed in the rows."""
    latencies: dict[str, list[float]] = defaultdict(list)
    seen: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for row in rows:
        if not row["provider"] or not row["model"]:
            continue
        name = f"{row['provider']}/{row['model']}"
        seen[name] += 1
        if row["status"] >= 500:
            errors[name] += 1
        elif row["status"] < 400 and row["cache"] != "hit" and row["latency_ms"] is not None:
            latencies[name].append(row["latency_ms"])
    out: dict[str, Any] = {}
    for name, c in sorted(targets.items()):
        if not c["after"]:
            continue
        lat = latencies.get(name)
        out[name] = {
            "requests": c["after"],
            "observed": seen[name],
            "latency_ms": round(sum(lat) / len(lat), 3) if lat else UNKNOWN,
            "error_rate": round(errors[name] / seen[name], 6) if seen[name] else UNKNOWN,
        }
    return out


def _budgets(candidate: Snapshot, rows: Sequence[tuple[Mapping[str, Any], float | None]]) -> dict[str, Any]:
    """Per team with a budget in the candidate: spend per day and month in the accounting
    zone, and when each budget would first have been spent (None: never in the window)."""
    zone = ZoneInfo(candidate.config.accounting.timezone)
    out: dict[str, Any] = {}
    for name, team in sorted(candidate.config.teams.items()):
        budget = team.budget
        if budget is None or (budget.daily_usd is None and budget.monthly_usd is None):
            continue
        days: dict[str, float] = {}
        months: dict[str, float] = {}
        exhausted: dict[str, str | None] = {"daily": None, "monthly": None}
        for row, usd in rows:
            if row["team"] != name or not usd:
                continue
            periods = periods_at(row["ts"], zone)
            days[periods.day] = days.get(periods.day, 0.0) + usd
            months[periods.month] = months.get(periods.month, 0.0) + usd
            for period, spent, limit in (("daily", days[periods.day], budget.daily_usd),
                                         ("monthly", months[periods.month], budget.monthly_usd)):
                if limit is not None and exhausted[period] is None and spent >= limit:
                    exhausted[period] = _iso(row["ts"])
        out[name] = {
            "daily_usd": budget.daily_usd,
            "monthly_usd": budget.monthly_usd,
            "days": [{"day": d, "spend_usd": round(v, 10)} for d, v in days.items()],
            "months": [{"month": m, "spend_usd": round(v, 10)} for m, v in months.items()],
            "daily_exhausted_at": exhausted["daily"],
            "monthly_exhausted_at": exhausted["monthly"],
        }
    return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


async def replay_ledger(reader: LedgerReader, current: Snapshot, candidate: Snapshot, *, since: float,
                        until: float, team: str | None = None, top: int = 10) -> dict[str, Any]:
    """Read the window's rows and replay them (the CLI and the admin API share this)."""
    rows = await read_rows(reader, since, until, team)
    return replay(current, candidate, rows, since=since, until=until, team=team, top=top)
