"""Ledger, budgets, alerts, rate limits and usage reports: pure parts table-driven, then the
whole app in process (mock provider with a price, a real webhook receiver)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC as UTC_TZ
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from proxy.accounting import ledger as ledger_module
from proxy.accounting.budgets import Budgets
from proxy.accounting.ledger import COLUMNS, LedgerWriter, migrate, open_db
from proxy.accounting.limits import Check, LocalLimiter, checks_for, duration, gcra
from proxy.accounting.reports import projection
from proxy.accounting.service import Accounting
from proxy.accounting.spend import SpendCounters, periods_at
from proxy.config import BudgetConfig, LimitsConfig
from proxy.errors import BudgetExceeded
from proxy.snapshot import snapshot_from_file
from proxy.tasks import drain
from support import FakeUpstream, chat_body, dead_port, eventually

UTC = ZoneInfo("UTC")
KEY = "sk-acct-team-1"
OTHER = "sk-acct-team-2"
ADMIN = "admin-acct-1"
PRICE = 1000.0  # USD per 1M tokens: a mock answer (7 in + ~14 out) costs about $0.02


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC_TZ).timestamp()


# ---------------------------------------------------------------- periods


@pytest.mark.parametrize(
    "at, zone, day, month",
    [
        ("2026-11-24T08:00:00", "UTC", "2026-11-24", "2026-11"),
        ("2026-11-30T23:59:59", "UTC", "2026-11-30", "2026-11"),
        ("2026-12-01T00:00:00", "UTC", "2026-12-01", "2026-12"),
        ("2026-12-31T23:59:59", "UTC", "2026-12-31", "2026-12"),
        ("2027-01-01T00:00:01", "UTC", "2027-01-01", "2027-01"),
        ("2026-12-01T03:00:00", "America/New_York", "2026-11-30", "2026-11"),  # still November there
        ("2026-11-30T23:30:00", "Asia/Tokyo", "2026-12-01", "2026-12"),
    ],
)
def test_periods(at, zone, day, month):
    p = periods_at(ts(at), ZoneInfo(zone))
    assert (p.day, p.month) == (day, month)
    assert p.month_start <= p.day_start <= p.now < p.month_end


def test_month_lengths():
    for at, days in (("2026-02-10T00:00:00", 28), ("2028-02-10T00:00:00", 29), ("2026-12-10T00:00:00", 31)):
        p = periods_at(ts(at), UTC)
        assert (p.month_end - p.month_start) / 86400 == days


# ---------------------------------------------------------------- GCRA


@pytest.mark.parametrize(
    "limit, cost, calls, allowed",
    [
        (3, 1, 3, [True, True, True]),
        (3, 1, 5, [True, True, True, False, False]),
        (1, 1, 2, [True, False]),
        (60, 1, 61, [True] * 60 + [False]),
    ],
)
def test_gcra_burst_then_refuse(limit, cost, calls, allowed):
    tat = None
    got = []
    for _ in range(calls):
        outcome, tat = gcra(tat, 1000.0, limit, cost)
        got.append(outcome.allowed)
    assert got == allowed


def test_gcra_refills_at_the_steady_rate():
    tat = None
    for _ in range(6):
        _, tat = gcra(tat, 0.0, 6, 1)  # 6 per minute: one every 10 s
    refused, _ = gcra(tat, 0.0, 6, 1)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(10)
    later, _ = gcra(tat, 10.0, 6, 1)
    assert later.allowed and later.remaining == 0


def test_gcra_remaining_counts_down():
    tat = None
    remaining = []
    for _ in range(4):
        outcome, tat = gcra(tat, 0.0, 4, 1)
        remaining.append(outcome.remaining)
    assert remaining == [3, 2, 1, 0]


def test_token_limit_admits_until_overdrawn_then_waits():
    limiter = LocalLimiter()
    check = (Check("t", 100, 0, "tokens", "team"),)
    assert limiter.take(check, 0.0)[0].allowed
    limiter.charge("t", 100, 250, 0.0)  # 2.5 minutes' worth
    refused = limiter.take(check, 1.0)[0]
    assert not refused.allowed and refused.retry_after_s == pytest.approx(89)
    assert limiter.take(check, 91.0)[0].allowed


def test_local_limiter_is_all_or_nothing():
    limiter = LocalLimiter()
    team, user = Check("team", 10, 1, "requests", "team"), Check("user", 1, 1, "requests", "user")
    assert all(o.allowed for o in limiter.take((team, user), 0.0))
    assert not all(o.allowed for o in limiter.take((team, user), 0.0))  # user over
    # the refused request did not use the team's allowance
    assert limiter.take((team,), 0.0)[0].remaining == 8


@pytest.mark.parametrize("seconds, text", [(0.02, "20ms"), (0.0, "0ms"), (1, "1s"), (1.2, "2s"), (59.5, "1m0s"),
                                           (360, "6m0s"), (61, "1m1s")])
def test_reset_format(seconds, text):
    assert duration(seconds) == text


# ---------------------------------------------------------------- budgets


def make_budgets() -> tuple[Budgets, list]:
    raised: list = []
    claimed: set = set()

    def claim(alert) -> bool:
        key = (alert.team, alert.period, alert.period_key, alert.threshold)
        if key in claimed:
            return False
        claimed.add(key)
        return True

    return Budgets(SpendCounters(), raised.append, claim), raised


def test_until_a_request_has_finished_they_go_one_at_a_time():
    """Nothing is known yet of what the team's requests cost: a burst could spend anything."""
    budgets, _ = make_budgets()
    budget = BudgetConfig(daily_usd=100.0)
    p = periods_at(ts("2026-11-24T10:00:00"), UTC)
    assert budgets.admit("a", budget, p)
    with pytest.raises(BudgetExceeded) as info:
        budgets.admit("a", budget, p)
    assert info.value.headers == [(b"retry-after", b"1")]
    budgets.release("a", None)  # an unpriced answer: known now, and free
    assert budgets.admit("a", budget, p) and budgets.admit("a", budget, p)


