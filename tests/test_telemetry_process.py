"""Telemetry of a served process: metrics merged across workers, JSON log lines on stderr."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from support import ServerProcess

KEY = "sk-process-team-1"
CONFIG = f"""
providers:
  mock: {{type: mock}}
teams:
  search: {{keys: ["{KEY}"]}}
routes:
  - {{name: fast, match: {{model: fast}}, to: mock/mock-fast}}
"""
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hello"}]}


def requests_total(base_url: str) -> float:
    text = httpx.get(base_url + "/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "llm_requests_total"
    )


def test_metrics_add_up_across_workers(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
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
