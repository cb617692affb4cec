"""The gateway's own endpoints besides the proxied calls: health, metrics, the team's own
views (models, usage, feedback) and the admin API. Each handler is a plain function of
the process's `Runtime` and the request, so it can be read, imported and tested alone;
`app.py` only wires them to paths.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy import __version__
from proxy.accounting.reports import GROUPS
from proxy.auth import authenticate, authenticate_admin
from proxy.endpoint import read_body
from proxy.errors import InvalidRequest, NoHealthyUpstream, NotFound, shown
from proxy.experiments import experiments_of
from proxy.experiments import report as experiment_stats
from proxy.reload import reload_now
from proxy.routing import check_model
from proxy.runtime import Runtime
from proxy.snapshot import Snapshot, SnapshotHolder
from proxy.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.validation import check_feedback, parse_json_object

log = logging.getLogger("switchyard")

FEEDBACK_MAX_BYTES = 64 * 1024  # a score and a comment of at most 4,000 characters fit many times over

Handler = Callable[[Runtime, Request], Awaitable[Response]]


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


# ---------------------------------------------------------------- health and metrics


async def healthz(runtime: Runtime, request: Request) -> Response:
    return json_response({"status": "ok", "version": __version__})


async def readyz(runtime: Runtime, request: Request) -> Response:
    active = runtime.active()
    snapshot = active.snapshot
    return json_response({
        "status": "ready",
        "version": __version__,
        "generation": snapshot.generation,
        "providers": sorted(snapshot.providers),
        "disabled_providers": dict(snapshot.disabled_providers),
        "cache": active.cache.state() if active.cache is not None else {"backend": "off"},
        "redis": runtime.redis.report(),
    })


async def metrics(runtime: Runtime, request: Request) -> Response:
    return Response(runtime.telemetry.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


# ---------------------------------------------------------------- a team's own views


async def models(runtime: Runtime, request: Request) -> Response:
    snapshot = runtime.active().snapshot
    team = authenticate(snapshot, request.headers)
    return json_response({"object": "list", "data": [_model(n) for n in snapshot.model_names(team)]})


async def model(runtime: Runtime, request: Request) -> Response:
    snapshot = runtime.active().snapshot
    team = authenticate(snapshot, request.headers)
    name = request.path_params["name"]
    check_model(snapshot, team, name)  # the 403/404 a chat request for it would get
    return json_response(_model(name))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "switchyard"}


async def usage(runtime: Runtime, request: Request) -> Response:
    team = authenticate(runtime.active().snapshot, request.headers)
    return json_response(await runtime.reports.team_usage(team.name))


async def feedback(runtime: Runtime, request: Request) -> Response:
    snapshot = runtime.active().snapshot
    team = authenticate(snapshot, request.headers)
    limit = min(FEEDBACK_MAX_BYTES, snapshot.max_body_bytes)  # read no further than that
    body = parse_json_object(await read_body(request.headers, request.receive, limit, setting=None))
    request_id, score, comment = check_feedback(body)
    ledger = runtime.feedback
    if not await ledger.request_of_team(request_id, team.name):
        raise NotFound(f"no request {shown(request_id)} of team {team.name!r} (feedback is for your own requests)")
    ledger.record(request_id, team.name, score, comment)
    return json_response({"object": "feedback", "request_id": request_id, "score": score}, 201)


# ---------------------------------------------------------------- the admin API


async def admin_config(runtime: Runtime, request: Request) -> Response:
    snapshot = runtime.active().snapshot
    authenticate_admin(snapshot, request.headers)
    return json_response(config_report(runtime.holder, snapshot))


async def admin_reload(runtime: Runtime, request: Request) -> Response:
    authenticate_admin(runtime.active().snapshot, request.headers)
    # ?force=true also applies a file that drops every route or team (refused otherwise)
    forced = request.query_params.get("force", "").lower() in ("1", "true", "yes")
    result = reload_now(runtime.holder, "admin API" + (" (forced)" if forced else ""), force=True,
                        allow_drop=forced)
    report = config_report(runtime.holder, runtime.active().snapshot)
    return json_response({"result": result, **report}, 200 if result != "error" else 422)


async def admin_usage(runtime: Runtime, request: Request) -> Response:
    snapshot = runtime.active().snapshot
    authenticate_admin(snapshot, request.headers)
    q = request.query_params
    group_by = q.get("group_by") or "team"
    if group_by not in GROUPS:
        raise InvalidRequest(f"group_by must be one of {', '.join(GROUPS)}", param="group_by")
    team = q.get("team") or None
    if team is not None and team not in snapshot.teams:
        raise NotFound(f"no team {shown(team)} in the config")
    try:
        report = await runtime.reports.usage_report(since=q.get("since"), until=q.get("until"), team=team,
                                                    group_by=group_by)
    except ValueError as exc:
        raise InvalidRequest(f"since/until: {exc}", param="since") from None
    return json_response(report)


async def admin_costs(runtime: Runtime, request: Request) -> Response:
    authenticate_admin(runtime.active().snapshot, request.headers)
    return json_response(await runtime.reports.costs())


async def admin_providers(runtime: Runtime, request: Request) -> Response:
    active = runtime.active()
    authenticate_admin(active.snapshot, request.headers)
    circuit = active.snapshot.config.resilience.circuit
    return json_response({
        "providers": {
            name: {"type": spec.type, "inflight": active.adapters[name].inflight}
            for name, spec in active.snapshot.providers.items()
        },
        "disabled_providers": dict(active.snapshot.disabled_providers),
        "targets": runtime.health.report(circuit),
        "resilience": active.snapshot.config.resilience.model_dump(mode="json"),
    })


async def admin_cache_purge(runtime: Runtime, request: Request) -> Response:
    active = runtime.active()
    authenticate_admin(active.snapshot, request.headers)
    team = request.query_params.get("team") or None
    model = request.query_params.get("model") or None
    if active.cache is None:
        return json_response({"deleted": 0, "cache": "off"})
    try:
        deleted = await active.cache.purge(team=team, model=model)
    except Exception as exc:  # noqa: BLE001 - Redis down: say so instead of pretending
        log.warning("cache purge failed: %s", exc)
        raise NoHealthyUpstream("the cache backend did not answer; nothing was purged") from None
    log.info("cache purge team=%s model=%s deleted=%d", team or "*", model or "*", deleted)
    return json_response({"deleted": deleted, "team": team, "model": model})


async def admin_experiments(runtime: Runtime, request: Request) -> Response:
    snapshot = runtime.active().snapshot
    authenticate_admin(snapshot, request.headers)
    reports = [await experiment_report(runtime, name) for name in sorted(experiments_of(snapshot))]
    return json_response({"object": "list", "data": [
        {k: r[k] for k in ("experiment", "objective", "sticky", "control", "verdict", "promoted")}
        | {"requests": {v["variant"]: v["requests"] for v in r["variants"]}}
        for r in reports
    ]})


async def admin_experiment(runtime: Runtime, request: Request) -> Response:
    authenticate_admin(runtime.active().snapshot, request.headers)
    return json_response(await experiment_report(runtime, request.path_params["name"]))


async def experiment_report(runtime: Runtime, name: str) -> dict[str, Any]:
    """An experiment's statistics and verdict; a verdict may promote its winner."""
    active = runtime.active()
    experiment = experiments_of(active.snapshot).get(name)
    if experiment is None:
        raise NotFound(f"no experiment {shown(name)} in the config")
    accounting = active.accounting
    assert accounting is not None
    if accounting.writer is not None:
        await accounting.writer.flush()
    report = await experiment_stats(accounting.reader, experiment)
    runtime.experiments.consider(experiment, report)
    report["promoted"] = runtime.experiments.promoted.get(name)
    report["events"] = [e for e in runtime.experiments.events if e["experiment"] == name]
    return report


