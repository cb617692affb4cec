"""The spend ledger on SQLite and PostgreSQL: write throughput, and the latency of the
reports the product runs on a ledger of 1M and 10M rows.

    python loadtest/bench_ledger.py                              # both stores, 1M and 10M rows
    python loadtest/bench_ledger.py --sizes 100000               # a quick run
    python loadtest/bench_ledger.py --stores sqlite --sizes 1M --skip-write
    python loadtest/bench_ledger.py --pg-url postgresql://postgres@127.0.0.1:5432/postgres

Writes: a real `LedgerWriter` and its store, fed rows shaped like `service.ledger_row`'s as
fast as it takes them (the feeder keeps a few batches queued and waits while more are),
until `--write-rows` rows or `--write-seconds` have gone in, then `close()`. Reported:
rows per second of wall time and this process's CPU per row (event loop and aiosqlite's
thread together). PostgreSQL's backend does its share of the work in another process,
which is not pinned and usually runs on the other core: its CPU is shown apart (from
/proc, when the server is local), and the WAL writer's and checkpointer's not at all.
Each configuration writes into an empty ledger; `--write-on-filled` (default on) also
writes into each filled ledger after its reads.

Reads: each store is filled with `--sizes` rows spread over `--days` days up to the
start of the run and over `--teams` teams (PostgreSQL: INSERT ... SELECT FROM
generate_series into the store's own partitioned schema, then VACUUM ANALYZE, as autovacuum
would; SQLite: executemany of generated rows into the store's own schema), and each report
query of the product is timed through `proxy.accounting.reports`, `LedgerReader`,
`proxy.experiments.load_samples` and `Feedback`: one warm-up, then the median of
`--repeat` runs. SQLite is timed twice by default (`--sqlite-analyze both`): as the proxy
leaves the file (it never runs ANALYZE, so the planner has no statistics), then after
ANALYZE. The query plans (PostgreSQL: EXPLAIN ANALYZE) go to the results file.

This process is pinned to CPU `--cpu` (0). Results go to stdout and to
loadtest/results/ledger-<UTC time>.md; the temporary files and the PostgreSQL database
(switchyard_bench_<pid>) are removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `proxy` is the package beside loadtest/

from proxy import experiments  # noqa: E402
from proxy.accounting import reports  # noqa: E402
from proxy.accounting.feedback import Feedback  # noqa: E402
from proxy.accounting.ledger import COLUMNS, LedgerReader, LedgerStore, LedgerWriter, Row, SqliteStore  # noqa: E402
from proxy.accounting.spend import periods_at  # noqa: E402
from proxy.config import LedgerConfig  # noqa: E402

UTC = ZoneInfo("UTC")
DEFAULTS = LedgerConfig()
EXPERIMENT = "exp-cheaper-model"  # ~1% of rows; the one whose samples are loaded
BLOCK = 250_000  # rows per request-id prefix: one "process" of the fleet (ids are prefix + counter)

# (provider, model, $ per million input tokens, $ per million output tokens, share of requests)
MODELS: tuple[tuple[str, str, float, float, float], ...] = (
    ("openai", "gpt-4o-mini", 0.15, 0.60, 0.35),
    ("openai", "gpt-4o", 2.50, 10.00, 0.20),
    ("anthropic", "claude-3-5-haiku", 0.80, 4.00, 0.15),
    ("anthropic", "claude-sonnet-4", 3.00, 15.00, 0.15),
    ("google", "gemini-2.0-flash", 0.10, 0.40, 0.10),
    ("mistral", "mistral-large", 2.00, 6.00, 0.05),
)
ROUTES: tuple[tuple[str, float], ...] = (("default", 0.55), ("cheap", 0.25), ("code", 0.15), ("fallback", 0.05))
BASELINE = (2.50, 10.00)  # accounting.baseline_model's prices (gpt-4o), set for half the rows


def cumulative(shares: Sequence[float]) -> list[float]:
    out, total = [], 0.0
    for share in shares:
        total += share
        out.append(total)
    out[-1] = 1.01  # whatever rounding left over falls in the last bucket
    return out


MODEL_CUM = cumulative([m[4] for m in MODELS])
ROUTE_CUM = cumulative([r[1] for r in ROUTES])


def pick(cum: Sequence[float], u: float) -> int:
    for i, edge in enumerate(cum):
        if u < edge:
            return i
    return len(cum) - 1


# ---------------------------------------------------------------- rows (Python: SQLite fill, writes)


def id_prefix(block: int, seed: str) -> str:
    return "req_" + hashlib.md5(f"{block}:{seed}".encode()).hexdigest()[:20]


def make_row(rid: str, ts: float, teams: int, u: Callable[[], float]) -> Row:
    """One ledger row as `service.ledger_row` writes it, drawn with `u` (uniform in [0, 1)).
    The PostgreSQL fill (`pg_fill_sql`) draws the same distributions in SQL."""
    r_team, r_user, r_model, r_route, r_status, r_stream, r_cache = u(), u(), u(), u(), u(), u(), u()
    r_in, r_out, r_priced, r_base, r_lat, r_ttft, r_exp, r_var = u(), u(), u(), u(), u(), u(), u(), u()
    team_i = int(teams * r_team * r_team)  # skewed: team-00 is the biggest
    provider, model, p_in, p_out, _ = MODELS[pick(MODEL_CUM, r_model)]
    route = ROUTES[pick(ROUTE_CUM, r_route)][0]
    status = 200 if r_status < 0.97 else 429 if r_status < 0.985 else 502 if r_status < 0.995 else 400
    ok = status == 200
    stream = 1 if r_stream < 0.4 else 0
    cache = "hit" if r_cache < 0.1 else "miss" if r_cache < 0.7 else "bypass"
    if not ok and cache == "hit":
        cache = "miss"
    in_tok = 50 + int(8000 * r_in ** 3) if ok else None
    out_tok = 10 + int(1200 * r_out * r_out) if ok else None
    price = ((in_tok or 0) * p_in + (out_tok or 0) * p_out) / 1e6
    cost = None if not ok or r_priced < 0.01 else 0.0 if cache == "hit" else price
    saved = price if ok and cache == "hit" else None
    baseline = ((in_tok or 0) * BASELINE[0] + (out_tok or 0) * BASELINE[1]) / 1e6 if ok and r_base < 0.5 else None
    experiment = EXPERIMENT if r_exp < 0.01 else "exp-prompt-v2" if r_exp < 0.015 else None
    return (
        rid, ts, f"team-{team_i:02d}", None if r_user < 0.1 else f"u{team_i:02d}-{int(40 * r_user)}",
        "auto" if route == "cheap" else model, route, provider, model, status,
        {429: "status_429", 502: "upstream_http"}.get(status), stream, cache, in_tok, out_tok,
        cost, saved, baseline, round(150 + 4000 * r_lat * r_lat, 3),
        round(80 + 700 * r_ttft, 3) if stream and ok else None,
        experiment, None if experiment is None else "control" if r_var < 0.5 else "treatment",
        None, None, entry_ref(rid, team_i, model) if ok and cache != "bypass" else None,
    )


def entry_ref(rid: str, team_i: int, model: str) -> str:
    """A cache entry's ledger name (`proxy.cache.service.entry_ref`): the entry's id, then the
    cache key it was stored under, one per team and model here (`pg_fill_sql`'s the same)."""
    team, key = f"team-{team_i:02d}", f"{team_i:02d}{model}"
    return f"{rid}.000000@{hashlib.md5(key.encode()).hexdigest()}{hashlib.md5((model + team).encode()).hexdigest()}"


def fill_rows(lo: int, hi: int, t0: float, step: float, teams: int, rnd: random.Random) -> Iterator[Row]:
    """Rows lo..hi-1 of a fill: append-ordered ts, ids of the block's "process"."""
    prefix_block, prefix = -1, ""
    for g in range(lo, hi):
        if g // BLOCK != prefix_block:
            prefix_block = g // BLOCK
            prefix = id_prefix(prefix_block, "fill")
        yield make_row(f"{prefix}{g:012x}", t0 + (g + 0.5) * step, teams, rnd.random)


def fill_id(g: int) -> str:
    return f"{id_prefix(g // BLOCK, 'fill')}{g:012x}"


# ---------------------------------------------------------------- PostgreSQL fill


def pg_fill_sql(teams: int) -> str:
    """INSERT ... SELECT from generate_series($1, $2 - 1): rows g of a fill whose row 0 is at
    $3 and whose rows are $4 seconds apart; the distributions of `make_row`. (PostgreSQL does
    not flatten a subquery with random() in its output: each draw is made once per row.)"""
    def case(var: str, cum: Sequence[float]) -> str:
        whens = " ".join(f"WHEN {var} < {edge!r} THEN {i}" for i, edge in enumerate(cum[:-1]))
        return f"CASE {whens} ELSE {len(cum) - 1} END"

    models = ", ".join(f"({i}, '{p}', '{m}', {pi!r}::float8, {po!r}::float8)"
                       for i, (p, m, pi, po, _) in enumerate(MODELS))
    routes = ", ".join(f"({i}, '{name}')" for i, (name, _) in enumerate(ROUTES))
    draws = ", ".join(f"random() AS {name}" for name in (
        "r_team", "r_user", "r_model", "r_route", "r_status", "r_stream", "r_cache", "r_in", "r_out",
        "r_priced", "r_base", "r_lat", "r_ttft", "r_exp", "r_var"))
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    return f"""
    INSERT INTO requests ({cols})
    SELECT id, ts, team, "user", CASE WHEN route = 'cheap' THEN 'auto' ELSE model END, route, provider, model,
           status, CASE status WHEN 429 THEN 'status_429' WHEN 502 THEN 'upstream_http' END, stream, cache,
           in_tok, out_tok,
           CASE WHEN status <> 200 OR r_priced < 0.01 THEN NULL WHEN cache = 'hit' THEN 0.0 ELSE price END,
           CASE WHEN status = 200 AND cache = 'hit' THEN price END,
           CASE WHEN status = 200 AND r_base < 0.5
                THEN (in_tok * {BASELINE[0]!r} + out_tok * {BASELINE[1]!r}) / 1e6 END,
           round((150 + 4000 * r_lat * r_lat)::numeric, 3)::float8,
           CASE WHEN stream = 1 AND status = 200 THEN round((80 + 700 * r_ttft)::numeric, 3)::float8 END,
           experiment,
           CASE WHEN experiment IS NOT NULL THEN CASE WHEN r_var < 0.5 THEN 'control' ELSE 'treatment' END END,
           NULL, NULL,
           CASE WHEN status = 200 AND cache <> 'bypass'
                THEN id || '.000000@' || md5(lpad(team_i::text, 2, '0') || model) || md5(model || team) END
    FROM (
        SELECT e.*, (coalesce(in_tok, 0) * p_in + coalesce(out_tok, 0) * p_out) / 1e6 AS price
        FROM (
            SELECT d.*, m.provider, m.model, m.p_in, m.p_out, rt.route,
                   'req_' || substr(md5((g / {BLOCK})::text || ':fill'), 1, 20) || lpad(to_hex(g), 12, '0') AS id,
                   $3::float8 + (g + 0.5) * $4::float8 AS ts,
                   'team-' || lpad(team_i::text, 2, '0') AS team,
                   CASE WHEN r_user < 0.1 THEN NULL
                        ELSE 'u' || lpad(team_i::text, 2, '0') || '-' || floor(40 * r_user)::int END AS "user",
                   CASE WHEN r_stream < 0.4 THEN 1 ELSE 0 END AS stream,
                   CASE WHEN r_cache < 0.1 AND status = 200 THEN 'hit' WHEN r_cache < 0.7 THEN 'miss'
                        ELSE 'bypass' END AS cache,
                   CASE WHEN status = 200 THEN 50 + floor(8000 * r_in ^ 3)::int END AS in_tok,
                   CASE WHEN status = 200 THEN 10 + floor(1200 * r_out * r_out)::int END AS out_tok,
                   CASE WHEN r_exp < 0.01 THEN '{EXPERIMENT}' WHEN r_exp < 0.015 THEN 'exp-prompt-v2' END
                       AS experiment
            FROM (
                SELECT raw.*, floor({teams} * r_team * r_team)::int AS team_i,
                       {case("r_model", MODEL_CUM)} AS model_i, {case("r_route", ROUTE_CUM)} AS route_i,
                       CASE WHEN r_status < 0.97 THEN 200 WHEN r_status < 0.985 THEN 429
                            WHEN r_status < 0.995 THEN 502 ELSE 400 END AS status
                FROM (SELECT g, {draws} FROM generate_series($1::bigint, $2::bigint - 1) AS g) AS raw
            ) AS d
            JOIN (VALUES {models}) AS m (i, provider, model, p_in, p_out) ON m.i = d.model_i
            JOIN (VALUES {routes}) AS rt (i, route) ON rt.i = d.route_i
        ) AS e
    ) AS f
    """


# ---------------------------------------------------------------- stores


def bench_url(admin_url: str, database: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + database))


