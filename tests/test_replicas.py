"""Three replica processes on one Redis and one PostgreSQL, under load, as a platform team
runs them: every answered request has exactly one ledger row, whichever replica served
it; reports and an experiment's statistics are the same from every replica; PostgreSQL
cut away for 10 s (a TCP relay in front of it) fails no request and loses no row; a
replica stopped with SIGTERM mid-load loses no row; a fresh replica restores the fleet's
spend from the shared ledger. Needs the machine's Redis and PostgreSQL (never skipped)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from support import (
    PG_URL,
    REDIS_PREFIX,
    REDIS_URL,
    LoadThreads,
    PgDatabase,
    ServerProcess,
    TcpRelay,
    chat_body,
    eventually,
)

pytestmark = pytest.mark.integration

KEY = "sk-replica-team"
ADMIN = "admin-replicas"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}

CONFIG = """
server: {{admin_keys: ["{admin}"], watch: false}}
cache: {{backend: redis, url: "{redis}", key_prefix: "{prefix}"}}
accounting: {{backend: redis, url: "{redis}", key_prefix: "{prefix}", sync_interval_s: 0.2}}
ledger: {{url: "{ledger}", flush_interval_s: 0.2}}
telemetry: {{access_log: false}}
providers: {{mock: {{type: mock}}}}
pricing: {{mock/a: {{input: 1, output: 2}}, mock/b: {{input: 3, output: 4}}}}
teams:
  t: {{keys: ["{key}"], budget: {{monthly_usd: 1000}}}}
routes:
  - name: ab
    match: {{model: ab}}
    experiment:
      variants: {{a: mock/a, b: mock/b}}
      sticky: request
      objective: cost
      promote_when_significant: false
