"""`switchyard replay` and POST /admin/replay on a synthetic ledger whose answers are known
by construction (see `ledger_rows`): the current policy sends everything to mock/x; the
candidate sends team ads's `fast` to b/y (ten times mock/x's price), `slow` to an unpriced
target, and no longer knows team legacy."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from proxy.accounting.ledger import COLUMNS, SqliteStore
from proxy.replay import draw, replay
from proxy.snapshot import snapshot_from_text

ADMIN = "admin-replay-key"
T0 = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
SINCE, UNTIL = "2026-03-01T00:00:00Z", "2026-03-10T00:00:00Z"

CURRENT = f"""
server: {{admin_keys: ["{ADMIN}"]}}
ledger: {{path: ledger.db}}
providers: {{mock: {{type: mock}}, b: {{type: mock}}}}
pricing: {{mock/x: {{input: 1, output: 2}}, b/y: {{input: 10, output: 20}}}}
teams: {{search: {{}}, ads: {{}}, legacy: {{}}}}
routes:
  - {{name: fast, match: {{model: fast}}, to: mock/x}}
  - {{name: slow, match: {{model: slow}}, to: mock/x}}
"""

CANDIDATE = """
providers: {mock: {type: mock}, b: {type: mock}}
pricing: {mock/x: {input: 1, output: 2}, b/y: {input: 10, output: 20}}
teams:
  search: {}
  ads: {budget: {daily_usd: 0.25, monthly_usd: 0.89}}
routes:
  - {name: ads-b, match: {model: fast, teams: [ads]}, to: b/y}
  - {name: fast, match: {model: fast}, to: mock/x}
  - {name: slow, match: {model: slow}, to: b/zzz-unpriced}
"""

INVALID = """
providers: {mock: {type: mock}}
routes:
  - {name: r, match: {model: fast}, split: {mock/x: 0}}
