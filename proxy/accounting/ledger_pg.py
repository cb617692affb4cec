"""The ledger on PostgreSQL: one table shared by every replica and worker (asyncpg's module).

Schema (versioned in `switchyard_schema`, migrated forward at start under an advisory
lock so replicas starting together migrate once; a newer schema is refused):

- `requests`, range-partitioned by month on `ts` (epoch seconds, double precision: the
  same numbers as SQLite's REAL and as every period boundary the code computes, so rows
  copy across unchanged and range filters need no conversion; day grouping converts with
  `to_timestamp(ts) AT TIME ZONE zone`). Partitions are UTC months named `requests_pYYYY_MM`,
  the current and the next one created at start and daily; a DEFAULT partition catches
  anything outside them. Retention drops whole partitions, so it never deletes row by row.
  Indexes: primary key (id, ts) — feedback's lookup by id and de-duplication of retried
  batches; (team, ts) — a team's usage, costs and daily spend; (ts) INCLUDE (team,
  cost_usd) — time-range scans of reports over all teams, the spend restored at start
  (index-only) and the ledger's first row (MIN(ts), read by every projection: a BRIN index
  cannot answer it, and without this it read every partition's whole team index);
  (experiment, variant) WHERE experiment IS NOT NULL — experiment statistics.
- `feedback` (primary key request_id, ts) and `alerts` (primary key team, period,
  period_key, threshold): written with ON CONFLICT DO NOTHING.

Rows go in by COPY (binary) into a session-temporary staging table and on with one
`INSERT ... SELECT ... ON CONFLICT DO NOTHING`: the speed of COPY, and a batch that is
retried after an ambiguous failure (committed, but the answer lost) is not doubled.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from proxy.accounting.ledger import (
    ALERT_COLUMNS,
    COLUMNS,
    FEEDBACK_COLUMNS,
    Event,
    LedgerSchemaError,
    Row,
    SharedOpening,
)
from proxy.redis_guard import redacted_url

log = logging.getLogger("switchyard.ledger")

# pg_advisory_xact_lock key for migrations and partition upkeep: "swyd" + "ledg"
LOCK_KEY = 0x7377_7964_6C65_6467

# each entry moves the schema from version i to i + 1; never edit one that has shipped
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE requests (
        id text NOT NULL,
        ts double precision NOT NULL,
        team text,
        "user" text,
        requested_model text,
        route text,
        provider text,
        model text,
        status integer NOT NULL,
        error_kind text,
        stream integer NOT NULL,
        cache text NOT NULL,
        input_tokens integer,
        output_tokens integer,
        cost_usd double precision,
        saved_usd double precision,
        baseline_usd double precision,
        latency_ms double precision,
        ttft_ms double precision,
        experiment text,
        variant text,
        PRIMARY KEY (id, ts)
    ) PARTITION BY RANGE (ts);
    CREATE TABLE requests_default PARTITION OF requests DEFAULT;
    CREATE INDEX requests_team_ts ON requests (team, ts);
    CREATE INDEX requests_ts ON requests (ts) INCLUDE (team, cost_usd);
    CREATE INDEX requests_experiment ON requests (experiment, variant) WHERE experiment IS NOT NULL;
    CREATE TABLE feedback (
        request_id text NOT NULL,
        team text NOT NULL,
        ts double precision NOT NULL,
        score double precision NOT NULL,
        comment text,
        PRIMARY KEY (request_id, ts)
    );
    CREATE TABLE alerts (
        team text NOT NULL,
        period text NOT NULL,
        period_key text NOT NULL,
        threshold double precision NOT NULL,
        ts double precision NOT NULL,
        spent_usd double precision NOT NULL,
        budget_usd double precision NOT NULL,
        PRIMARY KEY (team, period, period_key, threshold)
    );
    CREATE INDEX alerts_ts ON alerts (ts);
    """,
    # see ledger.py's second migration
    """
    ALTER TABLE requests ADD COLUMN prompt text, ADD COLUMN prompt_version text, ADD COLUMN cache_entry text;
    CREATE INDEX requests_prompt ON requests (prompt, prompt_version) WHERE prompt IS NOT NULL;
    """,
)