"""


class Load(LoadThreads):
    """Requests spread over the replicas from threads, until stopped; remembers the
    request id of every answered (200) request and counts everything else."""

    def __init__(self, urls: list[str], threads: int = 6) -> None:
        self.urls = urls
        self.answered: list[str] = []
        self.failed: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._counter = itertools.count()
        super().__init__(threads)

    def _run(self, index: int) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                n = next(self._counter)
                url = self.urls[n % len(self.urls)]
                body = chat_body("ab", f"request {n}")
                try:
                    response = client.post(url + "/v1/chat/completions", json=body,
                                           headers={**AUTH, "cache-control": "no-store"})
                except httpx.HTTPError as exc:
                    # a replica that was stopped on purpose refuses connections: not a failure
                    # of the fleet, and not an answered request
                    with self._lock:
                        self.failed[f"connection to a stopped replica: {type(exc).__name__}"] += 1
                    continue
                with self._lock:
                    if response.status_code == 200:
                        self.answered.append(response.headers["x-request-id"])
                    else:
                        self.failed[f"{response.status_code}: {response.text[:200]}"] += 1

    def count(self) -> int:
        with self._lock:
            return len(self.answered)


async def ledger_ids(url: str) -> Counter[str]:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return Counter(r["id"] for r in await conn.fetch("SELECT id FROM requests"))
    finally:
        await conn.close()


def pg_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


@pytest.fixture
def database() -> Any:
    db = asyncio.run(PgDatabase().create())
    yield db
    asyncio.run(db.drop())


def test_three_replicas_share_one_ledger_through_outages_and_a_sigterm(tmp_path: Path, database: PgDatabase):
    relay = TcpRelay(*pg_address(PG_URL))
    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG.format(admin=ADMIN, redis=REDIS_URL, prefix=REDIS_PREFIX + "replicas:",
                                    ledger=relay.url(database.url), key=KEY))
    replicas = [ServerProcess(config, log=tmp_path / f"replica{i}.log").start() for i in range(3)]
    try:
        # until one of a budgeted team's requests has finished, its cost is unknown and the
        # fleet admits its requests one at a time (proxy/data/budget_reserve.lua): one first
        first = httpx.post(replicas[0].base_url + "/v1/chat/completions", json=chat_body("ab"), headers=AUTH)
        assert first.status_code == 200, first.text
        with Load([r.base_url for r in replicas]) as load:
            load.answered.append(first.headers["x-request-id"])
            eventually(lambda: load.count() > 150, timeout=30, what="requests answered before the outage")
            relay.cut()  # PostgreSQL goes away for 10 s under load
            before = load.count()
            time.sleep(10)
            assert load.count() > before + 100, "requests kept flowing while PostgreSQL was away"
            state = httpx.get(replicas[0].base_url + "/readyz").json()
            assert state["status"] == "degraded" and state["ledger"]["state"] == "down", state
            assert state["ledger"]["pending"] > 0, state
            # reports say what they miss: the admin report needs the ledger (503), a team's own
            # usage answers from the shared counters and says the ledger part is stale
            report = httpx.get(replicas[0].base_url + "/admin/usage", headers=ADMIN_AUTH)
            assert report.status_code == 503 and report.json()["error"]["code"] == "ledger_unavailable"
            own = httpx.get(replicas[0].base_url + "/v1/usage", headers=AUTH).json()
            assert own["ledger"]["stale"] is True and own["ledger"]["pending_rows"] > 0, own["ledger"]
            assert own["spend"]["month_usd"] > 0
            relay.restore()
            # the writer retries with backoff up to 5 s; each replica's next try finds it back
            eventually(lambda: httpx.get(replicas[0].base_url + "/readyz").json()["ledger"]["state"] == "up",
                       timeout=40, what="the ledger writing again")
            before = load.count()
            eventually(lambda: load.count() > before + 100, timeout=30, what="load after the outage")
            replicas[2].stop()  # SIGTERM mid-load: it drains its streams and its queued rows
            load.urls = [r.base_url for r in replicas[:2]]
            before = load.count()
            eventually(lambda: load.count() > before + 100, timeout=30, what="load after the SIGTERM")
        # uvicorn re-raises SIGTERM once it has shut down cleanly: -15 is a clean exit too
        assert replicas[2].proc is not None and replicas[2].proc.returncode in (0, -15), replicas[2].log()
        assert "Application shutdown complete" in replicas[2].log()
        refused = sum(n for kind, n in load.failed.items() if kind.startswith("connection to a stopped"))
        assert sum(load.failed.values()) == refused, load.failed  # nothing but the stopped replica's refusals

        def every_row_is_there() -> bool:
            return sum(asyncio.run(ledger_ids(database.url)).values()) >= len(load.answered)

        eventually(every_row_is_there, timeout=30, what="every answered request's row", blocking=True)
        ids = asyncio.run(ledger_ids(database.url))
        assert all(ids[i] == 1 for i in load.answered), "each answered request has exactly one row"
        assert sum(ids.values()) == len(load.answered), "and no row without an answered request"

        # a fresh replica: the same reports from every one, spend restored from the ledger
        replicas[2] = ServerProcess(config, log=tmp_path / "replica-fresh.log").start()
        window = {"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"}
        reports = []
        for replica in replicas:
            usage = {g: httpx.get(replica.base_url + "/admin/usage", params={**window, "group_by": g},
                                  headers=ADMIN_AUTH).json() for g in ("team", "model", "day")}
            experiment = httpx.get(replica.base_url + "/admin/experiments/ab", headers=ADMIN_AUTH).json()
            reports.append((usage, experiment))
        assert reports[0][0]["team"]["data"][0]["requests"] == len(load.answered)
        assert reports[0] == reports[1] == reports[2]

        def spends() -> list[Any]:
            return [httpx.get(r.base_url + "/v1/usage", headers=AUTH).json()["spend"] for r in replicas]

        # spend counters: shared through Redis, each replica reading the others' every sync_interval_s
        eventually(lambda: spends()[0] == spends()[1] == spends()[2], timeout=10, what=spends, blocking=True)
    finally:
        for replica in replicas:
            replica.stop()
        relay.close()