def test_budget_refuses_once_spent():
    budgets, _ = make_budgets()
    budget = BudgetConfig(daily_usd=1.0)
    p = periods_at(ts("2026-11-24T10:00:00"), UTC)
    assert budgets.admit("a", budget, p)
    budgets.release("a", 1.0)
    budgets.spend("a", 1.0, budget, p)
    with pytest.raises(BudgetExceeded) as info:
        budgets.admit("a", budget, p)
    assert info.value.status == 429 and info.value.type == "insufficient_quota"
    assert info.value.code == "budget_exceeded"
    # the next day starts afresh; the month keeps counting
    tomorrow = periods_at(ts("2026-11-25T00:00:01"), UTC)
    assert budgets.admit("a", budget, tomorrow)


@pytest.mark.parametrize(
    ("at", "zone", "daily", "monthly", "spent", "retry_after"),
    [
        ("2026-11-24T10:00:00", "UTC", 1.0, None, 1.0, 14 * 3600),  # until midnight
        ("2026-11-24T23:59:59.5", "UTC", 1.0, None, 1.0, 1),  # never 0: at least a second
        ("2026-11-24T10:00:00", "UTC", None, 5.0, 5.0, 6 * 86400 + 14 * 3600),  # until the 1st
        ("2026-11-24T10:00:00", "UTC", 1.0, 5.0, 1.0, 14 * 3600),  # only the day is spent
        ("2026-11-24T10:00:00", "UTC", 1.0, 1.0, 1.0, 6 * 86400 + 14 * 3600),  # both: the later reset
        # 01:30 in Berlin (ts() reads UTC) on a 23-hour day: 22.5 hours on the clock, 21.5 real ones
        ("2026-03-29T00:30:00", "Europe/Berlin", 1.0, None, 1.0, 21 * 3600 + 1800),
    ],
)
def test_a_spent_budget_says_when_to_retry(at, zone, daily, monthly, spent, retry_after):
    """retry-after is the time until the period resets, so an SDK's automatic retries are not wasted."""
    budgets, _ = make_budgets()
    budget = BudgetConfig(daily_usd=daily, monthly_usd=monthly)
    p = periods_at(ts(at), ZoneInfo(zone))
    budgets.spend("a", spent, budget, p)
    with pytest.raises(BudgetExceeded) as info:
        budgets.admit("a", budget, p)
    assert info.value.headers == [(b"retry-after", str(retry_after).encode())]


def test_a_budget_lowered_below_the_spend_raises_its_alerts_as_crossing_would():
    budgets, raised = make_budgets()
    p = periods_at(ts("2026-11-24T10:00:00"), UTC)
    budgets.spend("a", 6.0, BudgetConfig(daily_usd=10.0, alerts=[0.5]), p)
    assert [a.threshold for a in raised] == [0.5]
    budgets.check_alerts("a", BudgetConfig(daily_usd=10.0, alerts=[0.5]), p)
    assert len(raised) == 1  # unchanged budget: nothing new
    budgets.check_alerts("a", BudgetConfig(daily_usd=5.0, alerts=[0.5, 0.75]), p)  # a reload lowers it
    assert [(a.threshold, a.budget_usd) for a in raised[1:]] == [(0.75, 5.0), (1.0, 5.0)]
    budgets.check_alerts("a", BudgetConfig(daily_usd=5.0, alerts=[0.5, 0.75]), p)
    assert len(raised) == 3  # once per period and threshold


def test_monthly_budget_resets_at_the_month_boundary():
    budgets, _ = make_budgets()
    budget = BudgetConfig(monthly_usd=5.0)
    last = periods_at(ts("2026-11-30T23:59:59"), UTC)
    budgets.spend("a", 5.0, budget, last)
    with pytest.raises(BudgetExceeded):
        budgets.admit("a", budget, last)
    first = periods_at(ts("2026-12-01T00:00:00"), UTC)
    assert budgets.admit("a", budget, first)


def test_alerts_fire_once_per_threshold_and_period():
    budgets, raised = make_budgets()
    budget = BudgetConfig(daily_usd=10.0, alerts=[0.5, 0.75, 0.9])
    p = periods_at(ts("2026-11-24T10:00:00"), UTC)
    for _ in range(12):
        budgets.spend("a", 1.0, budget, p)
    assert [(a.period, a.threshold) for a in raised] == [("day", 0.5), ("day", 0.75), ("day", 0.9), ("day", 1.0)]
    assert raised[0].spent_usd == pytest.approx(5.0)
    nxt = periods_at(ts("2026-11-25T10:00:00"), UTC)
    budgets.spend("a", 6.0, budget, nxt)  # a new day: 0.5 again, in one jump
    assert [(a.period_key, a.threshold) for a in raised[4:]] == [("2026-11-25", 0.5)]


def test_one_jump_over_several_thresholds_raises_each():
    budgets, raised = make_budgets()
    budget = BudgetConfig(monthly_usd=10.0, alerts=[0.5, 0.75])
    budgets.spend("a", 20.0, budget, periods_at(ts("2026-11-24T10:00:00"), UTC))
    assert [a.threshold for a in raised] == [0.5, 0.75, 1.0]