_PARTITION = re.compile(r"^requests_p(\d{4})_(\d{2})$")


def _quoted(columns: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


_FROM_STAGE = f"INSERT INTO requests ({_quoted(COLUMNS)}) SELECT {_quoted(COLUMNS)} FROM requests_stage " \
              "ON CONFLICT DO NOTHING"
_INSERT_EVENT = {
    "alert": f"INSERT INTO alerts ({_quoted(ALERT_COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
             "ON CONFLICT DO NOTHING",
    "feedback": f"INSERT INTO feedback ({_quoted(FEEDBACK_COLUMNS)}) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT DO NOTHING",
}


_EVENT_OF = {"alerts": "alert", "feedback": "feedback"}


def _opt(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else kind(v)


# binary COPY wants exact types: a row that SQLite would take (an int where a float goes)
# must not become a batch that fails forever
_COERCE: dict[str, Callable[[Any], Any]] = {c: _opt(str) for c in COLUMNS} | {
    c: _opt(float) for c in ("ts", "cost_usd", "saved_usd", "baseline_usd", "latency_ms", "ttft_ms")
} | {c: _opt(int) for c in ("status", "stream", "input_tokens", "output_tokens")}
_COERCERS = tuple(_COERCE[c] for c in COLUMNS)


def coerce(row: Row) -> Row:
    return tuple(f(v) for f, v in zip(_COERCERS, row, strict=True))


@lru_cache(maxsize=256)
def numbered(sql: str) -> str:
    """`?` placeholders (outside string literals) as PostgreSQL's `$1, $2, ...`."""
    out: list[str] = []
    n = 0
    quoted = False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        if ch == "?" and not quoted:
            n += 1
            out.append(f"${n}")
        else:
            out.append(ch)
    return "".join(out)


def month_start(year: int, month: int) -> float:
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def months_between(first: float, last: float) -> list[tuple[int, int]]:
    """The UTC (year, month) of `first`, of `last`, and of every month between."""
    a, b = datetime.fromtimestamp(first, UTC), datetime.fromtimestamp(last, UTC)
    out, ym = [], (a.year, a.month)
    while ym <= (b.year, b.month):
        out.append(ym)
        ym = next_month(*ym)
    return out


class PostgresStore:
    shared = True
    backend = "postgresql"
    errors: tuple[type[BaseException], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                                               TimeoutError)

    def __init__(self, url: str, *, retention_days: float | None = None, connect_timeout_s: float = 5.0,
                 command_timeout_s: float = 30.0, pool_size: int = 4) -> None:
        self.url = url
        self.name = redacted_url(url)
        self.retention_days = retention_days
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.pool_size = pool_size
        self._conn: SharedOpening[asyncpg.Connection] = SharedOpening(
            self._open_writer, alive=lambda conn: not conn.is_closed())
        self._pool: asyncpg.Pool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None

    # --- the writer's connection

    async def open(self) -> None:
        await self._connection()

    async def _connection(self) -> asyncpg.Connection:
        return await self._conn.get()

    async def _open_writer(self) -> asyncpg.Connection:
        conn = await self._connect()
        try:
            await self.migrate(conn)
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS requests_stage "
                               "(LIKE requests) ON COMMIT DELETE ROWS")
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, timeout=self.connect_timeout_s,
                                     command_timeout=self.command_timeout_s)

    async def migrate(self, conn: asyncpg.Connection, now: float | None = None) -> int:
        """Forward to the newest schema, once however many replicas start together."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await conn.execute("CREATE TABLE IF NOT EXISTS switchyard_schema (version integer NOT NULL)")
            version = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM switchyard_schema"))
            if version > len(MIGRATIONS):
                raise LedgerSchemaError(
                    f"ledger schema version {version} at {self.name} is newer than this Switchyard knows "
                    f"({len(MIGRATIONS)}): upgrade Switchyard, or point ledger.url at another database")
            for target in range(version, len(MIGRATIONS)):
                await conn.execute(MIGRATIONS[target])
                log.info("ledger %s: schema migrated to version %d", self.name, target + 1)
            if version < len(MIGRATIONS):
                await conn.execute("DELETE FROM switchyard_schema")
                await conn.execute("INSERT INTO switchyard_schema (version) VALUES ($1)", len(MIGRATIONS))
            at = datetime.now(UTC).timestamp() if now is None else now
            await self._partitions(conn, at, at + 32 * 86400)
        return len(MIGRATIONS)

    async def write(self, rows: Sequence[Row], events: Sequence[Event]) -> None:
        conn = await self._connection()
        async with conn.transaction():
            await self._write_rows(conn, rows)
            for kind in ("alert", "feedback"):
                chosen = [row for k, row in events if k == kind]
                if chosen:
                    await conn.executemany(_INSERT_EVENT[kind], chosen)

    async def _write_rows(self, conn: asyncpg.Connection, rows: Sequence[Row]) -> int:
        """COPY into the staging table, then on into `requests`; the number of new rows."""
        if not rows:
            return 0
        await conn.copy_records_to_table("requests_stage", records=[coerce(r) for r in rows], columns=COLUMNS)
        status = await conn.execute(_FROM_STAGE)
        await conn.execute("TRUNCATE requests_stage")  # ON COMMIT would too; the caller may not commit yet
        return int(status.split()[-1])

    # --- partitions and retention

    async def maintain(self, now: float) -> None:
        conn = await self._connection()
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await self._partitions(conn, now, now + 32 * 86400)
            if self.retention_days is not None:
                await self._retain(conn, now - self.retention_days * 86400)

    async def ensure_partitions(self, first: float, last: float) -> None:
        """Partitions for every month from `first` to `last` (a migration of old rows needs them)."""
        conn = await self._connection()
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await self._partitions(conn, first, last)

    async def partitions(self) -> list[str]:
        """The monthly partitions there are, oldest first."""
        conn = await self._connection()
        rows = await conn.fetch("SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                "WHERE i.inhparent = 'requests'::regclass ORDER BY c.relname")
        return [r["name"] for r in rows if _PARTITION.match(r["name"])]

    async def _partitions(self, conn: asyncpg.Connection, first: float, last: float) -> None:
        """A partition for every UTC month from `first` to `last` (the caller holds the lock)."""
        for year, month in months_between(first, last):
            name = f"requests_p{year:04d}_{month:02d}"
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
            if exists:
                continue
            upper = next_month(year, month)
            try:
                async with conn.transaction():  # a savepoint: a failure here spoils nothing else
                    await conn.execute(f"CREATE TABLE {name} PARTITION OF requests FOR VALUES FROM "
                                       f"({month_start(year, month)!r}) TO ({month_start(*upper)!r})")
            except asyncpg.PostgresError as exc:
                # rows of that month already sit in the default partition (a clock that jumped):
                # they stay there, still read and still counted
                log.warning("ledger %s: cannot create partition %s (rows stay in requests_default): %s",
                            self.name, name, exc)

    async def _retain(self, conn: asyncpg.Connection, cutoff: float) -> None:
        names = await conn.fetch("SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                 "WHERE i.inhparent = 'requests'::regclass")
        for record in names:
            m = _PARTITION.match(record["name"])
            if m and month_start(*next_month(int(m.group(1)), int(m.group(2)))) <= cutoff:
                await conn.execute(f"DROP TABLE {record['name']}")
                log.info("ledger %s: retention dropped partition %s", self.name, record["name"])
        for table in ("requests_default", "feedback", "alerts"):
            await conn.execute(f"DELETE FROM {table} WHERE ts < $1", cutoff)

    # --- reading

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        pool = await self._reading_pool()
        async with pool.acquire() as conn:
            rows = await conn.fetch(numbered(sql), *params)
        return [dict(r) for r in rows]

    async def _reading_pool(self) -> asyncpg.Pool:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool_loop is not loop:
            # a pool belongs to its event loop (the CLI may run more than one)
            self._pool = await asyncpg.create_pool(self.url, min_size=0, max_size=self.pool_size,
                                                   timeout=self.connect_timeout_s,
                                                   command_timeout=self.command_timeout_s)
            self._pool_loop = loop
        return self._pool

    def day_key(self, zone: ZoneInfo, at: float) -> tuple[str, list[Any]]:
        return "to_char(to_timestamp(ts) AT TIME ZONE ?, 'YYYY-MM-DD')", [zone.key]

    def whole(self, expr: str) -> str:
        return f"CAST(floor({expr}) AS integer)"

    def error_kind(self, exc: BaseException) -> str:
        if isinstance(exc, LedgerSchemaError):
            return "schema"
        if isinstance(exc, (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                            asyncpg.CannotConnectNowError)):
            return "unreachable"
        if isinstance(exc, TimeoutError):
            return "timeout"
        if isinstance(exc, asyncpg.DiskFullError):
            return "disk_full"
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            return "unwritable"
        return "other"

    async def reset(self) -> None:
        conn = await self._conn.take()
        if conn is not None:
            conn.terminate()  # no goodbye over a connection that just failed: it may hang

    async def close(self) -> None:
        conn = await self._conn.take()
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 5)
            except self.errors:
                conn.terminate()
        pool, self._pool = self._pool, None
        if pool is not None and self._pool_loop is asyncio.get_running_loop():
            try:
                await asyncio.wait_for(pool.close(), 5)
            except self.errors:
                pool.terminate()


# ---------------------------------------------------------------- SQLite to PostgreSQL


async def copy_sqlite(source: str, store: PostgresStore, *, batch_size: int = 5000,
                      progress: Callable[[str, int, int], None] | None = None) -> dict[str, tuple[int, int]]:
    """Copy every row of a SQLite ledger into PostgreSQL: {table: (copied, already there)}.

    Idempotent: rows already present (same request id and ts; same feedback request and ts;
    same alert key) are skipped, so a second run copies nothing and an interrupted one can
    simply be run again. Partitions for the source's months are created first."""
    import aiosqlite

    conn = await store._connection()
    counts: dict[str, tuple[int, int]] = {}
    from proxy.accounting.ledger import migrate

    async with aiosqlite.connect(source) as src:
        await migrate(src)  # a ledger from an older Switchyard gets the columns copied below
        span = await (await src.execute("SELECT MIN(ts), MAX(ts) FROM requests")).fetchone()
        if span is not None and span[0] is not None:
            await store.ensure_partitions(float(span[0]), float(span[1]))
        tables: list[tuple[str, Sequence[str]]] = [("requests", COLUMNS), ("feedback", FEEDBACK_COLUMNS),
                                                   ("alerts", ALERT_COLUMNS)]
        for table, columns in tables:
            copied = skipped = 0
            after = -1
            while True:
                cursor = await src.execute(
                    f"SELECT rowid, {_quoted(columns)} FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (after, batch_size))
                batch = list(await cursor.fetchall())
                if not batch:
                    break
                after = batch[-1][0]
                rows = [tuple(r[1:]) for r in batch]
                async with conn.transaction():
                    if table == "requests":
                        new = await store._write_rows(conn, rows)
                    else:
                        before = await conn.fetchval(f"SELECT COUNT(*) FROM {table}")
                        await conn.executemany(_INSERT_EVENT[_EVENT_OF[table]], rows)
                        new = int(await conn.fetchval(f"SELECT COUNT(*) FROM {table}")) - int(before)
                copied += new
                skipped += len(rows) - new
                if progress is not None:
                    progress(table, copied, skipped)
            counts[table] = (copied, skipped)
    return counts


__all__ = ["PostgresStore", "copy_sqlite", "coerce", "numbered"]
