"""Writes deploy/grafana/dashboards/switchyard.json, the shipped Grafana dashboard.

The JSON is committed (Grafana provisions it as is); this script is its source, so
panels are edited here and the file regenerated:  python deploy/grafana/dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "switchyard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'team=~"$team", provider=~"$provider", model=~"$model"'
PSEL = 'provider=~"$provider", model=~"$model"'
RI = "$__rate_interval"


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict:
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref}
    if instant:
        t.update(instant=True, range=False, format="table")
    return t


def panel(title: str, kind: str, targets: list[dict], x: int, y: int, w: int = 12, h: int = 8,
          unit: str = "short", description: str = "", **extra: object) -> dict:
    return {
        "title": title,
        "type": kind,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": extra.pop("options", {}),
        **extra,
    }


def quantiles(metric: str, labels: str, by: str = "le") -> list[dict]:
    return [
        target(f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{labels}}}[{RI}])))", f"p{int(q * 100)}",
               ref)
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def panels() -> list[dict]:
    return [
        panel("Requests / min by provider and model", "timeseries", [
            target(f"sum by (provider, model) (rate(llm_requests_total{{{SEL}}}[{RI}])) * 60",
                   "{{provider}}/{{model}}"),
        ], 0, 0, unit="reqpm"),
        panel("Latency (whole request)", "timeseries", quantiles("llm_request_duration_seconds", PSEL), 12, 0,
              unit="s"),
        panel("Time to first token (streams)", "timeseries",
              quantiles("llm_time_to_first_token_seconds", PSEL)[:2], 0, 8, unit="s"),
        panel("Proxy overhead (excluding upstream)", "timeseries", [
            target(f"histogram_quantile(0.5, sum by (le) (rate(llm_proxy_overhead_seconds_bucket[{RI}])))", "p50"),
            target(f"histogram_quantile(0.99, sum by (le) (rate(llm_proxy_overhead_seconds_bucket[{RI}])))", "p99",
                   "B"),
        ], 12, 8, unit="s"),
        panel("Cost per hour by team", "timeseries", [
            target(f"sum by (team) (rate(llm_cost_usd_total{{{SEL}}}[{RI}])) * 3600", "{{team}}"),
        ], 0, 16, unit="currencyUSD"),
        panel("Top teams by cost (dashboard range)", "table", [
            target(f"topk(10, sum by (team) (increase(llm_cost_usd_total{{{SEL}}}[$__range])))", instant=True),
        ], 12, 16, unit="currencyUSD",
            transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True},
                                                             "renameByName": {"Value": "cost (USD)"}}}]),
        panel("Tokens / min by type", "timeseries", [
            target(f"sum by (type) (rate(llm_tokens_total{{{SEL}}}[{RI}])) * 60", "{{type}}"),
        ], 0, 24, unit="short"),
        panel("Cache hit rate", "timeseries", [
            target(f'sum(rate(llm_cache_requests_total{{result="hit"}}[{RI}])) / '
                   f'clamp_min(sum(rate(llm_cache_requests_total{{result=~"hit|miss"}}[{RI}])), 1e-9)', "hit rate"),
        ], 12, 24, unit="percentunit"),
        panel("Provider errors by kind", "timeseries", [
            target(f"sum by (provider, kind) (rate(llm_provider_errors_total{{{PSEL}}}[{RI}]))",
                   "{{provider}} {{kind}}"),
        ], 0, 32, unit="reqps"),
        panel("Error rate (5xx share of requests)", "timeseries", [
            target(f'sum(rate(llm_requests_total{{status=~"5..", {SEL}}}[{RI}])) / '
                   f"clamp_min(sum(rate(llm_requests_total{{{SEL}}}[{RI}])), 1e-9)", "5xx"),
            target(f'sum(rate(llm_requests_total{{status=~"4..", {SEL}}}[{RI}])) / '
                   f"clamp_min(sum(rate(llm_requests_total{{{SEL}}}[{RI}])), 1e-9)", "4xx", "B"),
        ], 12, 32, unit="percentunit"),
        panel("Provider distribution (dashboard range)", "piechart", [
            # provider="none": refused before routing (401, 404, ...), not a provider's share
            target(f'sum by (provider) (increase(llm_requests_total{{provider!="none", {SEL}}}[$__range]))',
                   "{{provider}}", instant=True),
        ], 0, 40, w=8, options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "pieType": "donut", "displayLabels": ["percent"],
            "legend": {"displayMode": "table", "placement": "right", "showLegend": True, "values": ["value"]},
        }),
        panel("In-flight requests", "timeseries", [target("sum(llm_inflight_requests)", "in flight")], 8, 40, w=8),
        panel("Responses by status", "timeseries", [
            target(f"sum by (status) (rate(llm_requests_total{{{SEL}}}[{RI}]))", "{{status}}"),
        ], 16, 40, w=8, unit="reqps"),
        panel("Config reloads", "timeseries", [
            target(f"sum by (result) (increase(switchyard_config_reloads_total[{RI}]))", "{{result}}"),
        ], 0, 48, w=12, unit="short"),
        panel("Config generation", "stat", [target("max(switchyard_config_generation)", "generation")], 12, 48, w=6),
        panel("Cache results", "timeseries", [
            target(f"sum by (result) (rate(llm_cache_requests_total[{RI}]))", "{{result}}"),
        ], 18, 48, w=6, unit="reqps"),
        panel("Cache invalidations", "timeseries", [
            target(f"sum by (reason) (increase(llm_cache_invalidations_total[{RI}]))", "{{reason}}"),
        ], 0, 56, w=12, unit="short",
            description="Cache entries invalidated (feedback: a mean score below cache.min_feedback). What the "
                        "re-fetches cost is savings_lost_usd in /admin/usage."),
    ]


def variable(name: str, query: str) -> dict:
    return {
        "name": name, "label": name, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": name}, "definition": query,
        "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def dashboard() -> dict:
    return {
        "uid": "switchyard",
        "title": "Switchyard",
        "description": "Traffic, latency, cost, cache and errors of the Switchyard LLM gateway.",
        "tags": ["switchyard", "llm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            variable("team", "label_values(llm_requests_total, team)"),
            variable("provider", "label_values(llm_requests_total, provider)"),
            variable("model", "label_values(llm_requests_total, model)"),
        ]},
        "panels": [{**p, "id": i + 1} for i, p in enumerate(panels())],
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")