def test_near_the_edge_only_one_request_at_a_time():
    budgets, _ = make_budgets()
    budget = BudgetConfig(daily_usd=1.0)
    p = periods_at(ts("2026-11-24T10:00:00"), UTC)
    assert budgets.admit("a", budget, p)
    budgets.release("a", 0.1)  # learns what a request costs: 0.1
    budgets.spend("a", 0.1, budget, p)
    admitted = 0
    try:
        for _ in range(50):
            budgets.admit("a", budget, p)
            admitted += 1
    except BudgetExceeded as exc:
        assert exc.headers == [(b"retry-after", b"1")]
    assert admitted == 9  # 0.9 left: 9 in flight may cost 0.9; a 10th could overshoot
    for _ in range(8):
        budgets.release("a", 0.1)
        budgets.spend("a", 0.1, budget, p)
    budgets.release("a", None)  # the last one failed: it cost nothing
    # 0.1 left, nothing in flight: one more may go (and overshoot by at most its own cost)
    assert budgets.admit("a", budget, p)
    with pytest.raises(BudgetExceeded):
        budgets.admit("a", budget, p)


# ---------------------------------------------------------------- projection


def test_projection_without_history_has_no_interval():
    p = periods_at(ts("2026-11-01T12:00:00"), UTC)
    out = projection(1.0, {0: 1.0}, p, monthly_budget=100.0)
    assert out["confidence"] is None and out["low_usd"] is None
    assert out["month_end_usd"] == pytest.approx(1.0 + 2.0 * 29.5)  # 1 $ in half a day
    assert out["over_budget"] is False


@pytest.mark.parametrize(
    ("since", "complete", "rate"),
    [
        (None, 29, 30.0 / 29.5),  # a ledger older than the month: every day before today counts
        ("2026-11-30T00:00:00", 0, 30.0 / 0.5),  # born today: half a day observed, no zero-spend days
        ("2026-11-28T12:00:00", 2, 15.0),  # two complete 24-hour spans since its first row
        ("2026-10-15T00:00:00", 29, 30.0 / 29.5),  # older than the month: the month's start applies
    ],
)
def test_projection_counts_only_the_days_the_ledger_saw(since, complete, rate):
    p = periods_at(ts("2026-11-30T12:00:00"), UTC)
    start = None if since is None else ts(since)
    first = p.month_start if start is None else max(start, p.month_start)
    daily = {i: 0.0 for i in range(40)}
    if start is not None and start > p.month_start:
        daily = {0: 15.0, 1: 15.0} if complete == 2 else {}
    out = projection(30.0, daily, p, monthly_budget=None, since=start)
    assert out["complete_days"] == complete
    if complete in (0, 2):
        assert out["daily_rate_usd"] == pytest.approx(rate)
    assert out["observed_since"].startswith(datetime.fromtimestamp(first, UTC_TZ).strftime("%Y-%m-%d"))


def test_projection_with_history_has_an_interval_around_the_mean():
    p = periods_at(ts("2026-11-11T00:00:00"), UTC)
    daily = {i: 10.0 + (1 if i % 2 else -1) for i in range(10)}  # 9, 11, 9, 11 ...
    out = projection(100.0, daily, p, monthly_budget=250.0)
    assert out["month_end_usd"] == pytest.approx(300.0)
    assert out["confidence"] == 0.95
    assert out["low_usd"] < 300.0 < out["high_usd"]
    assert out["chance_over_budget"] > 0.99
    steady = projection(100.0, {i: 10.0 for i in range(10)}, p, monthly_budget=350.0)
    assert steady["low_usd"] == steady["high_usd"] == pytest.approx(300.0)
    assert steady["chance_over_budget"] == 0.0


# ---------------------------------------------------------------- ledger writer


def row(i: int, team: str = "a", cost: float = 0.01) -> tuple:
    values = dict.fromkeys(COLUMNS)
    values.update(id=f"r{i}", ts=1000.0 + i, team=team, status=200, stream=0, cache="miss", cost_usd=cost,
                  input_tokens=1, output_tokens=2)
    return tuple(values[c] for c in COLUMNS)


def count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]


async def test_ledger_writes_in_batches_and_on_close(tmp_path):
    path = tmp_path / "ledger.db"
    writer = LedgerWriter(str(path), batch_size=10, flush_interval_s=60)
    await writer.start()
    for i in range(3):
        writer.append(row(i))
    await asyncio.sleep(0.2)  # a bounded wait that proves nothing is written yet
    assert not path.exists() or count(path) == 0  # a part batch waits for the interval
    for i in range(3, 25):
        writer.append(row(i))
    # a full batch wakes the writer, which writes all it has
    await eventually(lambda: path.exists() and count(path) == 25, ignore=(sqlite3.OperationalError,),
                     what="the full batch to be written")
    for i in range(25, 30):
        writer.append(row(i))
    await writer.close()
    assert count(path) == 30
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(ledger_module.MIGRATIONS)


@pytest.mark.parametrize("rows", [0, 1, 99, 100, 101, 250, 500])
async def test_sqlite_store_writes_every_row_exactly_whatever_the_batch_size(tmp_path, rows):
    # whole groups of ROWS_PER_INSERT go in one statement each, the rest row by row
    path = tmp_path / "ledger.db"
    store = ledger_module.SqliteStore(str(path))
    written = [row(i, team=f"t{i % 3}", cost=i / 1000) for i in range(rows)]
    await store.write(written, [])
    await store.close()
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    with sqlite3.connect(path) as db:
        got = db.execute(f"SELECT {columns} FROM requests ORDER BY ts").fetchall()
    assert got == written


