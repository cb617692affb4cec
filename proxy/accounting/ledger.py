"""The spend ledger: one SQLite row per proxied request, written off the request path.

`LedgerWriter.append()` only puts a row on a list. A background task writes the list
in batches (one transaction each, WAL mode) every `flush_interval_s` or as soon as a
batch is full. If the file cannot be written (read-only, disk full, locked) the rows
stay queued and are retried with backoff while requests keep flowing; `close()` (on
graceful shutdown) writes whatever is left. The schema is versioned with SQLite's
`user_version` and migrated forward at open.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

log = logging.getLogger("switchyard.ledger")

COLUMNS = (
    "id", "ts", "team", "user", "requested_model", "route", "provider", "model", "status", "error_kind",
    "stream", "cache", "input_tokens", "output_tokens", "cost_usd", "saved_usd", "baseline_usd",
    "latency_ms", "ttft_ms", "experiment", "variant",
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
)

Row = tuple[Any, ...]  # in COLUMNS order


@dataclass(frozen=True, slots=True)
class LedgerStats:
    pending: int
    written: int
    write_errors: int
    dropped: int


async def open_db(path: str) -> aiosqlite.Connection:
    """Open (creating if needed) and migrate the ledger file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    db = await aiosqlite.connect(path, timeout=5)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await migrate(db)
    except BaseException:
        await db.close()
        raise
    return db


async def migrate(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise RuntimeError(f"ledger schema version {version} is newer than this Switchyard knows ({len(MIGRATIONS)})")
    for target in range(version, len(MIGRATIONS)):
        await db.executescript(f"BEGIN; {MIGRATIONS[target]} PRAGMA user_version = {target + 1}; COMMIT;")
        log.info("ledger schema migrated to version %d", target + 1)
    return len(MIGRATIONS)


class LedgerWriter:
    def __init__(
        self,
        path: str,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        max_pending: int = 1_000_000,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.on_error = on_error or (lambda kind: None)
        self._pending: list[Row] = []
        self._events: list[tuple[str, Row]] = []  # rare rows of other tables: (INSERT sql, row)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._db: aiosqlite.Connection | None = None
        self._closing = False
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
            self._wake.set()

    def append_alert(self, row: Row) -> None:
        """(team, period, period_key, threshold, ts, spent_usd, budget_usd)"""
        self._events.append((_INSERT_ALERT, row))
        self._wake.set()

    def append_feedback(self, row: Row) -> None:
        """(request_id, team, ts, score, comment)"""
        self._events.append((_INSERT_FEEDBACK, row))
        self._wake.set()

    # --- lifecycle

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    async def close(self, timeout_s: float = 20.0) -> None:
        """Write everything queued (retrying until `timeout_s`), then close the file."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                log.error("ledger: %d rows could not be written before shutdown", len(self._pending))
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def flush(self, timeout_s: float = 2.0) -> bool:
        """Ask for everything queued to be written now; True once it is (for reports)."""
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

    # --- the writer task

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            if not self._closing:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval_s + backoff)
                except TimeoutError:
                    pass
            self._wake.clear()
            ok = await self._flush()
            if ok:
                backoff = 0.0
            else:
                backoff = min(max(backoff * 2, 0.25), 5.0)
                if self._closing:
                    await asyncio.sleep(backoff)
            if self._closing and not self._pending and not self._events:
                return

    async def _flush(self) -> bool:
        while self._pending or self._events:
            batch = self._pending[: self.batch_size]
            events = self._events[:]
            try:
                db = await self._connection()
                await db.executemany(_INSERT, batch)
                for sql, row in events:
                    await db.execute(sql, row)
                await db.commit()
            except (sqlite3.Error, OSError, ValueError) as exc:
                self.write_errors += 1
                self.on_error(_error_kind(exc))
                log.error("ledger write failed (%d rows queued, will retry): %s", len(self._pending), exc)
                await self._reset()
                return False
            del self._pending[: len(batch)]
            del self._events[: len(events)]
            self.written += len(batch)
        return True

    async def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            self._db = await open_db(self.path)
        return self._db

    async def _reset(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                await db.close()
            except (sqlite3.Error, OSError, ValueError):
                pass


_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
_INSERT_ALERT = "INSERT OR IGNORE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?)"
_INSERT_FEEDBACK = "INSERT INTO feedback VALUES (?, ?, ?, ?, ?)"


def _error_kind(exc: BaseException) -> str:
    text = str(exc).lower()
    if "full" in text or "no space" in text:
        return "disk_full"
    if "readonly" in text or "read-only" in text or "permission" in text or "unable to open" in text:
        return "unwritable"
    if "locked" in text or "busy" in text:
        return "locked"
    return "other"


# ---------------------------------------------------------------- reading


class LedgerReader:
    """Queries for reports, on a connection of their own (WAL lets them run beside writes)."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        if not os.path.exists(self.path):
            return []
        async with aiosqlite.connect(self.path, timeout=5) as db:
            db.row_factory = sqlite3.Row
            async with db.execute(sql, params) as cursor:
                return list(await cursor.fetchall())

    async def spend_by_team_since(self, since: float) -> dict[str, float]:
        rows = await self.query(
            "SELECT team, SUM(cost_usd) AS spent FROM requests WHERE ts >= ? AND team IS NOT NULL "
            "AND cost_usd IS NOT NULL GROUP BY team",
            (since,),
        )
        return {r["team"]: float(r["spent"] or 0) for r in rows}

    async def alerts_since(self, since: float) -> list[sqlite3.Row]:
        return await self.query("SELECT * FROM alerts WHERE ts >= ? ORDER BY ts", (since,))