"""


def row(i: int, ts: float, team: str, model: str, target: str = "mock/x", status: int = 200,
        tokens: bool = True, cost: float | None = 0.002, latency: float = 100.0) -> tuple[Any, ...]:
    provider, _, upstream = target.partition("/")
    values = {"id": f"req-{i}", "ts": ts, "team": team, "user": f"u{i % 5}", "requested_model": model,
              "route": model, "provider": provider, "model": upstream, "status": status, "error_kind": None,
              "stream": i % 2, "cache": "miss", "input_tokens": 1000 if tokens else None,
              "output_tokens": 500 if tokens else None, "cost_usd": cost, "saved_usd": None, "baseline_usd": None,
              "latency_ms": latency, "ttft_ms": None, "experiment": None, "variant": None, "prompt": None,
              "prompt_version": None, "cache_entry": None}
    return tuple(values[c] for c in COLUMNS)


def ledger_rows() -> list[tuple[Any, ...]]:
    """100 `fast` requests over three days (even i: search, odd: ads); ten of ads's were
    recorded at b/y (300 ms), two of those failed with 502 and no tokens; 4 `slow` and 3
    from team legacy. Recorded cost: 90 x 0.002 + 8 x 0.02 + 7 x 0.002 = 0.354."""
    rows = []
    for i in range(100):
        ts = T0 + (i % 3) * 86400 + i * 60
        team = "search" if i % 2 == 0 else "ads"
        if i % 10 == 1:
            failed = i in (1, 11)
            rows.append(row(i, ts, team, "fast", "b/y", status=502 if failed else 200, tokens=not failed,
                            cost=None if failed else 0.02, latency=5.0 if failed else 300.0))
        else:
            rows.append(row(i, ts, team, "fast"))
    rows += [row(100 + i, T0 + 3600 * (i + 1) + 30, "search", "slow") for i in range(4)]
    rows += [row(200 + i, T0 + 7200 * (i + 1) + 45, "legacy", "fast") for i in range(3)]
    return rows


async def write_ledger_async(path: Path, rows: list[tuple[Any, ...]]) -> None:
    store = SqliteStore(str(path))
    await store.open()  # the real schema
    await store.write(rows, [])
    await store.close()


def write_ledger(path: Path, rows: list[tuple[Any, ...]]) -> None:
    asyncio.run(write_ledger_async(path, rows))


def as_dicts(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows]


def report(candidate: str = CANDIDATE, rows: list[tuple[Any, ...]] | None = None) -> dict[str, Any]:
    return replay(snapshot_from_text(CURRENT), snapshot_from_text(candidate), as_dicts(rows or ledger_rows()),
                  since=T0 - 86400, until=T0 + 8 * 86400)


def test_counts_routes_targets_moves_and_refusals():
    r = report()
    assert r["requests"] == 107
    assert r["routes"] == {"ads-b": {"before": 0, "after": 50}, "fast": {"before": 103, "after": 50},
                           "slow": {"before": 4, "after": 4}}
    assert r["targets"] == {"b/y": {"before": 0, "after": 50}, "b/zzz-unpriced": {"before": 0, "after": 4},
                            "mock/x": {"before": 107, "after": 50}}
    assert r["moves"] == [{"from": "mock/x", "to": "b/y", "requests": 50},
                          {"from": "mock/x", "to": "b/zzz-unpriced", "requests": 4},
                          {"from": "mock/x", "to": "refused: unknown_team", "requests": 3}]
    assert r["moved"] == 57
    assert r["refused"] == {"before": {}, "after": {"unknown_team": 3}}
    assert r["notes"] == []
    json.dumps(r)  # serialisable as it is


def test_cost_before_and_after_with_the_unknown_listed():
    cost = report()["cost"]
    assert cost["before_usd"] == pytest.approx(0.354)
    # search's 50 at mock/x (0.002) + ads's 48 with tokens at b/y (0.02); 2 without tokens, 4 unpriced
    assert cost["after_usd"] == pytest.approx(0.1 + 0.96)
    assert cost["unknown"] == {"requests": 6, "without_tokens": 2, "unpriced_targets": {"b/zzz-unpriced": 4}}


@pytest.mark.parametrize(("target", "expected"), [
    ("b/y", {"requests": 50, "observed": 10, "latency_ms": 300.0, "error_rate": 0.2}),
    ("mock/x", {"requests": 50, "observed": 97, "latency_ms": 100.0, "error_rate": 0.0}),
    ("b/zzz-unpriced", {"requests": 4, "observed": 0, "latency_ms": "unknown", "error_rate": "unknown"}),
])
def test_expected_latency_and_errors_per_new_target(target, expected):
    assert report()["expected"][target] == expected


def test_budget_spend_by_day_and_first_exhaustion():
    budgets = report()["budgets"]
    assert list(budgets) == ["ads"]  # search has no budget in the candidate
    ads = budgets["ads"]
    assert [d["day"] for d in ads["days"]] == ["2026-03-02", "2026-03-03", "2026-03-04"]
    assert [d["spend_usd"] for d in ads["days"]] == pytest.approx([0.34, 0.32, 0.30])
    assert ads["months"] == [{"month": "2026-03", "spend_usd": pytest.approx(0.96)}]
    # day 1: ads's 13th request (i = 3 + 6 * 12 = 75, at 75 minutes) passes 0.25
    assert ads["daily_exhausted_at"] == "2026-03-02T01:15:00Z"
    # 0.66 by the end of day 2; on day 3 the 12th priced request (i = 77) passes 0.89
    assert ads["monthly_exhausted_at"] == "2026-03-04T01:17:00Z"


def test_a_budget_never_reached_is_null():
    generous = CANDIDATE.replace("daily_usd: 0.25, monthly_usd: 0.89", "daily_usd: 100")
    ads = report(generous)["budgets"]["ads"]
    assert ads["daily_exhausted_at"] is None and ads["monthly_exhausted_at"] is None
    assert ads["monthly_usd"] is None


def test_same_split_on_both_sides_moves_nothing_and_runs_repeat():
    split = "split: {mock/x: 50, b/y: 50}"
    current = CURRENT.replace("{name: fast, match: {model: fast}, to: mock/x}",
                              "{name: fast, match: {model: fast}, " + split + "}")
    candidate = current.replace('server: {admin_keys: ["admin-replay-key"]}', "")
    rows = as_dicts(ledger_rows())
    first = replay(snapshot_from_text(current), snapshot_from_text(candidate), rows, since=T0, until=T0 + 1)
    again = replay(snapshot_from_text(current), snapshot_from_text(candidate), rows, since=T0, until=T0 + 1)
    assert first == again
    assert first["moves"] == [] and first["moved"] == 0
    assert 30 <= first["targets"]["b/y"]["after"] <= 73  # the draw is spread, not constant
    assert all(0 <= draw(f"req-{i}") < 1 for i in range(100))


def test_complexity_conditions_are_said_to_be_skipped():
    candidate = CANDIDATE.replace("  - {name: fast, match: {model: fast}, to: mock/x}",
                                  "  - {name: easy, match: {model: fast, complexity: [simple]}, to: b/y}\n"
                                  "  - {name: fast, match: {model: fast}, to: mock/x}")
    r = report(candidate)
    assert r["notes"] and "complexity" in r["notes"][0]
    assert r["routes"].get("easy", {"after": 0})["after"] == 0  # no level: the rule never applies


# ---------------------------------------------------------------- the command


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ), timeout=60)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "proxy.yaml").write_text(CURRENT)
    (tmp_path / "candidate.yaml").write_text(CANDIDATE)
    (tmp_path / "invalid.yaml").write_text(INVALID)
    write_ledger(tmp_path / "ledger.db", ledger_rows())
    return tmp_path


@pytest.mark.integration
def test_cli_json_is_the_report(files):
    done = run("replay", "candidate.yaml", "--config", "proxy.yaml", "--since", SINCE, "--until", UNTIL, "--json",
               cwd=files)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    expected = report()
    assert out["window"] == {"since": SINCE, "until": UNTIL, "team": None}
    for key in ("requests", "routes", "targets", "moves", "refused", "expected", "budgets"):
        assert out[key] == expected[key], key


@pytest.mark.integration
def test_cli_table_and_team_filter(files):
    done = run("replay", "candidate.yaml", "--config", "proxy.yaml", "--since", SINCE, "--until", UNTIL,
               "--team", "legacy", cwd=files)
    assert done.returncode == 0, done.stderr
    assert "replay of 3 requests" in done.stdout and "team legacy" in done.stdout
    assert "refused: unknown_team" in done.stdout and "refused after: unknown_team 3" in done.stdout


@pytest.mark.integration
def test_cli_default_window_is_the_last_week(files):
    done = run("replay", "candidate.yaml", "--config", "proxy.yaml", "--json", cwd=files)
    assert done.returncode == 0, done.stderr
    window = json.loads(done.stdout)["window"]
    since, until = (datetime.fromisoformat(window[k].replace("Z", "+00:00")) for k in ("since", "until"))
    assert (until - since).total_seconds() == pytest.approx(7 * 86400, abs=2)
    assert abs(until.timestamp() - datetime.now(UTC).timestamp()) < 60


@pytest.mark.integration
def test_cli_invalid_candidate_lists_path_and_reason(files):
    done = run("replay", "invalid.yaml", "--config", "proxy.yaml", cwd=files)
    assert done.returncode == 1
    assert "invalid.yaml: invalid" in done.stderr and "routes[0].split" in done.stderr
    assert done.stdout == ""


# ---------------------------------------------------------------- the admin API


async def test_admin_replay(app_client, tmp_path):
    await write_ledger_async(tmp_path / "ledger.db", ledger_rows())
    client = await app_client(CURRENT)
    admin = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/yaml"}
    url = f"/admin/replay?since={SINCE}&until={UNTIL}"
    answer = await client.post(url, headers=admin, content=CANDIDATE)
    assert answer.status_code == 200, answer.text
    got, expected = answer.json(), report()
    for key in ("requests", "routes", "targets", "moves", "refused", "expected", "budgets"):
        assert got[key] == expected[key], key
    one_team = (await client.post(url + "&team=ads", headers=admin, content=CANDIDATE)).json()
    assert one_team["requests"] == 50 and one_team["window"]["team"] == "ads"


@pytest.mark.parametrize(("headers", "body", "status", "code"), [
    ({"Authorization": f"Bearer {ADMIN}"}, INVALID, 422, "invalid_config"),
    ({"Authorization": f"Bearer {ADMIN}"}, "x" * (1024 * 1024 + 1), 413, "request_too_large"),
    ({"Authorization": "Bearer wrong"}, CANDIDATE, 401, "invalid_api_key"),
    ({}, CANDIDATE, 401, "invalid_api_key"),
])
async def test_admin_replay_refusals(app_client, headers, body, status, code):
    client = await app_client(CURRENT)
    answer = await client.post(f"/admin/replay?since={SINCE}", headers=headers, content=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    if status == 422:
        assert {"path": "routes[0].split", "reason": answer.json()["problems"][0]["reason"]} \
            == answer.json()["problems"][0]


async def test_admin_replay_is_forbidden_without_admin_keys(app_client):
    client = await app_client(CURRENT.replace(f'server: {{admin_keys: ["{ADMIN}"]}}', ""))
    answer = await client.post("/admin/replay", headers={"Authorization": f"Bearer {ADMIN}"}, content=CANDIDATE)
    assert answer.status_code == 403