async def test_a_rows_none_values_are_stored_as_sql_nulls(tmp_path):
    # the ledger's adapter for None (it spares sqlite3 a failed lookup per NULL) stores NULL
    path = tmp_path / "ledger.db"
    store = ledger_module.SqliteStore(str(path))
    written = [row(i) for i in range(ledger_module.ROWS_PER_INSERT + 3)]  # a group statement and single rows
    await store.write(written, [])
    await store.close()
    nulls = [c for c, v in zip(COLUMNS, written[0], strict=True) if v is None]
    assert len(nulls) >= 10
    with sqlite3.connect(path) as db:
        kinds = db.execute("SELECT " + ", ".join(f'typeof("{c}")' for c in nulls) + " FROM requests").fetchall()
        assert len(kinds) == len(written) and {kind for k in kinds for kind in k} == {"null"}
        assert db.execute('SELECT COUNT(*) FROM requests WHERE "user" IS NULL AND "ttft_ms" IS NULL').fetchone()[0] \
            == len(written)


async def test_a_failed_group_write_leaves_nothing_behind(tmp_path, monkeypatch):
    # the second group fails: the first group's rows must not stay (the writer retries them all)
    path = tmp_path / "ledger.db"
    store = ledger_module.SqliteStore(str(path))
    written = [row(i) for i in range(250)]
    written[150] = (None, *written[150][1:])  # id is NOT NULL: the second group's statement fails
    with pytest.raises(sqlite3.IntegrityError):
        await store.write(written, [])
    await store.reset()
    assert count(path) == 0
    written[150] = row(150)
    await store.write(written, [])
    await store.close()
    assert count(path) == 250


async def test_ledger_unwritable_then_recovers_without_losing_rows(tmp_path):
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the ledger's directory should be")
    path = blocker / "ledger.db"
    errors: list[str] = []
    writer = LedgerWriter(str(path), batch_size=5, flush_interval_s=0.05, on_error=errors.append)
    await writer.start()
    for i in range(12):
        writer.append(row(i))
    await eventually(lambda: errors and writer.write_errors >= 1, what="a failed write")
    assert errors and writer.stats().pending == 12 and writer.write_errors >= 1
    blocker.unlink()  # the operator fixes the volume
    blocker.mkdir()
    await writer.close()
    assert count(path) == 12


async def test_ledger_disk_full_rows_are_kept_and_retried(tmp_path, monkeypatch):
    path = tmp_path / "ledger.db"
    real_open = ledger_module.open_db
    full = {"on": True}

    async def open_full(p: str):
        db = await real_open(p)
        if full["on"]:  # SQLite's own "database or disk is full", as on a full volume
            pages = (await (await db.execute("PRAGMA page_count")).fetchone())[0]
            await db.execute(f"PRAGMA max_page_count = {pages}")
        return db

    monkeypatch.setattr(ledger_module, "open_db", open_full)
    errors: list[str] = []
    writer = LedgerWriter(str(path), batch_size=500, flush_interval_s=0.05, on_error=errors.append)
    await writer.start()
    for i in range(400):
        writer.append(row(i, cost=0.5))
    await eventually(lambda: "disk_full" in errors, what="a disk_full error")
    assert writer.stats().pending == 400
    full["on"] = False
    await writer.close()
    assert count(path) == 400


async def test_ledger_outage_backs_off_under_load_and_logs_once(tmp_path, caplog):
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the ledger's directory should be")
    pending: list[int] = []
    writer = LedgerWriter(str(blocker / "ledger.db"), batch_size=5, flush_interval_s=0.05, on_pending=pending.append)
    await writer.start()
    n = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + 2.0
    while loop.time() < end:  # a stream of requests: every few appends fill a batch
        for _ in range(5):
            writer.append(row(n))
            n += 1
        await asyncio.sleep(0.005)
    # backoff 0.25, 0.5, 1, 2 s...: a handful of attempts, not one per full batch
    assert 2 <= writer.attempts <= 8, f"{writer.attempts} write attempts in a 2 s outage"
    assert writer.write_errors == writer.attempts and writer.failing
    assert max(pending) > 1000 and writer.stats().pending == n  # the gauge follows the backlog
    blocker.unlink()
    blocker.mkdir()
    await writer.close()  # cuts the backoff short: the rows land
    assert count(blocker / "ledger.db") == n
    messages = [r.getMessage() for r in caplog.records if r.name == "switchyard.ledger"]
    assert len([m for m in messages if "write failed" in m]) == 1  # once per outage
    assert any(f"{n} rows written late" in m for m in messages)
    assert pending[-1] == 0


async def test_ledger_retention_deletes_old_rows_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module, "RETENTION_BATCH", 7)
    store = ledger_module.SqliteStore(str(tmp_path / "l.db"), retention_days=1)
    now = 1000.0 + 86400 * 2
    await store.write([row(i) for i in range(30)] + [row(100 + i) for i in range(3)], [])
    await store.write([tuple(now - 10 if c == "ts" else v for c, v in zip(COLUMNS, row(200 + i), strict=True))
                       for i in range(4)], [])
    await store.maintain(now)
    await store.close()
    assert count(tmp_path / "l.db") == 4


async def test_ledger_bounded_memory_counts_what_it_drops(tmp_path):
    errors: list[str] = []
    writer = LedgerWriter(str(tmp_path / "x" / "l.db"), max_pending=3, on_error=errors.append)
    for i in range(5):
        writer.append(row(i))
    assert writer.dropped == 2 and errors == ["dropped", "dropped"]
    assert writer.stats().pending == 3