def config_report(holder: SnapshotHolder, snapshot: Snapshot) -> dict[str, Any]:
    failure = holder.last_failure
    return {
        "generation": snapshot.generation,
        "source": snapshot.source,
        "digest": snapshot.digest,
        "loaded_at": snapshot.loaded_at,
        "warnings": list(snapshot.warnings),
        "disabled_providers": dict(snapshot.disabled_providers),
        "reloads": dict(holder.reloads),
        "last_error": None
        if failure is None
        else {
            "at": failure.at,
            "digest": failure.digest,
            "problems": [{"path": p, "reason": r} for p, r in failure.problems],
        },
        "config": redacted(snapshot),
    }


def redacted(snapshot: Snapshot) -> dict[str, Any]:
    """The serving config with every secret replaced: provider keys and headers, team and admin keys."""
    data = snapshot.config.model_dump(mode="json")
    for provider in data.get("providers", {}).values():
        if provider.get("api_key"):
            provider["api_key"] = "<redacted>"
        provider["headers"] = {k: "<redacted>" for k in provider.get("headers", {})}
    for team in data.get("teams", {}).values():
        team["keys"] = [f"<key {i + 1}>" for i in range(len(team.get("keys", [])))]
    data["server"]["admin_keys"] = [f"<key {i + 1}>" for i in range(len(data["server"].get("admin_keys", [])))]
    return data


# the paths and their handlers, for app.py to wire: (path, method, handler)
ROUTES: list[tuple[str, str, Handler]] = [
    ("/v1/models", "GET", models),
    ("/v1/models/{name:path}", "GET", model),
    ("/v1/usage", "GET", usage),
    ("/v1/feedback", "POST", feedback),
    ("/metrics", "GET", metrics),
    ("/healthz", "GET", healthz),
    ("/readyz", "GET", readyz),
    ("/admin/config", "GET", admin_config),
    ("/admin/reload", "POST", admin_reload),
    ("/admin/cache", "DELETE", admin_cache_purge),
    ("/admin/usage", "GET", admin_usage),
    ("/admin/costs", "GET", admin_costs),
    ("/admin/providers", "GET", admin_providers),
    ("/admin/experiments", "GET", admin_experiments),
    ("/admin/experiments/{name:path}", "GET", admin_experiment),
]
