"""The shipped monitoring works against a live Switchyard: a real Prometheus (Debian's
package) scrapes a served proxy under traffic, and every query of the Grafana dashboard
must return data through Prometheus's HTTP API. promtool checks the deploy/ files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from support import REPO, ServerProcess, free_port

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "switchyard.json"
KEY, OTHER, ADMIN = "sk-dash-team-1", "sk-dash-team-2", "admin-dash-1"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:  # .ci/run installs it; a missing one is a failure, not a skip
        pytest.fail(f"{name} is not installed: apt-get install prometheus")
    return path


def test_promtool_accepts_the_deploy_files():
    promtool = binary("promtool")
    for args in (["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                 ["check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_json_is_what_its_generator_writes():
    generated = subprocess.run(
        ["python3", "-c", "import json, sys; sys.path.insert(0, 'deploy/grafana'); import dashboard; "
                          "print(json.dumps(dashboard.dashboard(), indent=2))"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert generated.returncode == 0, generated.stderr
    assert json.loads(generated.stdout) == json.loads(DASHBOARD.read_text())


def panel_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]


def concrete(expr: str) -> str:
    """Grafana's variables as Prometheus sees them with 'All' selected."""
    for name in ("team", "provider", "model"):
        expr = expr.replace(f"${name}", ".*")
    return expr.replace("$__rate_interval", "20s").replace("$__range", "5m").replace("$__interval", "5s")


CONFIG = f"""
server: {{admin_keys: ["{ADMIN}"]}}
cache: {{backend: memory}}
ledger: {{path: off}}
providers:
  mock: {{type: mock}}
  down: {{type: openai, base_url: "http://127.0.0.1:{{dead}}/v1", api_key: sk-x, connect_timeout_s: 1}}
pricing:
  mock/gpt-4o-mini: {{input: 0.15, output: 0.6}}
  mock/claude: {{input: 3, output: 15}}
teams:
  search: {{keys: ["{KEY}"]}}
  research: {{keys: ["{OTHER}"]}}
routes:
  - {{name: fast, match: {{model: fast}}, to: mock/gpt-4o-mini}}
  - {{name: smart, match: {{model: smart}}, to: mock/claude}}
  - {{name: broken, match: {{model: broken}}, to: down/gpt-4o}}
"""


def traffic(base: str, rounds: int) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        for i in range(rounds):
            for key in (KEY, OTHER):
                auth = {"Authorization": f"Bearer {key}"}
                for model in ("fast", "smart"):
                    body = {"model": model, "messages": [{"role": "user", "content": f"q{i % 3}"}]}
                    client.post("/v1/chat/completions", json=body, headers=auth)
                    unique = {**body, "messages": [{"role": "user", "content": f"s{time.monotonic_ns()}"}]}
                    client.post("/v1/chat/completions", json={**unique, "stream": True}, headers=auth)
                client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user",
                                                                                           "content": "x"}]},
                            headers=auth)
                client.post("/v1/chat/completions", json={"model": "broken", "messages": [{"role": "user",
                                                                                             "content": "x"}]},
                            headers=auth)


def test_every_dashboard_query_returns_data_from_a_real_prometheus(tmp_path):
    prometheus = binary("prometheus")
    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG.replace("{dead}", str(free_port())))
    with ServerProcess(config) as server:
        scrape = tmp_path / "prometheus.yml"
        scrape.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: switchyard\n    static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
        )
        port = free_port()
        prometheus_log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [prometheus, f"--config.file={scrape}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=prometheus_log,
        )
        api = f"http://127.0.0.1:{port}/api/v1"
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            traffic(server.base_url, 3)
            config.write_text(config.read_text() + "\n")  # a reload, for the reload panels
            httpx.post(server.base_url + "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
            started = time.monotonic()
            while time.monotonic() - started < 12:  # keep traffic flowing across several scrapes
                traffic(server.base_url, 1)
                time.sleep(0.5)
            failures = []
            for title, expr in panel_queries():
                query = concrete(expr)
                result = httpx.get(f"{api}/query", params={"query": query}, timeout=10).json()
                if result.get("status") != "success":
                    failures.append(f"{title}: {query}: {result.get('error')}")
                elif not result["data"]["result"]:
                    failures.append(f"{title}: {query}: no data")
            for variable in ("team", "provider", "model"):
                values = httpx.get(f"{api}/label/{variable}/values",
                                   params={"match[]": "llm_requests_total"}).json()["data"]
                if not values:
                    failures.append(f"variable {variable}: no values")
            assert not failures, "\n".join(failures)
            rules = subprocess.run([binary("promtool"), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                                   capture_output=True, text=True)
            assert rules.returncode == 0
            for expr in re.findall(r"expr: (.+)", (DEPLOY / "prometheus" / "alerts.yml").read_text()):
                if expr.strip() == "|":
                    continue
                ok = httpx.get(f"{api}/query", params={"query": expr}, timeout=10).json()
                assert ok["status"] == "success", (expr, ok)
        finally:
            proc.terminate()
            proc.wait(10)
            prometheus_log.close()