async def test_migrations_are_idempotent_and_refuse_a_newer_schema(tmp_path):
    path = str(tmp_path / "l.db")
    db = await open_db(path)
    assert await migrate(db) == len(ledger_module.MIGRATIONS)
    await db.execute("PRAGMA user_version = 99")
    await db.commit()
    with pytest.raises(RuntimeError, match="newer"):
        await migrate(db)
    await db.close()


def schema_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def writable(path: Path) -> bool:
    """Whether another connection can take the file's write lock at once (nothing holds it)."""
    db = sqlite3.connect(path, timeout=0)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


async def test_processes_opening_one_fresh_ledger_together_migrate_it_once(tmp_path):
    path = tmp_path / "l.db"
    dbs = await asyncio.gather(*(open_db(str(path)) for _ in range(4)))
    for db in dbs:
        await db.close()
    assert schema_version(path) == len(ledger_module.MIGRATIONS) and writable(path)


async def test_a_migration_failing_half_way_leaves_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "l.db"
    db = await open_db(str(path))  # the shipped schema
    await db.close()
    monkeypatch.setattr(ledger_module, "MIGRATIONS", (*ledger_module.MIGRATIONS,
                        "CREATE TABLE extra (x INTEGER); CREATE INDEX broken ON missing (x);"))
    with pytest.raises(sqlite3.OperationalError, match="missing"):
        await open_db(str(path))
    assert schema_version(path) == len(ledger_module.MIGRATIONS) - 1 and writable(path)
    with sqlite3.connect(path) as plain:
        assert not plain.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchall()


async def test_a_cancelled_open_is_finished_once_and_never_doubled(tmp_path, monkeypatch):
    """Shutdown cancels the start, or a write's timeout cuts the open short, while the file
    is being migrated: the opening still runs to its end, the next write uses that same
    connection, and nothing is left holding the file's lock."""
    path = tmp_path / "l.db"
    real_open = ledger_module.open_db
    opened: list[str] = []

    async def slow_open(p: str):
        opened.append(p)
        await asyncio.sleep(0.05)
        return await real_open(p)

    monkeypatch.setattr(ledger_module, "open_db", slow_open)
    store = ledger_module.SqliteStore(str(path))
    first = asyncio.create_task(store.open())
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await store.write([row(i) for i in range(3)], [])
    assert len(opened) == 1 and count(path) == 3
    await store.close()
    assert writable(path)


async def test_a_store_closed_while_opening_closes_what_it_opened(tmp_path):
    path = tmp_path / "l.db"
    store = ledger_module.SqliteStore(str(path))
    opening = asyncio.create_task(store.open())
    await asyncio.sleep(0)
    await store.close()  # waits for the opening, then closes its connection
    await opening
    assert writable(path)
    await store.write([row(1)], [])  # a later write opens anew
    await store.close()
    assert count(path) == 1


@pytest.mark.parametrize(("script", "statements"), [
    ("", []),
    ("  \n ;; ", []),
    ("CREATE TABLE a (x)", ["CREATE TABLE a (x);"]),
    ("CREATE TABLE a (x); CREATE INDEX i ON a (x);", ["CREATE TABLE a (x);", "CREATE INDEX i ON a (x);"]),
    ("INSERT INTO a VALUES ('x;y'); SELECT 1;", ["INSERT INTO a VALUES ('x;y');", "SELECT 1;"]),
    ("\n    ALTER TABLE r ADD COLUMN p TEXT;\n    ALTER TABLE r ADD COLUMN q TEXT;\n",
     ["ALTER TABLE r ADD COLUMN p TEXT;", "ALTER TABLE r ADD COLUMN q TEXT;"]),
])
def test_sql_statements_split_a_script(script, statements):
    assert ledger_module.sql_statements(script) == statements


# ---------------------------------------------------------------- the app


def config(hook: str = "", *, budget: str = "", limits: str = "", extra: str = "") -> str:
    return f"""
server: {{admin_keys: ["{ADMIN}"]}}
ledger: {{path: ledger.db, flush_interval_s: 0.05}}
accounting: {{baseline_model: mock/expensive{', alert_webhook: "' + hook + '"' if hook else ''}}}
providers:
  mock: {{type: mock}}
pricing:
  mock/mock-fast: {{input: {PRICE}, output: {PRICE}}}
  mock/expensive: {{input: {PRICE * 10}, output: {PRICE * 10}}}
teams:
  search:
    keys: ["{KEY}"]
    {budget}
    {limits}
  other: {{keys: ["{OTHER}"]}}
routes:
  - {{name: fast, match: {{model: fast}}, to: mock/mock-fast}}
  - {{name: free, match: {{model: free}}, to: mock/unpriced}}
{extra}
"""


AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
async def hook() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as receiver:
        receiver.post("/hook").respond(204)
        yield receiver


async def test_every_request_gets_a_ledger_row(tmp_path, app_client):
    client = await app_client(config())
    try:
        assert (await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)).status_code == 200
        assert (await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=AUTH)).status_code == 200
        assert (await client.post("/v1/chat/completions", json=chat_body("nope"), headers=AUTH)).status_code == 404
        assert (await client.post("/v1/chat/completions", json=chat_body(), headers={"x": "no key"})).status_code == 401
    finally:
        await client.aclose()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM requests ORDER BY ts").fetchall()
    assert [(r["status"], r["stream"], r["route"]) for r in rows] == [(200, 0, "fast"), (200, 1, "fast"),
                                                                       (404, 0, None)]
    first, streamed = rows[0], rows[1]
    assert first["team"] == "search" and first["model"] == "mock-fast" and first["provider"] == "mock"
    assert first["input_tokens"] > 0 and first["cost_usd"] > 0
    assert streamed["input_tokens"] == first["input_tokens"]  # usage asked for upstream
    assert streamed["ttft_ms"] is not None and streamed["cost_usd"] == pytest.approx(first["cost_usd"])
    assert first["baseline_usd"] == pytest.approx(first["cost_usd"] * 10)


