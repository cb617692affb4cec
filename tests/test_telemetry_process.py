"""Telemetry of a served process: metrics merged across workers, JSON log lines on stderr."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import ServerProcess, chat_body

pytestmark = pytest.mark.integration  # the served proxy (two workers), in processes of its own

KEY = "sk-process-team-1"
CONFIG = f"""
providers:
  mock: {{type: mock}}
teams:
  search: {{keys: ["{KEY}"]}}
routes:
  - {{name: fast, match: {{model: fast}}, to: mock/mock-fast}}
"""
CHAT = chat_body()


def requests_total(base_url: str) -> float:
    text = httpx.get(base_url + "/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "llm_requests_total"
    )


# a team with a budget and limits on the memory backend: what crashed `--workers 2` once
LIMITED = CONFIG.replace(
    f'search: {{keys: ["{KEY}"]}}',
    f'search: {{keys: ["{KEY}"], budget: {{daily_usd: 100}}, limits: {{rpm: 100000}}}}',
) + "ledger: {path: ledger.db, flush_interval_s: 0.05}\naccounting: {backend: memory}\n"


def test_metrics_add_up_across_workers(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(LIMITED)
    assert "budget" in LIMITED
    with ServerProcess(path, args=["--workers", "2"]) as server:
        for _ in range(30):  # a fresh connection each time, so both workers take some
            with httpx.Client(base_url=server.base_url) as client:
                response = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
                assert response.status_code == 200
        for _ in range(6):  # whichever worker answers the scrape reports the total
            with httpx.Client(base_url=server.base_url) as client:
                text = client.get("/metrics").text
            total = sum(
                s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "llm_requests_total"
            )
            assert total == 30
    log = server.log()
    lines = log.splitlines()
    assert lines and all(line.startswith("{") for line in lines), "every line is JSON: " + log[:2000]
    parsed = [json.loads(line) for line in lines]
    assert not [p for p in parsed if p["logger"] == "py.warnings"], "no warnings from libraries"
    messages = [p.get("message", "") for p in parsed]  # access-log lines have fields instead
    startup = [m for m in messages if m.startswith("switchyard ") and " serving " in m]
    assert len(startup) == 1 and "with 2 workers" in startup[0]
    assert any("accounting.backend: memory" in m for m in messages)
    workers = {m for m in messages if m.startswith("Started server process")}
    assert len(workers) == 2


def test_access_log_lines_are_json(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
    with ServerProcess(path) as server:
        response = httpx.post(
            server.base_url + "/v1/chat/completions", json=CHAT,
            headers={"Authorization": f"Bearer {KEY}", "x-request-id": "req-json-line"},
        )
        assert response.status_code == 200
        assert requests_total(server.base_url) == 1
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "switchyard.access"]
    assert len(access) == 1
    assert access[0]["request_id"] == "req-json-line"
    assert access[0]["team"] == "search" and access[0]["status"] == 200
    assert KEY not in server.log()
    assert all(line["level"] in {"debug", "info", "warning", "error", "critical"} for line in lines)
