"""The spend ledger: one row per proxied request, written off the request path.

`LedgerWriter.append()` only puts a row on a list. A background task writes the list
in batches (one transaction each) every `flush_interval_s` or as soon as a batch is
full. Where the rows go is a `LedgerStore`: `SqliteStore` (a file, WAL mode; this
module) or `PostgresStore` (shared by replicas; `ledger_pg.py`). The writer's loop,
queue, backoff and shutdown drain exist once, here, for both.

If the store cannot be written (read-only file, full disk, PostgreSQL unreachable) the
rows stay queued in memory (up to `max_pending`, then the oldest go and are counted)
and are retried with backoff while requests keep flowing. New rows never cut a backoff
short (only `close()` does), and the failure is logged once per outage, then once more
when writes succeed again. `close()` (graceful shutdown) writes whatever is left.

Readers go through the same store: `query()` takes SQL with `?` placeholders (a store
that numbers them, PostgreSQL's `$1`, translates), and the few fragments that differ
between SQL dialects (a timestamp's local day, whole days) come from the store too.
Every SQL text here quotes `"user"`, a reserved word in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any, Generic, Protocol, TypeVar, cast
from zoneinfo import ZoneInfo

import aiosqlite

log = logging.getLogger("switchyard.ledger")

# sqlite3 asks every None it binds to adapt itself, through a lookup that fails by
# formatting an AttributeError and dropping it: a row's dozen NULL columns cost more than
# the rest of its binding, with the writer thread holding the GIL. An adapter for None is
# found in the adapter table first; `{}.get` is a C callable that answers None for None.
# Per row, 12 NULLs of 24: 4.1 µs -> 2.1.
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))

WRITE_TIMEOUT_S = 15.0  # the longest one write attempt (connect, migrate, one batch) may take

COLUMNS = (
    "id", "ts", "team", "user", "requested_model", "route", "provider", "model", "status", "error_kind",
    "stream", "cache", "input_tokens", "output_tokens", "cost_usd", "saved_usd", "baseline_usd",
    "latency_ms", "ttft_ms", "experiment", "variant", "prompt", "prompt_version", "cache_entry",
)

# each entry moves the schema from version i to i + 1; never edit one that has shipped
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE requests (
        id TEXT NOT NULL,
        ts REAL NOT NULL,
        team TEXT,
        user TEXT,
        requested_model TEXT,
        route TEXT,
        provider TEXT,
        model TEXT,
        status INTEGER NOT NULL,
        error_kind TEXT,
        stream INTEGER NOT NULL,
        cache TEXT NOT NULL,
        input_tokens INTEGER,
        output_tokens INTEGER,
        cost_usd REAL,
        saved_usd REAL,
        baseline_usd REAL,
        latency_ms REAL,
        ttft_ms REAL,
        experiment TEXT,
        variant TEXT
    );
    CREATE INDEX requests_team_ts ON requests (team, ts);
    CREATE INDEX requests_id ON requests (id);
    CREATE TABLE feedback (
        request_id TEXT NOT NULL,
        team TEXT NOT NULL,
        ts REAL NOT NULL,
        score REAL NOT NULL,
        comment TEXT
    );
    CREATE INDEX feedback_request ON feedback (request_id);
    CREATE TABLE alerts (
        team TEXT NOT NULL,
        period TEXT NOT NULL,
        period_key TEXT NOT NULL,
        threshold REAL NOT NULL,
        ts REAL NOT NULL,
        spent_usd REAL NOT NULL,
        budget_usd REAL NOT NULL,
        PRIMARY KEY (team, period, period_key, threshold)
    );
    """,
    # time-range scans (reports without a team, retention's batched deletes), the spend restored
    # at start without a lookup per row (covering), the first row's time; experiment statistics
    """
    CREATE INDEX requests_ts ON requests (ts, team, cost_usd);
    CREATE INDEX requests_experiment ON requests (experiment, variant) WHERE experiment IS NOT NULL;
    CREATE INDEX feedback_ts ON feedback (ts);
    """,
    # the registered prompt and version a request used (prompt reports); the cache entry its
    # answer was stored as or served from, so feedback on the request reaches that entry
    """
    ALTER TABLE requests ADD COLUMN prompt TEXT;
    ALTER TABLE requests ADD COLUMN prompt_version TEXT;
    ALTER TABLE requests ADD COLUMN cache_entry TEXT;
    CREATE INDEX requests_prompt ON requests (prompt, prompt_version) WHERE prompt IS NOT NULL;
    """,
)