async def test_budget_refuses_with_insufficient_quota_and_alerts_by_webhook(hook, app_client):
    text = config(f"{hook.base_url}/hook", budget="budget: {daily_usd: 0.05, alerts: [0.5]}")
    client = await app_client(text)
    statuses = []
    for i in range(6):
        r = await client.post("/v1/chat/completions", json=chat_body(text=f"q{i}"), headers=AUTH)
        statuses.append(r.status_code)
        if r.status_code == 429:
            error = r.json()["error"]
            assert error["type"] == "insufficient_quota" and error["code"] == "budget_exceeded"
            assert "search" in error["message"]
    assert statuses[:2] == [200, 200] and 429 in statuses
    other = await client.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {OTHER}"})
    assert other.status_code == 200  # another team's budget is its own
    await drain()  # the alerts (and their webhook calls) run in the background
    sent = [c.json() for c in hook.post("/hook").calls.items]
    assert [(s["team"], s["period"], s["threshold"]) for s in sent] == [("search", "day", 0.5),
                                                                       ("search", "day", 1.0)]
    usage = (await client.get("/v1/usage", headers=AUTH)).json()
    assert usage["budget"]["exceeded"] is True
    assert usage["budget"]["remaining_today_usd"] <= 0
    costs = (await client.get("/admin/costs", headers=ADMIN_AUTH)).json()
    assert {(a["team"], a["threshold"]) for a in costs["active_alerts"]} == {("search", 0.5), ("search", 1.0)}
    text_metrics = (await client.get("/metrics")).text
    assert 'switchyard_budget_alerts_total{period="day",team="search",threshold="0.5"} 1.0' in text_metrics


async def test_a_reload_that_lowers_the_budget_below_the_spend_raises_the_alert(tmp_path, hook, app_client):
    text = config(f"{hook.base_url}/hook", budget="budget: {daily_usd: 100, alerts: [0.5]}")
    client = await app_client(text)
    r = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert r.status_code == 200
    spent = float(r.headers["x-switchyard-cost-usd"])
    (tmp_path / "proxy.yaml").write_text(text.replace("daily_usd: 100", f"daily_usd: {spent / 2:.6f}"))
    reload = await client.post("/admin/reload", headers=ADMIN_AUTH)
    assert reload.json()["result"] == "ok"
    await drain()  # the alerts (and their webhook calls) run in the background
    sent = [(c.json()["threshold"], c.json()["budget_usd"]) for c in hook.post("/hook").calls.items]
    assert sent == [(0.5, pytest.approx(spent / 2, rel=1e-3)), (1.0, pytest.approx(spent / 2, rel=1e-3))]
    refused = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert 0 < int(refused.headers["retry-after"]) <= 86400


async def test_a_reload_that_gives_a_team_terms_applies_them_to_the_next_request(tmp_path, app_client):
    """The terms accounting reads per request (a team's budget and limits, the baseline
    model) come from the serving snapshot: a reload that adds them holds the next request to them."""
    text = config().replace("accounting: {baseline_model: mock/expensive}", "accounting: {}")
    client = await app_client(text)
    try:
        before = await client.post("/v1/chat/completions", json=chat_body(text="a"), headers=AUTH)
        assert before.status_code == 200 and "x-ratelimit-limit-requests" not in before.headers
        budget = float(before.headers["x-switchyard-cost-usd"]) * 1.5  # room for one more such request
        (tmp_path / "proxy.yaml").write_text(config(budget=f"budget: {{daily_usd: {budget:.8f}}}",
                                                    limits="limits: {rpm: 5}"))
        assert (await client.post("/admin/reload", headers=ADMIN_AUTH)).json()["result"] == "ok"
        after = await client.post("/v1/chat/completions", json=chat_body(text="b"), headers=AUTH)
        assert after.status_code == 200 and after.headers["x-ratelimit-limit-requests"] == "5"
        refused = await client.post("/v1/chat/completions", json=chat_body(text="c"), headers=AUTH)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    finally:
        await client.aclose()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        baselines = [row[0] for row in db.execute("SELECT baseline_usd FROM requests WHERE status = 200 ORDER BY ts")]
    assert baselines[0] is None and baselines[1] > 0  # the baseline model came with the reload


async def test_budget_edge_under_concurrency_overshoots_by_at_most_one_request(app_client):
    client = await app_client(config(budget="budget: {daily_usd: 0.2}"))
    first = await client.post("/v1/chat/completions", json=chat_body(text="warm"), headers=AUTH)
    one = float(first.headers["x-switchyard-cost-usd"])
    results = await asyncio.gather(*(
        client.post("/v1/chat/completions", json=chat_body(text=f"c{i}"), headers=AUTH) for i in range(40)
    ))
    assert {r.status_code for r in results} <= {200, 429}
    spent = one + sum(float(r.headers.get("x-switchyard-cost-usd", 0)) for r in results)
    assert 0.2 - one <= spent <= 0.2 + one * 1.01
    usage = (await client.get("/v1/usage", headers=AUTH)).json()
    assert usage["spend"]["today_usd"] == pytest.approx(spent)


async def test_spend_restored_from_the_ledger_after_restart(app_client):
    text = config(budget="budget: {daily_usd: 0.06}")
    client = await app_client(text)
    try:
        for i in range(2):
            r = await client.post("/v1/chat/completions", json=chat_body(text=f"r{i}"), headers=AUTH)
            assert r.status_code == 200
        before = (await client.get("/v1/usage", headers=AUTH)).json()["spend"]["today_usd"]
    finally:
        await client.aclose()
    client = await app_client(text)
    after = (await client.get("/v1/usage", headers=AUTH)).json()["spend"]["today_usd"]
    assert after == pytest.approx(before) and after > 0


