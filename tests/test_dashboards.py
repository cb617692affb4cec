"""The shipped monitoring works against a live Switchyard.

A real Prometheus (Debian's package; `.ci/run` installs it) scrapes a served proxy under
traffic, with the shipped scrape config and alert rules, and every query of the Grafana
dashboard must return data through Prometheus's HTTP API; every alert rule must evaluate
without error. promtool checks the deploy/ files and runs the alert unit tests, and the
compose stack, Grafana provisioning and Kubernetes manifests are checked for the
references between them (paths, service names, ports), since no Docker engine or cluster
is available to the tests.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from proxy.config import load_text
from support import REPO, ServerProcess, chat_body, dead_port, eventually, free_port

DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "switchyard.json"
KEY, OTHER, ADMIN = "sk-dash-team-1", "sk-dash-team-2", "admin-dash-1"

# what Grafana substitutes, with "All" selected for the template variables
RATE_INTERVAL, INTERVAL, RANGE = "20s", "5s", "5m"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:  # CI installs it; a missing one is a failure, never a skip
        pytest.fail(f"{name} is not installed: apt-get install prometheus (Debian/Ubuntu), which provides "
                    "prometheus and promtool")
    return path


def promtool(*args: str) -> None:
    done = subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


# ------------------------------------------------------------------ static checks


@pytest.mark.integration
def test_promtool_accepts_the_deploy_files():
    promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))  # also checks the rule files it names
    promtool("check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    promtool("test", "rules", str(PROMETHEUS_DIR / "alerts.test.yml"))


def test_dashboard_json_is_what_its_generator_writes():
    spec = importlib.util.spec_from_file_location("switchyard_dashboard", DEPLOY / "grafana" / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.dashboard() == json.loads(DASHBOARD.read_text()), \
        "deploy/grafana/dashboards/switchyard.json is stale: python deploy/grafana/dashboard.py"


def test_dashboard_is_a_well_formed_grafana_dashboard():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids, cells = set(), set()
    for panel in board["panels"]:
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']} is wider than the grid"
        own = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not own & cells, f"{panel['title']} overlaps another panel"
        cells |= own
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"] and t["expr"].strip(), panel["title"]
    for name in ("team", "provider", "model"):
        assert variables[name]["datasource"]["uid"] == "${datasource}" and variables[name]["allValue"] == ".*"


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path, for bind mounts of files in the repository."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = (DEPLOY / source).resolve()
    return found


def test_compose_stack_refers_to_files_and_services_that_exist():
    stack = compose()
    services = stack["services"]
    assert {"switchyard", "redis", "prometheus", "grafana", "otel-collector", "jaeger"} <= set(services)
    for name, service in services.items():
        for target, source in mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    sy = services["switchyard"]
    assert (DEPLOY / sy["build"]["context"] / sy["build"].get("dockerfile", "Dockerfile")).exists()
    config_in_container = sy["command"][sy["command"].index("--config") + 1]
    dirs = mounts(sy)
    config_dir = str(Path(config_in_container).parent)
    assert config_dir in dirs and dirs[config_dir].is_dir(), "mount proxy.yaml's directory: live reload needs it"
    assert (dirs[config_dir] / Path(config_in_container).name).is_file()
    env = sy["environment"]
    env = env if isinstance(env, dict) else dict(e.partition("=")[::2] for e in env)
    assert {"OPENAI_API_KEY", "SWITCHYARD_ADMIN_KEY"} <= set(env)

    # Prometheus scrapes the switchyard service on its port, with the rules beside its config
    prom = mounts(services["prometheus"])
    scrape = yaml.safe_load(prom["/etc/prometheus/prometheus.yml"].read_text())
    for rule_file in scrape["rule_files"]:
        assert str(Path("/etc/prometheus") / rule_file) in prom, f"{rule_file} is not mounted beside prometheus.yml"
    targets = [t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "switchyard:8080" in targets

    # Grafana: the datasource points at the prometheus service, the dashboards' folder is mounted
    grafana = mounts(services["grafana"])
    provisioning = grafana["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert urlsplit(datasources[0]["url"]).hostname == "prometheus"
    providers = yaml.safe_load((provisioning / "dashboards" / "switchyard.yml").read_text())["providers"]
    folder = providers[0]["options"]["path"]
    assert folder in grafana and (grafana[folder] / DASHBOARD.name).exists()

    # traces: switchyard -> collector (OTLP/HTTP 4318) -> jaeger (OTLP/gRPC 4317)
    assert urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"]).netloc == "otel-collector:4318"
    collector_files = mounts(services["otel-collector"])
    collector = yaml.safe_load(next(iter(collector_files.values())).read_text())
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    for exporter in collector["service"]["pipelines"]["traces"]["exporters"]:
        host = collector["exporters"][exporter]["endpoint"].split("://")[-1].split(":")[0]
        assert host in services, f"collector exports to {host}, not a compose service"


def kubernetes() -> dict[str, dict[str, Any]]:
    docs = [d for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_kubernetes_manifests_fit_together():
    k8s = kubernetes()
    deployment, service, configmap = k8s["Deployment"], k8s["Service"], k8s["ConfigMap"]
    manifests = {f.name for f in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(k8s["Kustomization"]["resources"]) == sorted(manifests)
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates: mount the directory"
    assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_path.name in configmap["data"]


@pytest.mark.parametrize("source", ["deploy/switchyard/proxy.yaml", "deploy/kubernetes/configmap.yaml"])
def test_deploy_policies_are_valid(source):
    text = (REPO / source).read_text()
    if source.endswith("configmap.yaml"):
        text = yaml.safe_load(text)["data"]["proxy.yaml"]
    load_text(text, env={})  # raises ConfigError with path and reason


def test_compose_policy_routes_like_the_repository_default():
    """deploy/switchyard/proxy.yaml is proxy.yaml with the stack's Redis, ledger and bind
    address; the policy itself (providers, teams, routes) must not drift from it."""
    mine, default = (yaml.safe_load((REPO / p).read_text()) for p in ("deploy/switchyard/proxy.yaml", "proxy.yaml"))
    for section in ("providers", "teams", "routes", "pricing"):
        assert mine.get(section) == default.get(section), f"deploy/switchyard/proxy.yaml: {section} differs"


# ------------------------------------------------------------------ live: Switchyard + Prometheus


def panel_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]


def concrete(expr: str) -> str:
    """The query Prometheus gets from Grafana with 'All' selected."""
    values = {"team": ".*", "provider": ".*", "model": ".*",
              "__rate_interval": RATE_INTERVAL, "__interval": INTERVAL, "__range": RANGE}
    expr = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), expr)
    assert "$" not in expr, f"unknown variable in {expr}"
    return expr


def policy(dead_port: int, extra_route: str = "") -> str:
    return f"""