Row = tuple[Any, ...]  # in COLUMNS order
Event = tuple[str, Row]  # ("alert" | "feedback", row): rare rows of the other tables

ALERT_COLUMNS = ("team", "period", "period_key", "threshold", "ts", "spent_usd", "budget_usd")
FEEDBACK_COLUMNS = ("request_id", "team", "ts", "score", "comment")
RETENTION_BATCH = 5000  # rows per DELETE when SQLite drops old rows: short transactions


class LedgerSchemaError(RuntimeError):
    """The ledger's schema is newer than this Switchyard knows: it refuses to write into it."""


@dataclass(frozen=True, slots=True)
class LedgerStats:
    pending: int
    written: int
    write_errors: int
    dropped: int


class LedgerStore(Protocol):
    """Where ledger rows live. One writer (the `LedgerWriter` task) calls `write`; any number
    of readers call `query`. `errors` are the exceptions a failed write or read may raise
    (the writer keeps its rows and retries on those, and only those)."""

    name: str  # for logs and the startup line: a path, or a URL without its password
    backend: str  # sqlite | postgresql
    shared: bool  # other processes write into it too (feedback may name their requests)
    errors: tuple[type[BaseException], ...]

    async def open(self) -> None:
        """Connect, create or migrate the schema (LedgerSchemaError when it is newer)."""
        ...

    async def write(self, rows: Sequence[Row], events: Sequence[Event]) -> None:
        """All of it in one transaction, or none of it (then raise one of `errors`)."""
        ...

    async def maintain(self, now: float) -> None:
        """Daily upkeep: retention (and, for PostgreSQL, next month's partition)."""
        ...

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    def day_key(self, zone: ZoneInfo, at: float) -> tuple[str, list[Any]]:
        """SQL for the local calendar day (YYYY-MM-DD) of `ts`, and its parameters."""
        ...

    def whole(self, expr: str) -> str:
        """SQL for the integer part of a non-negative number."""
        ...

    def error_kind(self, exc: BaseException) -> str: ...

    async def reset(self) -> None:
        """Drop the writer's connection after a failure: the next write reconnects."""
        ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- SQLite