async def pg_admin(admin_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class Target:
    """One store of the run: a SQLite file or a PostgreSQL database of its own."""

    backend: str  # sqlite | postgresql
    tmp: Path
    admin_url: str
    database: str
    serial: int = 0
    path: str = ""
    created: bool = False

    @property
    def url(self) -> str:
        return bench_url(self.admin_url, self.database)

    async def fresh(self) -> LedgerStore:
        """An empty ledger (the previous one removed) and its store, not yet opened."""
        await self.drop()
        if self.backend == "sqlite":
            self.serial += 1
            self.path = str(self.tmp / f"ledger-{self.serial}.db")
            return SqliteStore(self.path)
        from proxy.accounting.ledger_pg import PostgresStore

        await pg_admin(self.admin_url, f'CREATE DATABASE "{self.database}"')
        self.created = True
        # reports on 10M rows may take longer than the product's 30 s command timeout: measured, not cut
        return PostgresStore(self.url, command_timeout_s=600)

    async def drop(self) -> None:
        if self.backend == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                if self.path and os.path.exists(self.path + suffix):
                    os.remove(self.path + suffix)
        elif self.created:
            await pg_admin(self.admin_url, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self.created = False


def backend_cpu_s(store: LedgerStore) -> tuple[int | None, float | None]:
    """The PostgreSQL writer connection's server process and the CPU it has used (local servers)."""
    opening = getattr(store, "_conn", None)
    conn = opening.current() if opening is not None else None
    pid = conn.get_server_pid() if conn is not None else None
    if pid is None:
        return None, None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return pid, None
    return pid, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- writes


@dataclass
class WriteResult:
    backend: str
    before: int  # rows in the ledger before the run
    batch_size: int
    flush_interval_s: float
    rows: int
    wall_s: float
    cpu_s: float
    server_cpu_s: float | None
    checked: int  # rows found in the ledger afterwards, less `before`


async def write_run(store: LedgerStore, backend: str, *, before: int, batch_size: int, flush_interval_s: float,
                    rows: int, seconds: float, teams: int, run: int) -> WriteResult:
    rnd = random.Random(run)
    now = time.time()
    prefix = id_prefix(run, "write")
    # made before the clock starts: the request path builds its row, the writer's cost is the rest
    batch = [make_row(f"{prefix}{i:012x}", now + i * 1e-4, teams, rnd.random) for i in range(rows)]
    await store.open()  # migrated before the clock starts too, as at a proxy's start
    writer = LedgerWriter(store, batch_size=batch_size, flush_interval_s=flush_interval_s,
                          max_pending=DEFAULTS.max_pending)
    _, server_before = backend_cpu_s(store)
    backlog = 4 * batch_size  # enough queued that the writer never waits for the feeder
    chunk = 50  # rows appended between yields to the event loop: requests finishing
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + seconds if seconds > 0 else float("inf")
    await writer.start()
    sent = 0
    while sent < rows and time.perf_counter() < deadline:
        if writer.stats().pending >= backlog:
            await asyncio.sleep(0.001)  # a wake-up, not a spin: the store's thread/socket gets the core
            continue
        for row in batch[sent:sent + chunk]:
            writer.append(row)
        sent = min(rows, sent + chunk)
        await asyncio.sleep(0)
    await writer.flush(timeout_s=600)
    _, server_after = backend_cpu_s(store)
    await writer.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert writer.written == sent and writer.dropped == 0 and writer.write_errors == 0, writer.stats()
    reader = LedgerReader(store)
    count = (await reader.query("SELECT COUNT(*) AS n FROM requests"))[0]["n"]
    await reader.close()
    server = None if server_before is None or server_after is None else server_after - server_before
    return WriteResult(backend, before, batch_size, flush_interval_s, sent, wall, cpu, server, int(count) - before)


# ---------------------------------------------------------------- fills


def sqlite_fill(path: str, n: int, t0: float, step: float, teams: int, progress: Callable[[int], None]) -> None:
    """executemany in big transactions into the schema `SqliteStore.open()` made."""
    rnd = random.Random(n)
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    insert = f"INSERT INTO requests ({columns}) VALUES ({', '.join('?' for _ in COLUMNS)})"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous=OFF")  # the fill only: the file ends up the same
        db.execute("PRAGMA cache_size=-262144")
        chunk = 500_000
        for lo in range(0, n, chunk):
            db.execute("BEGIN")
            db.executemany(insert, fill_rows(lo, min(n, lo + chunk), t0, step, teams, rnd))
            db.execute("COMMIT")
            progress(min(n, lo + chunk))
        db.execute("INSERT INTO feedback (request_id, team, ts, score, comment) "
                   "SELECT id, team, ts + 60, abs(random()) % 5 + 1, NULL FROM requests "
                   "WHERE experiment IS NOT NULL AND abs(random()) % 20 = 0")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


async def pg_fill(store: Any, n: int, t0: float, step: float, teams: int,
                  progress: Callable[[int], None]) -> None:
    """INSERT ... SELECT FROM generate_series, a million rows a statement, into the store's
    partitioned table (partitions for every month the rows span made by the store itself)."""
    import asyncpg

    await store.open()  # the store's migration: the real partitions and indexes
    await store.ensure_partitions(t0, t0 + n * step)
    conn = await asyncpg.connect(store.url, timeout=10, command_timeout=3600)
    try:
        sql = pg_fill_sql(teams)
        chunk = 1_000_000
        for lo in range(0, n, chunk):
            await conn.execute(sql, lo, min(n, lo + chunk), t0, step)
            progress(min(n, lo + chunk))
        await conn.execute("INSERT INTO feedback (request_id, team, ts, score, comment) "
                           "SELECT id, team, ts + 60, floor(random() * 5) + 1, NULL FROM requests "
                           "WHERE experiment IS NOT NULL AND random() < 0.05")
        await conn.execute("VACUUM (ANALYZE) requests")  # what autovacuum reaches after such a load
        await conn.execute("VACUUM (ANALYZE) feedback")
        await conn.execute("CHECKPOINT")  # the fill's dirty pages written before anything is timed
    finally:
        await conn.close()


async def sizes_of(store: LedgerStore, backend: str, path: str) -> tuple[float, dict[str, float]]:
    """Total MiB of `requests` (with its indexes), and MiB per index / heap."""
    mib = 1024 * 1024
    if backend == "sqlite":
        total = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
        with sqlite3.connect(path) as db:
            parts = {name: size / mib for name, size in db.execute(
                "SELECT name, SUM(pgsize) FROM dbstat WHERE name = 'requests' OR name LIKE 'requests_%' "
                "GROUP BY name ORDER BY name")}
        return total / mib, {"file (all tables)": total / mib} | parts
    reader = LedgerReader(store)
    rows = await reader.query(
        "SELECT 'requests (heap+toast)' AS name, "
        "SUM(pg_table_size(relid)) AS size FROM pg_partition_tree('requests') "
        "UNION ALL SELECT i, (SELECT SUM(pg_relation_size(relid)) FROM pg_partition_tree(i::regclass)) "
        "FROM unnest(ARRAY['requests_pkey', 'requests_team_ts', 'requests_ts', 'requests_experiment']) AS i")
    parts = {r["name"]: float(r["size"] or 0) / mib for r in rows}
    total_rows = await reader.query("SELECT SUM(pg_total_relation_size(relid)) AS size "
                                    "FROM pg_partition_tree('requests')")
    return float(total_rows[0]["size"]) / mib, parts


# ---------------------------------------------------------------- reads


class RecordingReader(LedgerReader):
    """A LedgerReader that remembers the SQL it ran (for the plans)."""

    def __init__(self, store: LedgerStore) -> None:
        super().__init__(store)
        self.log: list[tuple[str, list[Any]]] = []

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self.log.append((sql, list(params)))
        return await super().query(sql, params)


@dataclass
class ReadResult:
    backend: str  # the column's label: sqlite (no ANALYZE), sqlite (ANALYZEd), postgresql
    size: int
    fill_s: float = 0.0
    total_mib: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)
    result_rows: dict[str, int] = field(default_factory=dict)
    plans: dict[str, list[str]] = field(default_factory=dict)


def queries(reader: LedgerReader, now: float, biggest_team: str, request: tuple[str, str]) \
        -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    p = periods_at(now, UTC)
    last30 = now - 30 * 86400
    feedback = Feedback(cast(Any, SimpleNamespace(reader=reader)))

    def usage(group_by: str, since: float, team: str | None = None) -> Callable[[], Awaitable[Any]]:
        return lambda: reports.usage(reader, since=since, until=now + 1, team=team, group_by=group_by, zone=UTC)

    return [
        ("/admin/usage by team, 30 days", usage("team", last30)),
        ("/admin/usage by model, 30 days", usage("model", last30)),
        ("/admin/usage by day, 30 days", usage("day", last30)),
        (f"one team's usage, this month ({biggest_team}, /v1/usage)", usage("team", p.month_start, biggest_team)),
        ("observed_since (MIN(ts), /v1/usage)", lambda: reports.observed_since(reader, p.month_start, now)),
        (f"daily_spend, one team ({biggest_team}), 30 days", lambda: reports.daily_spend(reader, biggest_team,
                                                                                          last30, now + 1)),
        ("spend restore at start: today", lambda: reader.spend_by_team_since(p.day_start)),
        ("spend restore at start: this month", lambda: reader.spend_by_team_since(p.month_start)),
        (f"experiment samples ({EXPERIMENT}, ~1% of rows)", lambda: experiments.load_samples(reader, EXPERIMENT)),
        ("feedback: lookup of one request id", lambda: feedback._found(*request)),
    ]


def result_size(value: Any) -> int:
    """Rows a report returned (an experiment's: the requests in its samples)."""
    if isinstance(value, dict) and all(isinstance(v, experiments.Samples) for v in value.values()):
        return sum(v.requests for v in value.values())
    return len(value) if isinstance(value, (dict, list)) else 1


async def plan_of(store: LedgerStore, backend: str, sql: str, params: list[Any]) -> list[str]:
    if backend == "sqlite":
        rows = await store.query("EXPLAIN QUERY PLAN " + sql, params)
        return [str(r["detail"]) for r in rows]
    rows = await store.query("EXPLAIN (ANALYZE, COSTS OFF) " + sql, params)
    return [str(r["QUERY PLAN"]) for r in rows]


async def read_run(target: Target, size: int, args: argparse.Namespace, now: float, log: Callable[[str], None],
                   write_results: list[WriteResult]) -> list[ReadResult]:
    """Fill a ledger of `size` rows and time the reports on it (a SQLite one as the proxy leaves
    it, without ANALYZE, and/or after ANALYZE: `--sqlite-analyze`); then write into it."""
    store = await target.fresh()
    span = args.days * 86400
    t0, step = now - span, span / size
    start = time.perf_counter()

    def progress(done: int) -> None:
        if done % 1_000_000 == 0 or done == size:
            log(f"  {target.backend}: {done:,} / {size:,} rows in {time.perf_counter() - start:.0f} s")

    if target.backend == "sqlite":
        await store.open()  # the store's migration: the real schema and indexes
        await store.close()
        sqlite_fill(target.path, size, t0, step, args.teams, progress)
    else:
        await pg_fill(store, size, t0, step, args.teams, progress)
    fill_s = time.perf_counter() - start
    total, parts = await sizes_of(store, target.backend, target.path)
    log(f"  {target.backend}: filled {size:,} rows in {fill_s:.0f} s, {total:,.0f} MiB")

    results = []
    if target.backend == "sqlite" and args.sqlite_analyze in ("no", "both"):
        results.append(await measure(store, "sqlite (no ANALYZE)", size, args, now, log))
    if target.backend == "sqlite" and args.sqlite_analyze in ("yes", "both"):
        with sqlite3.connect(target.path) as db:
            db.execute("ANALYZE")
        results.append(await measure(store, "sqlite (ANALYZEd)", size, args, now, log))
    if target.backend == "postgresql":
        results.append(await measure(store, "postgresql", size, args, now, log))
    for r in results:
        r.fill_s, r.total_mib, r.parts = fill_s, total, parts
    await store.close()

    if args.write_on_filled and not args.skip_write:
        w = await write_run(store, target.backend, before=size, batch_size=DEFAULTS.batch_size,
                            flush_interval_s=DEFAULTS.flush_interval_s, rows=args.write_rows,
                            seconds=args.write_seconds, teams=args.teams, run=1000 + size)
        write_results.append(w)
        log(f"  {describe_write(w)}")
    await target.drop()
    return results


async def measure(store: LedgerStore, label: str, size: int, args: argparse.Namespace, now: float,
                  log: Callable[[str], None]) -> ReadResult:
    result = ReadResult(label, size)
    reader = RecordingReader(store)
    biggest = (await reader.query("SELECT team, COUNT(*) AS n FROM requests WHERE ts >= ? GROUP BY team "
                                  "ORDER BY n DESC LIMIT 1", (now - 30 * 86400,)))[0]["team"]
    rid = fill_id(size // 2)
    team_of = (await reader.query("SELECT team FROM requests WHERE id = ?", (rid,)))[0]["team"]
    for query, run in queries(reader, now, biggest, (rid, team_of)):
        reader.log.clear()
        value = await run()  # the warm-up
        result.result_rows[query] = result_size(value)
        recorded = list(reader.log)
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            await run()
            times.append((time.perf_counter() - t) * 1000)
        result.ms[query] = statistics.median(times)
        log(f"  {label} {size_label(size)}: {query}: {result.ms[query]:.2f} ms "
            f"(min {min(times):.2f}, max {max(times):.2f}; {result.result_rows[query]} result rows)")
        if args.plans:
            plan: list[str] = []
            for sql, params in recorded:
                plan += await plan_of(store, store.backend, sql, params)
            result.plans[query] = plan
    return result


# ---------------------------------------------------------------- output


def size_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def describe_write(w: WriteResult) -> str:
    server = "" if w.server_cpu_s is None else f", server backend {w.server_cpu_s / w.rows * 1e6:.1f} µs CPU/row"
    return (f"write {w.backend} (ledger of {size_label(w.before) if w.before else 'no'} rows, batch {w.batch_size}): "
            f"{w.rows:,} rows in {w.wall_s:.2f} s = {w.rows / w.wall_s:,.0f} rows/s, "
            f"{w.cpu_s / w.rows * 1e6:.1f} µs CPU/row{server}")


def write_table(results: list[WriteResult]) -> list[str]:
    lines = [
        "| store | ledger before | batch_size | flush_interval_s | rows | wall s | rows/s | client CPU µs/row "
        "| server backend CPU µs/row |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for w in results:
        server = "n/a" if w.server_cpu_s is None else f"{w.server_cpu_s / w.rows * 1e6:.1f}"
        if w.backend == "sqlite":
            server = "(in process)"
        lines.append(f"| {w.backend} | {size_label(w.before) if w.before else 'empty'} | {w.batch_size} | "
                     f"{w.flush_interval_s:g} | {w.rows:,} | {w.wall_s:.2f} | {w.rows / w.wall_s:,.0f} | "
                     f"{w.cpu_s / w.rows * 1e6:.1f} | {server} |")
    return lines


def read_table(results: list[ReadResult]) -> list[str]:
    if not results:
        return []
    labels = list(results[0].ms)
    head = " | ".join(f"{r.backend} {size_label(r.size)}" for r in results)
    lines = [f"| query (ms, median of runs) | {head} |", "| --- |" + " ---: |" * len(results)]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(f"{r.ms.get(label, float('nan')):,.2f}" for r in results) + " |")
    return lines


def size_table(results: list[ReadResult]) -> list[str]:
    lines = ["| store | rows | fill s | requests on disk, MiB | of which |", "| --- | ---: | ---: | ---: | --- |"]
    shown = set()
    for r in results:
        store = r.backend.split()[0]  # one file, measured twice: one line
        if (store, r.size) in shown:
            continue
        shown.add((store, r.size))
        parts = ", ".join(f"{name} {mib:,.0f}" for name, mib in r.parts.items())
        lines.append(f"| {store} | {size_label(r.size)} | {r.fill_s:,.0f} | {r.total_mib:,.0f} | {parts} |")
    return lines


def report(args: argparse.Namespace, started: dt.datetime, env: str, writes: list[WriteResult],
           reads: list[ReadResult]) -> str:
    lines = [f"### Ledger: write throughput and report latency, {started:%Y-%m-%d %H:%M} UTC", "",
             f"`{' '.join(['python', 'loadtest/bench_ledger.py', *sys.argv[1:]])}`", "", env, ""]
    if writes:
        lines += ["#### Write throughput (one LedgerWriter; rows/s of wall time until close())", "",
                  *write_table(writes), ""]
    if reads:
        lines += [f"#### Report latency (ms; one warm-up, then the median of {args.repeat} runs)", "",
                  *read_table(reads), "", "#### Sizes", "", *size_table(reads), ""]
        if any(r.plans for r in reads):
            lines += ["#### Plans", ""]
            for r in reads:
                for label, plan in r.plans.items():
                    lines += [f"{r.backend} {size_label(r.size)}, {label} ({r.result_rows.get(label, 0)} result rows):",
                              "", "```", *plan, "```", ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace, log: Callable[[str], None]) -> tuple[str, list[WriteResult],
                                                                             list[ReadResult]]:
    tmp = Path(tempfile.mkdtemp(prefix="switchyard-ledger-bench-", dir=args.tmp_dir))
    database = f"switchyard_bench_{os.getpid()}"
    targets = [Target(b, tmp, args.pg_url, database) for b in args.stores]
    writes: list[WriteResult] = []
    reads: list[ReadResult] = []
    env = await environment(args)
    log(env)
    now = time.time()  # the run's "now": fills end here, reports look back from here
    try:
        if not args.skip_write:
            for target in targets:
                for i, batch_size in enumerate((DEFAULTS.batch_size, 2000)):
                    store = await target.fresh()
                    w = await write_run(store, target.backend, before=0, batch_size=batch_size,
                                        flush_interval_s=DEFAULTS.flush_interval_s, rows=args.write_rows,
                                        seconds=args.write_seconds, teams=args.teams, run=i)
                    writes.append(w)
                    log(describe_write(w))
                    if w.checked != w.rows:
                        log(f"  WARNING: {w.checked} rows found after writing {w.rows}")
                    await target.drop()
        if not args.skip_read:
            for size in args.sizes:
                for target in targets:
                    log(f"{target.backend}: filling {size:,} rows")
                    reads += await read_run(target, size, args, now, log, writes)
    finally:
        for target in targets:
            try:
                await target.drop()
            except Exception as exc:  # noqa: BLE001 - the cleanup goes on, and says what it left
                log(f"cleanup of {target.backend} failed: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)
    return env, writes, reads


async def environment(args: argparse.Namespace) -> str:
    pinned = "not pinned" if args.cpu < 0 else f"pinned to CPU {args.cpu}"
    parts = [f"{os.cpu_count()} cores; this process (client, event loop, aiosqlite's thread) {pinned}",
             f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL, as SqliteStore opens it)"]
    if "postgresql" in args.stores:
        import asyncpg

        conn = await asyncpg.connect(args.pg_url, timeout=10)
        try:
            version = await conn.fetchval("SHOW server_version")
            settings = {name: await conn.fetchval(f"SHOW {name}") for name in
                        ("shared_buffers", "work_mem", "max_parallel_workers_per_gather", "synchronous_commit")}
        finally:
            await conn.close()
        parts.append(f"PostgreSQL {version} on this machine, not pinned ("
                     + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")")
    parts.append(f"rows over {args.days} days and {args.teams} teams; writes default batch_size "
                 f"{DEFAULTS.batch_size}, flush_interval_s {DEFAULTS.flush_interval_s}")
    return "; ".join(parts) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a database to connect to for CREATE/DROP DATABASE of the benchmark's own")
    parser.add_argument("--sizes", default="1000000,10000000", help="ledger sizes for the reads (1M, 100k also)")
    parser.add_argument("--write-rows", type=parse_size, default=200_000)
    parser.add_argument("--write-seconds", type=float, default=0, help="stop appending after this long (0: no)")
    parser.add_argument("--write-on-filled", action=argparse.BooleanOptionalAction, default=True,
                        help="also write --write-rows rows into each filled ledger")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per query (after one warm-up)")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--teams", type=int, default=20)
    parser.add_argument("--cpu", type=int, default=0, help="pin this process to that CPU (-1: do not)")
    parser.add_argument("--sqlite-analyze", choices=("yes", "no", "both"), default="both",
                        help="time SQLite after ANALYZE, as the proxy leaves it (it never runs ANALYZE), or both")
    parser.add_argument("--plans", action=argparse.BooleanOptionalAction, default=True,
                        help="query plans into the results file (PostgreSQL: EXPLAIN ANALYZE)")
    parser.add_argument("--skip-write", action="store_true")
    parser.add_argument("--skip-read", action="store_true")
    parser.add_argument("--tmp-dir", default=None, help="where the SQLite files go (default: the system's)")
    args = parser.parse_args()
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if unknown := set(args.stores) - {"sqlite", "postgresql"}:
        parser.error(f"unknown stores: {', '.join(sorted(unknown))}")
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})

    started = dt.datetime.now(dt.UTC)

    def log(line: str) -> None:
        print(line, flush=True)

    env, writes, reads = asyncio.run(run(args, log))
    text = report(args, started, env, writes, reads)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"ledger-{started:%Y%m%dT%H%M%SZ}.md"
    path.write_text(text)
    shown = text.split("#### Plans", 1)[0].rstrip() + "\n"
    print("\n" + shown + f"\nwritten to {path.relative_to(ROOT)} (with the query plans)")


if __name__ == "__main__":
    main()