async def test_rate_limit_rpm_headers_and_429(app_client):
    client = await app_client(config(limits="limits: {rpm: 3, user_rpm: 1}"))
    ok = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert ok.headers["x-ratelimit-limit-requests"] == "3"
    assert ok.headers["x-ratelimit-remaining-requests"] == "2"
    assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
    alice = {**AUTH, "x-switchyard-user": "alice"}
    assert (await client.post("/v1/chat/completions", json=chat_body(), headers=alice)).status_code == 200
    limited = await client.post("/v1/chat/completions", json=chat_body(), headers=alice)
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "alice" in error["message"]
    assert int(limited.headers["retry-after"]) >= 1
    assert (await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)).status_code == 200
    team_limited = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert team_limited.status_code == 429
    assert team_limited.headers["x-ratelimit-remaining-requests"] == "0"
    other = await client.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {OTHER}"})
    assert other.status_code == 200 and "x-ratelimit-limit-requests" not in other.headers


async def test_rate_limit_tpm_counts_answered_tokens(app_client):
    client = await app_client(config(limits="limits: {tpm: 30}"))
    first = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "30"
    used = first.json()["usage"]["total_tokens"]
    assert used > 15
    second = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert second.status_code == 200  # admitted: the minute's tokens were not yet overdrawn
    third = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert third.status_code == 429 and third.json()["error"]["type"] == "tokens"


async def test_usage_endpoints(app_client):
    client = await app_client(config(budget="budget: {monthly_usd: 100}"))
    for i in range(3):
        await client.post("/v1/chat/completions", json=chat_body(text=f"u{i}"), headers=AUTH)
    await client.post("/v1/chat/completions", json=chat_body("free"), headers=AUTH)
    await client.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {OTHER}"})
    usage = (await client.get("/v1/usage", headers=AUTH)).json()
    assert usage["team"] == "search" and usage["requests"]["month"] == 4
    assert usage["spend"]["month_usd"] > 0
    assert usage["budget"]["monthly_usd"] == 100 and usage["budget"]["remaining_month_usd"] < 100
    assert usage["projection"]["month_end_usd"] >= usage["spend"]["month_usd"]
    # the ledger began today: no day of this month is complete, none counts as a zero-spend day
    assert usage["projection"]["complete_days"] == 0
    assert usage["projection"]["daily_rate_usd"] > 0
    assert usage["savings"]["routing_usd"] == pytest.approx(usage["spend"]["month_usd"] * 9)
    assert usage["savings"]["baseline_model"] == "mock/expensive"
    by_model = (await client.get("/admin/usage?group_by=model", headers=ADMIN_AUTH)).json()
    assert {r["key"] for r in by_model["data"]} == {"mock/mock-fast", "mock/unpriced"}
    by_team = (await client.get("/admin/usage?group_by=team&team=other", headers=ADMIN_AUTH)).json()
    assert [r["key"] for r in by_team["data"]] == ["other"]
    by_day = (await client.get("/admin/usage?group_by=day", headers=ADMIN_AUTH)).json()
    assert by_day["data"][0]["requests"] == 5
    future = (await client.get("/admin/usage?since=2099-01-01", headers=ADMIN_AUTH)).json()
    assert future["data"] == []
    for bad, param in (("group_by=color", "group_by"), ("since=yesterday-ish", "since")):
        r = await client.get(f"/admin/usage?{bad}", headers=ADMIN_AUTH)
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert (await client.get("/admin/usage?team=ghost", headers=ADMIN_AUTH)).status_code == 404
    assert (await client.get("/admin/usage", headers=AUTH)).status_code == 401
    assert (await client.get("/v1/usage")).status_code == 401
    costs = (await client.get("/admin/costs", headers=ADMIN_AUTH)).json()
    assert {t["team"] for t in costs["teams"]} == {"search", "other"}
    assert costs["history"][0]["requests"] == 5


@pytest.mark.integration  # the CLI, in a process of its own
async def test_cli_usage_prints_the_ledger(tmp_path, app_client):
    client = await app_client(config(budget="budget: {daily_usd: 5, monthly_usd: 50}"))
    try:
        await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    finally:
        await client.aclose()
    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "proxy", "usage", "--config", str(tmp_path / "proxy.yaml"), *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = await asyncio.to_thread(cli)
    assert "search" in out and "requests" in out and "month-end projection" in out
    assert "mock/mock-fast" in await asyncio.to_thread(cli, "--group-by", "model")