async def open_db(path: str) -> aiosqlite.Connection:
    """Open (creating if needed) and migrate the ledger file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    db = await aiosqlite.connect(path, timeout=5)
    try:
        await _wal(db)
        await db.execute("PRAGMA synchronous=NORMAL")
        await migrate(db)
    except BaseException:
        await db.close()
        raise
    return db


async def _wal(db: aiosqlite.Connection, tries: int = 100) -> None:
    """Switch a file to WAL. On a fresh file opened by several processes at once, SQLite can
    refuse the switch with "database is locked" at once, without waiting its busy timeout:
    try again shortly (at most about two seconds)."""
    for attempt in range(tries):
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == tries - 1:
                raise
            await asyncio.sleep(0.02)


async def migrate(db: aiosqlite.Connection) -> int:
    """Forward to the newest schema in one transaction that holds the file's write lock, so
    that processes starting together on a fresh file migrate it once, and a migration that
    fails half-way leaves nothing behind (no partial schema, no transaction left open)."""
    if await _schema_version(db) == len(MIGRATIONS):
        return len(MIGRATIONS)
    await db.execute("BEGIN IMMEDIATE")  # waits (busy timeout) while another process migrates
    try:
        version = await _schema_version(db)  # read again under the lock: it may be done now
        for target in range(version, len(MIGRATIONS)):
            # one statement at a time: executescript() would commit the transaction first
            for statement in sql_statements(MIGRATIONS[target]):
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {target + 1}")
            log.info("ledger schema migrated to version %d", target + 1)
        await db.commit()
    except BaseException:
        await db.rollback()
        raise
    return len(MIGRATIONS)


async def _schema_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise LedgerSchemaError(f"ledger schema version {version} is newer than this Switchyard knows "
                                f"({len(MIGRATIONS)}): upgrade Switchyard, or point it at another ledger")
    return version


def sql_statements(script: str) -> list[str]:
    """The statements of a `;`-separated script (a `;` inside a literal does not split)."""
    statements: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\n;"):
                statements.append(current.strip())
            current = ""
    return statements


Conn = TypeVar("Conn")


class SharedOpening(Generic[Conn]):
    """A store's writer connection, opened by a task of its own that every caller awaits.

    A caller cancelled while it waits (a write cut off by its timeout, a start cancelled at
    shutdown) only stops waiting: the opening runs to its end, so it is never abandoned
    half-way (a migration's transaction left holding the file's write lock) and no second
    connection is opened beside it. `take()` hands the connection over for closing, an
    opening still under way included."""

    def __init__(self, opener: Callable[[], Coroutine[Any, Any, Conn]], *,
                 alive: Callable[[Conn], bool] = lambda conn: True) -> None:
        self._opener = opener
        self._alive = alive
        self._task: asyncio.Task[Conn] | None = None

    async def get(self) -> Conn:
        task = self._task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None
                                              or not self._alive(task.result()))):
            task = self._task = asyncio.get_running_loop().create_task(self._opener())
            task.add_done_callback(_seen)  # its callers may all have left: no "never retrieved"
        return await asyncio.shield(task)

    def current(self) -> Conn | None:
        """The connection when one is open, without waiting or opening one."""
        task = self._task
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    async def take(self, timeout_s: float = 10.0) -> Conn | None:
        """Forget the connection (the next `get` opens another) and return it, waiting up to
        `timeout_s` for an opening under way (then cancelling it: it cleans up after itself)."""
        task, self._task = self._task, None
        if task is None:
            return None
        if not task.done():
            await asyncio.wait((task,), timeout=timeout_s)
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))
        if task.cancelled() or task.exception() is not None:
            return None
        return task.result()


def _seen(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class SqliteStore:
    """A ledger file. The writer keeps one connection; each query opens its own (WAL lets
    reads run beside the writes)."""

    shared = False
    backend = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError, ValueError)

    def __init__(self, path: str, *, retention_days: float | None = None) -> None:
        self.path = path
        self.name = path
        self.retention_days = retention_days
        self._db = SharedOpening(lambda: open_db(self.path))

    async def open(self) -> None:
        await self._connection()

    async def _connection(self) -> aiosqlite.Connection:
        return await self._db.get()

    async def write(self, rows: Sequence[Row], events: Sequence[Event]) -> None:
        db = await self._connection()
        # whole groups as one statement each: a multi-row INSERT costs the writer thread
        # (and the GIL it holds while binding) about a quarter less per row than executemany
        whole = len(rows) - len(rows) % ROWS_PER_INSERT
        for start in range(0, whole, ROWS_PER_INSERT):
            await db.execute(_INSERT_GROUP, list(chain.from_iterable(rows[start:start + ROWS_PER_INSERT])))
        if whole < len(rows):
            await db.executemany(_INSERT, rows[whole:])
        for kind, row in events:
            await db.execute(_INSERT_EVENT[kind], row)
        await db.commit()

    async def maintain(self, now: float) -> None:
        """Delete rows older than `retention_days`, a batch per transaction; then refresh the
        planner's statistics, without which it walks the team index for a time-range query."""
        db = await self._connection()
        if self.retention_days is not None:
            await self._expire(db, now - self.retention_days * 86400)
        await db.execute("PRAGMA analysis_limit = 1000")  # bounded: sampled, never a full scan
        await db.execute("PRAGMA optimize")

    async def _expire(self, db: aiosqlite.Connection, cutoff: float) -> None:
        for table in ("requests", "feedback", "alerts"):
            deleted = 0
            while True:
                cursor = await db.execute(
                    f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE ts < ? LIMIT ?)",
                    (cutoff, RETENTION_BATCH))
                await db.commit()
                deleted += cursor.rowcount
                if cursor.rowcount < RETENTION_BATCH:
                    break
            if deleted:
                log.info("ledger retention: deleted %d %s rows older than %g days", deleted, table,
                         self.retention_days)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        # a connection of its own, opened, read and closed in one worker thread: nothing of it
        # outlives the call (aiosqlite's per-connection thread could answer after the loop closed)
        return await asyncio.to_thread(_read, self.path, sql, tuple(params))

    def day_key(self, zone: ZoneInfo, at: float) -> tuple[str, list[Any]]:
        # SQLite knows no time zones: the zone's offset at `at` (the report's end) stands for all
        return "strftime('%Y-%m-%d', ts + ?, 'unixepoch')", [utc_offset_s(zone, at)]

    def whole(self, expr: str) -> str:
        return f"CAST({expr} AS INTEGER)"

    def error_kind(self, exc: BaseException) -> str:
        if isinstance(exc, LedgerSchemaError):
            return "schema"
        text = str(exc).lower()
        if "full" in text or "no space" in text:
            return "disk_full"
        if "readonly" in text or "read-only" in text or "permission" in text or "unable to open" in text:
            return "unwritable"
        if "locked" in text or "busy" in text:
            return "locked"
        return "other"

    async def reset(self) -> None:
        db = await self._db.take()
        if db is not None:
            try:
                await db.close()
            except (sqlite3.Error, OSError, ValueError):
                pass

    async def close(self) -> None:
        await self.reset()