server: {{admin_keys: ["{ADMIN}"], watch: false}}
cache: {{backend: memory}}
ledger: {{path: off}}
providers:
  mock: {{type: mock}}
  down: {{type: openai, base_url: "http://127.0.0.1:{dead_port}/v1", api_key: sk-x, connect_timeout_s: 1}}
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
{extra_route}"""


def traffic(client: httpx.Client) -> None:
    """One round for both teams: a cached question (miss, then hits), a fresh stream,
    an unknown model (404), a dead upstream (502, or 503 with its circuit open) and a bad
    key (401)."""

    def chat(key: str, model: str, text: str, stream: bool = False) -> int:
        body = chat_body(model, text, stream=stream)
        response = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        response.read()
        return response.status_code

    for key in (KEY, OTHER):
        assert chat(key, "fast", "the cached question") == 200
        assert chat(key, "smart", f"fresh {time.monotonic_ns()}", stream=True) == 200
        assert chat(key, "smart", "a cached stream", stream=True) == 200
        assert chat(key, "nope", "x") == 404
        assert chat(key, "broken", "x") in (502, 503)  # 503 once the provider's circuit is open
    assert chat("sk-unknown", "fast", "x") == 401


class Prometheus:
    """A real Prometheus on a free port with the shipped scrape config and rules, scraping
    `target` every second; its TSDB and log live in `workdir`."""

    def __init__(self, workdir: Path, target: str) -> None:
        shipped = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        shipped["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
        shipped["rule_files"] = [str(PROMETHEUS_DIR / f) for f in shipped["rule_files"]]
        (job,) = [j for j in shipped["scrape_configs"] if j["job_name"] == "switchyard"]
        job.pop("scrape_interval", None)
        job["static_configs"] = [{"targets": [target]}]
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(shipped))
        self.workdir = workdir
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api/v1"
        self.http = httpx.Client(timeout=10)

    def __enter__(self) -> Prometheus:
        self.log = open(self.workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=self.log,
        )
        self.wait(lambda: self.http.get(f"http://127.0.0.1:{self.port}/-/ready").status_code == 200, 30, "ready")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
        self.http.close()

    def wait(self, condition, timeout_s: float, what: str) -> None:
        def met() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log_text()}")
            return condition()

        try:
            eventually(met, timeout=timeout_s, interval=0.2, ignore=(httpx.HTTPError,))
        except AssertionError:
            pytest.fail(f"prometheus: not {what} after {timeout_s}s\n{self.log_text()}")

    def log_text(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-3000:]

    def query(self, expr: str) -> dict[str, Any]:
        return self.http.get(f"{self.api}/query", params={"query": expr}).json()

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert result["status"] == "success", (expr, result)
        samples = result["data"]["result"]
        return float(samples[0]["value"][1]) if samples else None


def failing_panels(prometheus: Prometheus) -> list[str]:
    failures = []
    for title, expr in panel_queries():
        query = concrete(expr)
        result = prometheus.query(query)
        if result.get("status") != "success":
            failures.append(f"{title}: {query}: {result.get('errorType')}: {result.get('error')}")
        elif not result["data"]["result"]:
            failures.append(f"{title}: {query}: no data")
    return failures


@pytest.mark.integration
def test_every_dashboard_query_returns_data_from_a_real_prometheus(tmp_path):
    binary("prometheus")
    config = tmp_path / "proxy.yaml"
    dead = dead_port()  # nothing listens there: connection errors for the `down` provider
    config.write_text(policy(dead))
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with ServerProcess(config) as server, Prometheus(tmp_path, f"127.0.0.1:{server.port}") as prometheus, \
            httpx.Client(base_url=server.base_url, timeout=10) as client:
        prometheus.wait(lambda: prometheus.value('up{job="switchyard"}') == 1, 20, "scraping switchyard")
        traffic(client)

        # reloads: a changed policy (ok), a broken one (error, the old one keeps serving), the same again (unchanged)
        config.write_text(policy(dead, "  - {name: extra, match: {model: extra}, to: mock/gpt-4o-mini}\n"))
        assert client.post("/admin/reload", headers=admin).json()["generation"] == 2
        good = config.read_text()
        config.write_text(good + "  - {name: extra, match: {model: x}, to: nowhere/x}\n")
        assert client.post("/admin/reload", headers=admin).status_code == 422
        config.write_text(good)
        server.signal(signal.SIGHUP)  # not forced, unlike the admin API: the serving digest is unchanged
        eventually(lambda: client.get("/admin/config", headers=admin).json()["reloads"]["unchanged"] >= 1,
                   interval=0.05, what="SIGHUP to reload")

        # keep traffic flowing until every panel has data over its rate window
        failures: list[str] = ["not queried yet"]

        def every_panel_has_data() -> bool:
            traffic(client)
            failures[:] = failing_panels(prometheus)
            return not failures

        eventually(every_panel_has_data, timeout=30, interval=0.5,
                   what=lambda: "every dashboard query to return data; still without:\n" + "\n".join(failures))
        assert not failures, "dashboard queries without data:\n" + "\n".join(failures)

        # the traffic shows up as what it was
        expected = {
            'sum(llm_cache_requests_total{result="hit"})': "cache hits",
            'sum(llm_requests_total{cache="hit", status="200"})': "requests answered from cache",
            'sum(llm_requests_total{status="404", provider="none"})': "unknown-model 404s",
            'sum(llm_requests_total{status="401", team="none"})': "bad-key 401s",
            'sum(llm_requests_total{status="502", provider="down", route="broken"})': "dead-upstream 502s",
            'sum(llm_provider_errors_total{provider="down", model="gpt-4o", kind="connection"})': "connection errors",
            'sum(llm_time_to_first_token_seconds_count{provider="mock"})': "streams' time to first token",
            'sum(llm_tokens_total{type="output", team="research"})': "output tokens of a team",
            'sum(llm_cost_usd_total{team="search"})': "cost of a team",
            'switchyard_config_reloads_total{result="error"}': "rejected reloads",
            'switchyard_config_reloads_total{result="unchanged"}': "unchanged reloads",
        }
        missing = [f"{what}: {expr}" for expr, what in expected.items() if not (prometheus.value(expr) or 0) > 0]
        assert not missing, "\n".join(missing)
        assert prometheus.value("switchyard_config_generation") == 2
        assert prometheus.value('count(switchyard_config_info == 1)') == 1
        assert prometheus.value('llm_cost_usd_total{team="none"}') is None  # refused requests cost nothing

        # the template variables list values, from the query Grafana runs
        for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable.get("definition", ""))
            if match:
                metric, label = match.groups()
                values = prometheus.http.get(f"{prometheus.api}/label/{label}/values",
                                             params={"match[]": metric}).json()["data"]
                assert {"search", "research", "mock", "down", "gpt-4o-mini"} & set(values), (variable["name"], values)

        # the shipped alert rules, loaded by this Prometheus, evaluate without error
        def rules() -> list[dict[str, Any]]:
            groups = prometheus.http.get(f"{prometheus.api}/rules").json()["data"]["groups"]
            return [rule for group in groups for rule in group["rules"]]

        shipped = [r["alert"] for g in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
                   for r in g["rules"]]
        prometheus.wait(lambda: all(r["health"] != "unknown" for r in rules()), 10, "evaluating the rules")
        loaded = rules()
        assert sorted(r["name"] for r in loaded) == sorted(shipped)
        broken = [f"{r['name']}: {r.get('lastError')}" for r in loaded if r["health"] != "ok"]
        assert not broken, "\n".join(broken)
