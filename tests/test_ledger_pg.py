"""The ledger on PostgreSQL, against the real server: schema and versions, batch writes,
rows queued while the database is away (a TCP relay cut in front of it), the drain at
shutdown, reports that say the same on SQLite and PostgreSQL, retention, `switchyard
ledger migrate`, and two replicas sharing one database.

Every test here needs PostgreSQL (support.PG_URL): each run creates a database of its
own and drops it at the end; a server that does not answer fails the tests, loudly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from proxy.accounting import reports
from proxy.accounting.ledger import COLUMNS, LedgerReader, LedgerSchemaError, LedgerStore, LedgerWriter, SqliteStore
from proxy.accounting.ledger_pg import MIGRATIONS, PostgresStore, numbered
from proxy.experiments import load_samples
from support import PG_URL, REPO, PgDatabase, TcpRelay, chat_body, eventually

pytestmark = pytest.mark.integration

KEY = "sk-pg-team-1"
ADMIN = "admin-pg-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    db = asyncio.run(PgDatabase().create())
    yield db.url
    asyncio.run(db.drop())


async def emptied(url: str) -> str:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()
    return url


@pytest.fixture
async def pg_url(pg_database: str) -> str:
    """The run's database, emptied for this test."""
    return await emptied(pg_database)


async def fetchval(url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


MakeStore = Callable[..., LedgerStore]


@pytest.fixture(params=["sqlite", "postgresql"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path, pg_database: str) -> AsyncIterator[MakeStore]:
    """Stores of one kind (the test runs once per kind); all closed at teardown."""
    made: list[LedgerStore] = []
    url = await emptied(pg_database) if request.param == "postgresql" else None

    def make(**kwargs: Any) -> LedgerStore:
        store: LedgerStore = (PostgresStore(url, **kwargs) if url is not None
                              else SqliteStore(str(tmp_path / "ledger.db"), **kwargs))
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def row(i: int, *, ts: float = 1_790_000_000.0, team: str = "a", cost: float | None = 0.01, **fields: Any) -> tuple:
    values = dict.fromkeys(COLUMNS)
    values.update(id=f"r{i}", ts=ts, team=team, status=200, stream=0, cache="miss", cost_usd=cost,
                  input_tokens=1, output_tokens=2, latency_ms=100.0 + i)
    values.update(fields)
    return tuple(values[c] for c in COLUMNS)


async def count(store: LedgerStore) -> int:
    rows = await store.query("SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS ids FROM requests")
    assert rows[0]["n"] == rows[0]["ids"], "a row was written twice"
    return int(rows[0]["n"])


# ---------------------------------------------------------------- schema


def test_placeholders_are_numbered_outside_literals():
    assert numbered("SELECT '?' , a FROM t WHERE b = ? AND c = ?") == "SELECT '?' , a FROM t WHERE b = $1 AND c = $2"


async def test_schema_is_created_versioned_and_a_newer_one_refused(pg_url):
    store = PostgresStore(pg_url)
    await store.open()
    await store.open()  # idempotent
    assert await fetchval(pg_url, "SELECT version FROM switchyard_schema") == len(MIGRATIONS)
    now = datetime.now(UTC)
    parts = await store.partitions()
    assert f"requests_p{now.year:04d}_{now.month:02d}" in parts and len(parts) >= 2  # this month and the next
    indexes = {r["indexname"] for r in await store.query("SELECT indexname FROM pg_indexes WHERE tablename = ?",
                                                          ("requests",))}
    assert {"requests_pkey", "requests_team_ts", "requests_ts", "requests_experiment"} <= indexes
    await store.close()
    conn = await asyncpg.connect(pg_url)
    await conn.execute("UPDATE switchyard_schema SET version = 99")
    await conn.close()
    newer = PostgresStore(pg_url)
    with pytest.raises(LedgerSchemaError, match="99 .* newer than this Switchyard knows"):
        await newer.open()
    await newer.close()


async def test_replicas_starting_together_migrate_once(pg_url):
    stores = [PostgresStore(pg_url) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in stores))
    assert await fetchval(pg_url, "SELECT COUNT(*) FROM switchyard_schema") == 1
    await asyncio.gather(*(s.close() for s in stores))


# ---------------------------------------------------------------- writing


async def test_batches_are_written_and_close_drains(make_store):
    store = make_store()
    writer = LedgerWriter(store, batch_size=10, flush_interval_s=60)
    await writer.start()
    for i in range(25):
        writer.append(row(i))
    await eventually(lambda: writer.written >= 20, what="the full batches to be written")
    for i in range(25, 1030):
        writer.append(row(i))
    writer.append_alert(("a", "day", "2026-09-21", 0.5, 1_790_000_000.0, 5.0, 10.0))
    writer.append_alert(("a", "day", "2026-09-21", 0.5, 1_790_000_001.0, 5.0, 10.0))  # the same alert: once
    writer.append_feedback(("r1", "a", 1_790_000_100.0, 0.75, "fine"))
    await writer.close()  # what SIGTERM does: everything queued is written first
    reader = make_store()
    assert await count(reader) == 1030
    assert len(await reader.query("SELECT * FROM alerts")) == 1
    assert [r["score"] for r in await reader.query("SELECT score FROM feedback")] == [0.75]


async def test_rows_queue_while_postgres_is_away_and_arrive_once(pg_url, caplog):
    target = urlsplit(pg_url)
    relay = TcpRelay(target.hostname or "127.0.0.1", target.port or 5432)
    store = PostgresStore(relay.url(pg_url), connect_timeout_s=1, command_timeout_s=2)
    errors: list[str] = []
    pending: list[int] = []
    writer = LedgerWriter(store, batch_size=20, flush_interval_s=0.05, on_error=errors.append,
                          on_pending=pending.append)
    await writer.start()
    try:
        n = 0

        async def stream(seconds: float) -> None:
            nonlocal n
            end = asyncio.get_running_loop().time() + seconds
            while asyncio.get_running_loop().time() < end:
                for _ in range(10):
                    writer.append(row(n))
                    n += 1
                await asyncio.sleep(0.005)

        await stream(0.3)
        await eventually(lambda: writer.written == n, what="rows written before the cut")
        relay.cut()
        attempts = writer.attempts
        await stream(2.0)  # requests keep coming while PostgreSQL is away
        during = writer.attempts - attempts
        assert writer.write_errors >= 1 and set(errors) <= {"unreachable", "timeout"}
        assert 1 <= during <= 12, f"{during} write attempts in a 2 s outage: the backoff was cut short"
        assert writer.stats().pending > 1000 and max(pending) > 1000  # the gauge follows the backlog
        assert writer.failing
        relay.restore()
        await eventually(lambda: writer.written == n, timeout=15, what="the queued rows after the restore")
        assert not writer.failing
    finally:
        await writer.close()
        relay.close()
    failures = [r for r in caplog.records if "write failed" in r.getMessage()]
    assert len(failures) == 1  # once per outage, not once per attempt
    assert any("rows written late" in r.getMessage() for r in caplog.records)
    reader = PostgresStore(pg_url)
    assert await count(reader) == n
    await reader.close()


async def test_close_waits_for_postgres_to_return(pg_url):
    target = urlsplit(pg_url)
    relay = TcpRelay(target.hostname or "127.0.0.1", target.port or 5432)
    store = PostgresStore(relay.url(pg_url), connect_timeout_s=1, command_timeout_s=2)
    writer = LedgerWriter(store, batch_size=500, flush_interval_s=0.05)
    await writer.start()
    relay.cut()
    for i in range(700):
        writer.append(row(i))
    await eventually(lambda: writer.write_errors >= 1, what="a failed write")
    closing = asyncio.create_task(writer.close(timeout_s=20))
    await asyncio.sleep(0.5)
    assert not closing.done()  # shutdown waits for the rows, retrying
    relay.restore()
    await asyncio.wait_for(closing, 20)
    relay.close()
    reader = PostgresStore(pg_url)
    assert await count(reader) == 700
    await reader.close()


# ---------------------------------------------------------------- reading: the same numbers on both


ZONE = ZoneInfo("Asia/Tokyo")
T0 = datetime(2027, 1, 11, tzinfo=UTC).timestamp()  # a Monday; rows span five days


def fixture_rows() -> list[tuple]:
    out = []
    teams, models, users = ("a", "b", "c"), ("m1", "m2"), ("alice", None, "bob")
    for i in range(300):
        status = 500 if i % 17 == 0 else (429 if i % 23 == 0 else 200)
        out.append(row(
            i, ts=T0 + i * 1440.0 + 0.25, team=teams[i % 3], cost=None if i % 11 == 0 else round(0.001 * (i % 13), 6),
            user=users[i % 3], provider="mock", model=models[i % 2], route=f"route{i % 4}", status=status,
            cache="hit" if i % 7 == 0 else "miss", saved_usd=0.002 if i % 7 == 0 else None,
            baseline_usd=0.02 if i % 5 == 0 else None, input_tokens=i, output_tokens=2 * i,
            ttft_ms=float(i % 9) if i % 2 else None, latency_ms=50.0 + (i * 37) % 400,
            experiment="exp" if i % 2 else None, variant=("control", "treatment")[i // 2 % 2] if i % 2 else None,
        ))
    return out


async def reports_of(store: LedgerStore) -> dict[str, Any]:
    reader = LedgerReader(store)
    until = T0 + 6 * 86400
    out: dict[str, Any] = {}
    for group_by in reports.GROUPS:
        for team in (None, "a"):
            out[f"usage/{group_by}/{team}"] = await reports.usage(reader, since=T0 + 3600, until=until, team=team,
                                                                  group_by=group_by, zone=ZONE)
    out["daily"] = await reports.daily_spend(reader, "b", T0, until)
    out["daily_all"] = await reports.daily_spend(reader, None, T0 + 100, until)
    out["observed"] = await reports.observed_since(reader, T0 - 86400, until)
    out["spend"] = await reader.spend_by_team_since(T0 + 86400)
    out["alerts"] = await reader.alerts_since(T0)
    samples = await load_samples(reader, "exp")
    out["samples"] = {v: {k: sorted(getattr(s, k)) if isinstance(getattr(s, k), list) else getattr(s, k)
                          for k in ("cost", "latency_ms", "ttft_ms", "feedback", "requests", "errors")}
                      for v, s in samples.items()}
    return out


def approx_equal(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: {sorted(a)} != {sorted(b)}"
        for k in a:
            approx_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: {len(a)} rows != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            approx_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


async def test_reports_say_the_same_on_sqlite_and_postgresql(pg_url, tmp_path):
    rows = fixture_rows()
    events = [("feedback", (f"r{i}", "a", T0 + i, (i % 10) / 10, None)) for i in range(1, 300, 6)]
    events.append(("alert", ("a", "day", "2027-01-12", 0.5, T0 + 50, 1.0, 2.0)))
    sqlite, pg = SqliteStore(str(tmp_path / "l.db")), PostgresStore(pg_url)
    for store in (sqlite, pg):
        await store.write(rows, events)
    try:
        on_sqlite, on_pg = await reports_of(sqlite), await reports_of(pg)
    finally:
        await pg.close()
        await sqlite.close()
    approx_equal(on_sqlite, on_pg)
    # and the numbers are the ones meant, not merely equal
    by_day = on_pg["usage/day/None"]
    local_days = sorted({datetime.fromtimestamp(r[1], ZONE).date().isoformat() for r in rows if r[1] >= T0 + 3600})
    assert [r["key"] for r in by_day] == local_days and local_days[0] == "2027-01-11" and len(local_days) == 6
    assert sum(r["requests"] for r in by_day) == 297  # from T0 + 1 h: the first three rows are earlier
    assert on_pg["usage/user/None"][0]["key"] in {"alice", "bob", "(none)"}
    assert set(on_pg["samples"]) == {"control", "treatment"} and on_pg["samples"]["control"]["feedback"]


# ---------------------------------------------------------------- retention


async def test_retention_drops_old_rows(make_store):
    now = datetime(2027, 3, 15, 12, tzinfo=UTC).timestamp()
    days = 86400.0
    store = make_store(retention_days=30)
    if isinstance(store, PostgresStore):
        await store.ensure_partitions(now - 100 * days, now)
        before = await store.partitions()
        assert {"requests_p2026_12", "requests_p2027_01", "requests_p2027_03"} <= set(before)
    old = [row(i, ts=now - age * days) for i, age in enumerate((100, 64, 50))]  # December, January, January
    kept = [row(10 + i, ts=now - age * days) for i, age in enumerate((10, 1, 0))]
    await store.write(old + kept, [("feedback", ("r0", "a", now - 100 * days, 1.0, None)),
                                   ("feedback", ("r11", "a", now - days, 0.5, None))])
    await store.maintain(now)
    assert sorted(r["id"] for r in await store.query("SELECT id FROM requests")) == ["r10", "r11", "r12"]
    assert [r["request_id"] for r in await store.query("SELECT request_id FROM feedback")] == ["r11"]
    if isinstance(store, PostgresStore):
        after = await store.partitions()
        assert "requests_p2026_12" not in after and "requests_p2027_01" not in after
        assert "requests_p2027_03" in after and "requests_p2027_04" in after  # the next month, made ahead


async def test_no_retention_keeps_everything(make_store):
    store = make_store()
    await store.write([row(1, ts=1_000_000.0), row(2)], [])
    await store.maintain(datetime.now(UTC).timestamp())
    assert await count(store) == 2


# ---------------------------------------------------------------- switchyard ledger migrate


def migrate_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "ledger", "migrate", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


async def test_migrate_copies_everything_once(pg_url, tmp_path):
    source = SqliteStore(str(tmp_path / "old.db"))
    rows = fixture_rows() + [row(1000 + i, ts=T0 - 400 * 86400 + i) for i in range(20)]  # a year older
    await source.write(rows, [("feedback", ("r1", "a", T0 + 5, 0.5, "ok")),
                              ("alert", ("a", "day", "2027-01-12", 0.5, T0 + 50, 1.0, 2.0))])
    await source.close()
    first = await asyncio.to_thread(migrate_cli, "--to", pg_url, "--from", str(tmp_path / "old.db"),
                                    "--batch-size", "64")
    assert first.returncode == 0, first.stderr
    assert "requests  320 copied, 0 already there" in first.stdout
    assert "feedback  1 copied" in first.stdout and "alerts    1 copied" in first.stdout
    again = await asyncio.to_thread(migrate_cli, "--to", pg_url, "--from", str(tmp_path / "old.db"))
    assert again.returncode == 0, again.stderr
    assert "requests  0 copied, 320 already there" in again.stdout
    assert "feedback  0 copied, 1 already there" in again.stdout
    pg = PostgresStore(pg_url)
    assert await count(pg) == 320
    assert await fetchval(pg_url, "SELECT COUNT(*) FROM requests_default") == 0  # each in its month
    approx_equal(await reports_of(SqliteStore(str(tmp_path / "old.db"))), await reports_of(pg))
    await pg.close()


async def test_migrate_from_the_config_and_its_errors(pg_url, tmp_path):
    (tmp_path / "proxy.yaml").write_text("ledger: {path: spend.db}\n")
    missing = await asyncio.to_thread(migrate_cli, "--to", pg_url, "--config", str(tmp_path / "proxy.yaml"))
    assert missing.returncode == 1 and "no SQLite ledger at" in missing.stderr
    source = SqliteStore(str(tmp_path / "spend.db"))
    await source.write([row(1)], [])
    await source.close()
    ok = await asyncio.to_thread(migrate_cli, "--to", pg_url, "--config", str(tmp_path / "proxy.yaml"))
    assert ok.returncode == 0 and "requests  1 copied" in ok.stdout, ok.stderr
    secret = pg_url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@").replace(
        urlsplit(pg_url).netloc.rpartition("@")[2], "127.0.0.1:1")
    down = await asyncio.to_thread(migrate_cli, "--to", secret, "--from", str(tmp_path / "spend.db"))
    assert down.returncode == 1 and "hunter2" not in down.stdout + down.stderr and "***" in down.stdout


# ---------------------------------------------------------------- replicas on one database


def app_config(url: str, extra: str = "") -> str:
    return f"""
server: {{admin_keys: ["{ADMIN}"]}}
ledger: {{url: "{url}", flush_interval_s: 0.05}}
providers:
  mock: {{type: mock}}
pricing:
  mock/mock-fast: {{input: 1000, output: 1000}}
teams:
  search:
    keys: ["{KEY}"]
    budget: {{daily_usd: 100}}
routes:
  - {{name: fast, match: {{model: fast}}, to: mock/mock-fast}}
{extra}
"""


async def test_two_replicas_share_rows_feedback_and_spend(pg_url, tmp_path, app_client):
    text = app_config(pg_url)
    one = await app_client(text, path=tmp_path / "one" / "proxy.yaml")
    two = await app_client(text, path=tmp_path / "two" / "proxy.yaml")
    served = [await one.post("/v1/chat/completions", json=chat_body(text=f"q{i}"), headers=AUTH) for i in range(3)]
    assert all(r.status_code == 200 for r in served)
    spent = sum(float(r.headers["x-switchyard-cost-usd"]) for r in served)
    # feedback on replica two for a request replica one served: found through the shared table
    request_id = served[0].headers["x-request-id"]
    fb = await two.post("/v1/feedback", json={"request_id": request_id, "score": 1.0}, headers=AUTH)
    assert fb.status_code == 201, fb.text
    extra = await two.post("/v1/chat/completions", json=chat_body(text="on two"), headers=AUTH)
    spent += float(extra.headers["x-switchyard-cost-usd"])
    await one.get("/v1/usage", headers=AUTH)  # a report writes this replica's queue first
    usage = (await two.get("/admin/usage?group_by=team", headers=ADMIN_AUTH)).json()["data"]
    assert usage[0]["requests"] == 4 and usage[0]["cost_usd"] == pytest.approx(spent)  # each sees the other's rows
    # a fresh replica restores the whole fleet's spend from the shared ledger
    three = await app_client(text, path=tmp_path / "three" / "proxy.yaml")
    today = (await three.get("/v1/usage", headers=AUTH)).json()["spend"]["today_usd"]
    assert today == pytest.approx(spent)
    await one.aclose()
    await two.aclose()
    assert await fetchval(pg_url, "SELECT COUNT(*) FROM feedback WHERE request_id = $1", request_id) == 1


async def test_spend_written_by_another_replica_is_restored(pg_url, app_client):
    other = PostgresStore(pg_url)  # "another replica": rows in the shared table, nothing in this process
    now = datetime.now(UTC).timestamp()
    await other.write([row(i, ts=now - 60 - i, team="search", cost=0.5) for i in range(4)], [])
    await other.close()
    client = await app_client(app_config(pg_url))
    usage = (await client.get("/v1/usage", headers=AUTH)).json()
    assert usage["spend"]["today_usd"] == pytest.approx(2.0)


async def test_config_redacts_the_password_and_cli_reads_postgres(pg_url, tmp_path, app_client, monkeypatch):
    parts = urlsplit(pg_url)
    with_password = pg_url.replace(f"{parts.username}@", f"{parts.username}:s3cret-pw@")  # trust auth ignores it
    monkeypatch.setenv("SWITCHYARD_LEDGER_URL", with_password)
    text = app_config("${SWITCHYARD_LEDGER_URL}")
    client = await app_client(text)
    assert (await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)).status_code == 200
    shown = (await client.get("/admin/config", headers=ADMIN_AUTH)).text
    assert "s3cret-pw" not in shown and ":***@" in shown
    await client.aclose()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "proxy", *args, "--config", str(tmp_path / "proxy.yaml")],
                              capture_output=True, text=True, timeout=60, cwd=REPO,
                              env={**__import__("os").environ, "SWITCHYARD_LEDGER_URL": with_password})

    out = await asyncio.to_thread(cli, "usage")
    assert out.returncode == 0, out.stderr
    assert "search" in out.stdout and "s3cret-pw" not in out.stdout and ":***@" in out.stdout


async def test_served_replica_drains_to_postgres_on_sigterm(pg_url, tmp_path):
    from support import ServerProcess

    config = tmp_path / "proxy.yaml"
    config.write_text(app_config(pg_url).replace("flush_interval_s: 0.05", "flush_interval_s: 30, batch_size: 1000"))

    def serve_then_stop() -> tuple[int | None, str]:
        import httpx

        with ServerProcess(config) as server:
            for i in range(5):
                r = httpx.post(server.base_url + "/v1/chat/completions", json=chat_body(text=f"s{i}"), headers=AUTH)
                assert r.status_code == 200
            code = server.stop()  # SIGTERM long before the 30 s flush interval
            return code, server.log()

    code, log = await asyncio.to_thread(serve_then_stop)
    assert code in (0, -15), log  # uvicorn ends on SIGTERM as the signal's own exit
    assert f"ledger: {PG_URL.split('@')[0]}" in log or "ledger: postgresql://" in log
    assert await fetchval(pg_url, "SELECT COUNT(*) FROM requests") == 5