def _read(path: str, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    db = sqlite3.connect(path, timeout=5)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(sql, params).fetchall()]
    finally:
        db.close()


def utc_offset_s(zone: ZoneInfo, at: float) -> int:
    offset = datetime.fromtimestamp(at, zone).utcoffset()
    return int(offset.total_seconds()) if offset else 0


def _quoted(columns: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


_INSERT = f"INSERT INTO requests ({_quoted(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
ROWS_PER_INSERT = 100  # 2,400 parameters: far below SQLite's 32,766
_INSERT_GROUP = (f"INSERT INTO requests ({_quoted(COLUMNS)}) VALUES "
                 + ", ".join([f"({', '.join('?' for _ in COLUMNS)})"] * ROWS_PER_INSERT))
_INSERT_EVENT = {
    "alert": f"INSERT OR IGNORE INTO alerts ({_quoted(ALERT_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
    "feedback": f"INSERT INTO feedback ({_quoted(FEEDBACK_COLUMNS)}) VALUES (?, ?, ?, ?, ?)",
}


# ---------------------------------------------------------------- the writer


class LedgerWriter:
    def __init__(
        self,
        store: LedgerStore | str,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        max_pending: int = 1_000_000,
        on_error: Callable[[str], None] | None = None,
        on_pending: Callable[[int], None] | None = None,
        maintain_every_s: float = 86400.0,
    ) -> None:
        self.store: LedgerStore = SqliteStore(store) if isinstance(store, str) else store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.maintain_every_s = maintain_every_s
        self.on_error = on_error or (lambda kind: None)
        self.on_pending = on_pending or (lambda rows: None)
        self._pending: list[Row] = []
        self._events: list[Event] = []
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()  # the one thing that cuts a backoff short
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._backoff = 0.0
        self._reported = -1
        self._next_upkeep = 0.0  # monotonic time of the next `store.maintain`
        self._outage_failures = 0  # failed attempts since the last success
        self._outage_started = 0.0
        self.attempts = 0  # write attempts, failed or not (tests count them)
        self.written = 0
        self.write_errors = 0
        self.dropped = 0

    # --- the request path

    def append(self, row: Row) -> None:
        if len(self._pending) >= self.max_pending:
            self._pending.pop(0)  # memory is finite: the oldest unwritten row goes, and says so
            self.dropped += 1
            self.on_error("dropped")
        self._pending.append(row)
        if len(self._pending) >= self.batch_size:
            self._wake.set()  # ignored while backing off after a failure: see _wait

    def append_alert(self, row: Row) -> None:
        """(team, period, period_key, threshold, ts, spent_usd, budget_usd)"""
        self._events.append(("alert", row))
        self._wake.set()

    def append_feedback(self, row: Row) -> None:
        """(request_id, team, ts, score, comment)"""
        self._events.append(("feedback", row))
        self._wake.set()

    # --- lifecycle

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    async def close(self, timeout_s: float = 20.0) -> None:
        """Write everything queued (retrying until `timeout_s`), then close the store."""
        self._closing = True
        self._closed.set()
        self._wake.set()
        if self._task is None and (self._pending or self._events):
            await self.start()  # closed before it started: what was appended is still written
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                log.error("ledger %s: %d rows could not be written before shutdown", self.store.name,
                          len(self._pending))
        await self.store.close()

    async def flush(self, timeout_s: float = 2.0) -> bool:
        """Ask for everything queued to be written now; True once it is (for reports). While
        the store is failing this waits (up to `timeout_s`) and does not hurry the retry."""
        if self._task is None:
            return not self._pending
        self._wake.set()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (self._pending or self._events) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
            self._wake.set()
        return not self._pending

    def stats(self) -> LedgerStats:
        return LedgerStats(len(self._pending) + len(self._events), self.written, self.write_errors, self.dropped)

    @property
    def backend(self) -> str:
        return self.store.backend

    @property
    def failing(self) -> bool:
        """Whether the last write attempt failed (an outage is in progress)."""
        return self._outage_failures > 0

    # --- the writer task

    async def _run(self) -> None:
        while True:
            await self._wait()
            self._wake.clear()
            ok = await self._flush()
            self._report_pending()
            if ok:
                self._backoff = 0.0
                await self._upkeep()
            else:
                self._backoff = min(max(self._backoff * 2, 0.25), 5.0)
            if self._closing and not self._pending and not self._events:
                return

    async def _wait(self) -> None:
        """Until the next write attempt: a full batch or the flush interval when healthy; the
        whole backoff after a failure (appends do not cut it short, close() does, once)."""
        loop = asyncio.get_running_loop()
        if self._backoff and self._closing:
            await asyncio.sleep(self._backoff)
            return
        if self._backoff:
            deadline = loop.time() + self._backoff
            while not self._closed.is_set() and (left := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), min(left, self.flush_interval_s))
                self._report_pending()  # the backlog grows during an outage: say so as it does
            return
        if self._closing:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)

    def _report_pending(self) -> None:
        pending = len(self._pending) + len(self._events)
        if pending != self._reported:
            self._reported = pending
            self.on_pending(pending)

    async def _flush(self) -> bool:
        while self._pending or self._events:
            batch = self._pending[: self.batch_size]
            events = self._events[:]
            self.attempts += 1
            self._report_pending()
            try:
                # a write that hangs (a lock never granted, a connection silently gone) is cut
                # off and retried on a fresh connection like any failed one
                await asyncio.wait_for(self.store.write(batch, events), WRITE_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - whatever a driver raises, the writer must live on
                if not isinstance(exc, (*self.store.errors, LedgerSchemaError)):
                    log.error("ledger %s: unexpected %s from a write (retried): %s", self.store.name,
                              type(exc).__name__, exc)
                await self._failed(exc)
                return False
            if self._outage_failures:
                # back as soon as one write lands, not once the backlog is gone: under load the
                # backlog drains while new rows keep coming, and `failing` must not lag behind
                log.warning("ledger %s: writing again after %d failed attempts over %.1f s; %d rows written late",
                            self.store.name, self._outage_failures, time.monotonic() - self._outage_started,
                            len(self._pending) + len(self._events))
                self._outage_failures = 0
            del self._pending[: len(batch)]
            del self._events[: len(events)]
            self.written += len(batch)
        return True

    async def _failed(self, exc: BaseException) -> None:
        self.write_errors += 1
        self.on_error(self.store.error_kind(exc))
        if not self._outage_failures:  # once per outage, not once per attempt
            self._outage_started = time.monotonic()
            log.error("ledger %s: write failed (%d rows queued, kept and retried with backoff; "
                      "logged again when writes succeed): %s", self.store.name, len(self._pending), exc)
        self._outage_failures += 1
        with contextlib.suppress(*self.store.errors):
            await self.store.reset()

    async def _upkeep(self) -> None:
        """Retention and partitions, once a day, between batches (never while failing)."""
        now = time.monotonic()
        if now < self._next_upkeep or self._closing:
            return
        self._next_upkeep = now + self.maintain_every_s
        try:
            await self.store.maintain(time.time())
        except self.store.errors as exc:
            log.error("ledger %s: daily upkeep (retention, partitions) failed, retried in an hour: %s",
                      self.store.name, exc)
            self._next_upkeep = now + min(3600.0, self.maintain_every_s)


# ---------------------------------------------------------------- reading


class LedgerReader:
    """Queries for reports, through the store (on connections apart from the writer's)."""

    def __init__(self, store: LedgerStore | str) -> None:
        self.store: LedgerStore = SqliteStore(store) if isinstance(store, str) else store

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return await self.store.query(sql, params)

    def day_key(self, zone: ZoneInfo, at: float) -> tuple[str, list[Any]]:
        return self.store.day_key(zone, at)

    def whole(self, expr: str) -> str:
        return self.store.whole(expr)

    async def spend_by_team_since(self, since: float) -> dict[str, float]:
        rows = await self.query(
            "SELECT team, SUM(cost_usd) AS spent FROM requests WHERE ts >= ? AND team IS NOT NULL "
            "AND cost_usd IS NOT NULL GROUP BY team",
            (since,),
        )
        return {r["team"]: float(r["spent"] or 0) for r in rows}

    async def alerts_since(self, since: float) -> list[dict[str, Any]]:
        return await self.query("SELECT * FROM alerts WHERE ts >= ? ORDER BY ts", (since,))

    async def close(self) -> None:
        await self.store.close()