async def test_unwritable_ledger_does_not_fail_requests(tmp_path, app_client):
    (tmp_path / "ledger.db").mkdir()  # a directory where the file should be
    client = await app_client(config())
    try:
        for i in range(5):
            r = await client.post("/v1/chat/completions", json=chat_body(text=f"w{i}"), headers=AUTH)
            assert r.status_code == 200

        async def write_failed() -> str | None:
            text = (await client.get("/metrics")).text
            return text if 'switchyard_ledger_write_errors_total{kind="unwritable"}' in text else None

        metrics = await eventually(write_failed, what="a ledger write error in /metrics")
        assert 'switchyard_ledger_write_errors_total{kind="unwritable"}' in metrics

        async def backlog() -> str | None:  # the queue shows while it waits
            text = (await client.get("/metrics")).text
            return text if "switchyard_ledger_rows_pending 5.0" in text else None

        await eventually(backlog, what="switchyard_ledger_rows_pending 5 in /metrics")
        usage = (await client.get("/v1/usage", headers=AUTH)).json()  # the report says what it misses
        assert usage["spend"]["month_usd"] > 0  # from the counters, while the ledger cannot even be read
        assert {k: usage["ledger"][k] for k in ("backend", "stale", "pending_rows")} == \
            {"backend": "sqlite", "stale": True, "pending_rows": 5}
        assert "cannot be read now" in usage["ledger"]["unreadable"]
        report = await client.get("/admin/usage", headers=ADMIN_AUTH)  # all ledger: a clear 503
        assert report.status_code == 503 and report.json()["error"]["code"] == "ledger_unavailable"
        costs = (await client.get("/admin/costs", headers=ADMIN_AUTH)).json()  # the counters' part stands
        assert costs["ledger"]["stale"] is True and costs["teams"][0]["spend"]["month_usd"] > 0
    finally:
        os.rmdir(tmp_path / "ledger.db")
        await client.aclose()  # now writable: the queued rows land
    assert count(tmp_path / "ledger.db") == 5


async def test_redis_down_budgets_and_limits_enforced_locally(app_client):
    dead = dead_port()
    extra = ""
    text = config(budget="budget: {daily_usd: 0.05}", limits="limits: {rpm: 100}").replace(
        "accounting: {", f'accounting: {{backend: redis, url: "redis://127.0.0.1:{dead}/0", timeout_ms: 20, '
    ) + extra
    client = await app_client(text)
    statuses = []
    for i in range(6):
        r = await asyncio.wait_for(client.post("/v1/chat/completions", json=chat_body(text=f"d{i}"), headers=AUTH), 5)
        statuses.append(r.status_code)
    assert statuses[:2] == [200, 200] and statuses[-1] == 429


async def test_a_request_that_leaves_while_accounting_starts_does_not_stop_the_start(tmp_path, monkeypatch):
    # the first budgeted request starts the ledger and seeds today's spend; its client leaving
    # (its task cancelled) must not leave every later request failing, or budgets unseeded
    path = tmp_path / "proxy.yaml"
    path.write_text(config(budget="budget: {daily_usd: 5}"))
    ledger = tmp_path / "ledger.db"
    writer = LedgerWriter(str(ledger), batch_size=10, flush_interval_s=60)
    await writer.start()
    spent = dict.fromkeys(COLUMNS)
    spent.update(id="earlier", ts=datetime.now(UTC_TZ).timestamp(), team="search", status=200, stream=0,
                 cache="miss", cost_usd=1.25)
    writer.append(tuple(spent[c] for c in COLUMNS))
    await writer.close()
    accounting = Accounting(snapshot_from_file(str(path)))
    seeding, go_on = asyncio.Event(), asyncio.Event()
    reader = accounting.reader
    read = reader.spend_by_team_since

    async def slow_read(since: float) -> dict[str, float]:  # the ledger a cold disk gives back slowly
        seeding.set()
        await go_on.wait()
        return await read(since)

    monkeypatch.setattr(reader, "spend_by_team_since", slow_read)
    first = asyncio.ensure_future(accounting.ready())
    await seeding.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, 5)
    second = asyncio.ensure_future(accounting.ready())
    go_on.set()
    await asyncio.wait_for(second, 5)
    assert accounting.counters.spent("search", accounting.periods().day) == pytest.approx(1.25)
    await accounting.aclose()


async def test_closing_while_accounting_still_starts_is_quick(tmp_path, monkeypatch):
    path = tmp_path / "proxy.yaml"
    path.write_text(config(budget="budget: {daily_usd: 5}"))
    accounting = Accounting(snapshot_from_file(str(path)))

    async def never(since: float) -> dict[str, float]:
        await asyncio.Event().wait()
        return {}

    monkeypatch.setattr(accounting.reader, "spend_by_team_since", never)
    accounting.start_soon()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(accounting.aclose(), 5)


def test_remembered_checks_follow_a_reloaded_teams_limits():
    before = LimitsConfig(rpm=10, tpm=100)
    assert [c.limit for c in checks_for("team", None, before)] == [10, 100]
    assert checks_for("team", None, before) is checks_for("team", None, before)  # remembered
    after = LimitsConfig(rpm=20, user_rpm=2)  # a reload: a new limits object
    assert [(c.key, c.limit) for c in checks_for("team", "u", after)] == [("team:r", 20), ("team:u:u:r", 2)]
    assert [c.limit for c in checks_for("team", None, after)] == [20]
    del before  # its id may now be reused by another object: never mistaken for it
    assert [c.limit for c in checks_for("team", None, LimitsConfig(rpm=30))] == [30]


class _LockedAtFirst:
    """A connection whose journal-mode switch fails `times` times with `error`, as SQLite's
    can on a fresh file several processes open at once."""

    def __init__(self, times: int, error: str = "database is locked") -> None:
        self.left, self.error, self.calls = times, error, 0

    async def execute(self, sql: str) -> None:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise sqlite3.OperationalError(self.error)


async def test_switching_to_wal_waits_out_a_lock_sqlite_reports_at_once():
    db = _LockedAtFirst(3)
    await ledger_module._wal(db)
    assert db.calls == 4


@pytest.mark.parametrize(("times", "error", "calls"), [
    (1, "disk I/O error", 1),  # another failure is not waited out
    (10, "database is locked", 5),  # a lock that stays is reported
])
async def test_switching_to_wal_gives_up(times, error, calls):
    db = _LockedAtFirst(times, error)
    with pytest.raises(sqlite3.OperationalError, match=error):
        await ledger_module._wal(db, tries=5)
    assert db.calls == calls
