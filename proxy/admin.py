"""The gateway's own endpoints besides the proxied calls: health, metrics, the team's own
views (models, usage, feedback) and the admin API. Each handler is a plain function of
the process's `Runtime` and the request, so it can be read, imported and tested alone;
`app.py` only wires them to paths.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy import __version__
from proxy.accounting.reports import GROUPS, parse_time
from proxy.auth import authenticate, authenticate_admin
from proxy.config import ConfigError
from proxy.errors import InvalidRequest, NoHealthyUpstream, NotFound, shown
from proxy.experiments import experiments_of
from proxy.experiments import prompt_report as prompt_stats
from proxy.experiments import report as experiment_stats
from proxy.live import DASHBOARD_HEADERS, dashboard_html
from proxy.pipeline.body import read_body
from proxy.pipeline.count_tokens import count_tokens
from proxy.prompts import describe_prompt
from proxy.redis_guard import DOWN, UP, redacted_url
from proxy.reload import reload_now
from proxy.replay import replay_ledger
from proxy.responses_store import Stored
from proxy.routing import check_model
from proxy.runtime import Runtime
from proxy.snapshot import Snapshot, SnapshotHolder, snapshot_from_text
from proxy.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.validation import check_feedback, parse_json_object

log = logging.getLogger("switchyard")

FEEDBACK_MAX_BYTES = 64 * 1024  # a score and a comment of at most 4,000 characters fit many times over
REPLAY_MAX_BYTES = 1024 * 1024  # a candidate policy file; the largest real ones are a few dozen KiB

Handler = Callable[[Runtime, Request], Awaitable[Response]]


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


# ---------------------------------------------------------------- health and metrics


async def healthz(runtime: Runtime, request: Request) -> Response:
    return json_response({"status": "ok", "version": __version__})


async def readyz(runtime: Runtime, request: Request) -> Response:
    """Ready while this process can serve. A shared dependency that is down (Redis, the
    ledger's database) makes it `degraded` but still 200: the gateway keeps serving
    without it, and failing readiness would take every replica out of the Service at
    once. `?strict=true` answers 503 when degraded, for checks that want to know."""
    active = runtime.active()
    snapshot = active.snapshot
    redis = runtime.redis.report()
    ledger = _ledger_state(runtime)
    degraded = any(r["state"] == DOWN for r in redis.values()) or ledger.get("state") == DOWN
    strict = request.query_params.get("strict", "").lower() in ("1", "true", "yes")
    return json_response({
        "status": "degraded" if degraded else "ready",
        "version": __version__,
        "generation": snapshot.generation,
        "providers": sorted(snapshot.providers),
        "disabled_providers": dict(snapshot.disabled_providers),
        "cache": active.cache.state() if active.cache is not None else {"backend": "off"},
        "redis": redis,
        "ledger": ledger,
    }, 503 if degraded and strict else 200)


def _ledger_state(runtime: Runtime) -> dict[str, Any]:
    """Whether the ledger's rows are being written, and how many wait."""
    accounting = runtime.active().accounting
    writer = accounting.writer if accounting is not None else None
    if writer is None:
        return {"backend": "off"}
    stats = writer.stats()
    return {"backend": writer.backend, "state": DOWN if writer.failing else UP, "pending": stats.pending,
            "written": stats.written, "write_errors": stats.write_errors, "dropped": stats.dropped}


async def metrics(runtime: Runtime, request: Request) -> Response:
    return Response(runtime.telemetry.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


async def dashboard(runtime: Runtime, request: Request) -> Response:
    """The live page (proxy/data/dashboard.html). It holds no data, so it needs no key; its
    numbers come over the /admin/live WebSocket, which does."""
    return Response(dashboard_html(), media_type="text/html; charset=utf-8", headers=DASHBOARD_HEADERS)


# ---------------------------------------------------------------- a team's own views


async def models(runtime: Runtime, request: Request) -> Response:
    """The names this team may request, in OpenAI's list shape, or in Anthropic's when the
    client is Anthropic's SDK (it always sends `anthropic-version`)."""
    snapshot = runtime.active().snapshot
    team = authenticate(snapshot, request.headers)
    names = snapshot.model_names(team)
    if not anthropic_client(request):
        return json_response({"object": "list", "data": [_model(n) for n in names]})
    return json_response({"data": [_anthropic_model(n) for n in names], "has_more": False,
                          "first_id": names[0] if names else None, "last_id": names[-1] if names else None})


async def model(runtime: Runtime, request: Request) -> Response:
    snapshot = runtime.active().snapshot
    team = authenticate(snapshot, request.headers)
    name = request.path_params["name"]
    check_model(snapshot, team, name)  # the 403/404 a chat request for it would get
    return json_response(_anthropic_model(name) if anthropic_client(request) else _model(name))


def anthropic_client(request: Request) -> bool:
    return "anthropic-version" in request.headers or request.url.path.startswith("/v1/messages")


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "switchyard"}


def _anthropic_model(name: str) -> dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z"}


# ---------------------------------------------------------------- stored responses


async def stored_response(runtime: Runtime, request: Request) -> Response:
    stored, _ = await _stored(runtime, request)
    return json_response(stored.response)


async def stored_response_input(runtime: Runtime, request: Request) -> Response:
    """The input items of a stored response (earlier turns included), as OpenAI lists them:
    newest first unless `order=asc`, at most `limit` (default 20, up to 100) after `after`."""
    stored, response_id = await _stored(runtime, request)
    items = [dict(item, id=item.get("id") or f"item_{response_id}_{i}") if isinstance(item, dict) else item
             for i, item in enumerate(stored.input_items)]
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc", param="order")
    if order == "desc":
        items.reverse()
    after = request.query_params.get("after")
    if after:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    limit = _limit(request.query_params.get("limit"))
    page = items[:limit]
    return json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                          "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


async def delete_stored_response(runtime: Runtime, request: Request) -> Response:
    snapshot = runtime.active().snapshot
    team = authenticate(snapshot, request.headers)
    response_id = request.path_params["response_id"]
    store = runtime.responses
    if store is None or not await store.delete(team.name, response_id):
        raise _no_stored_response(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def _stored(runtime: Runtime, request: Request) -> tuple[Stored, str]:
    team = authenticate(runtime.active().snapshot, request.headers)
    response_id = request.path_params["response_id"]
    store = runtime.responses
    stored = await store.load(team.name, response_id) if store is not None else None
    if stored is None:
        raise _no_stored_response(response_id)
    return stored, response_id


def _no_stored_response(response_id: str) -> NotFound:
    return NotFound(f"No response with id {shown(response_id)} is stored here for your team. The gateway keeps the "
                    "responses it translated for providers without the Responses API; a provider serving it "
                    "natively keeps its own.", param="response_id")


def _limit(value: str | None) -> int:
    if value is None:
        return 20
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise InvalidRequest("limit must be an integer from 1 to 100", param="limit")
    return int(value)


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
    rated = await ledger.find(request_id, team.name)
    if rated is None:
        raise NotFound(f"no request {shown(request_id)} of team {team.name!r} (feedback is for your own requests)")
    ledger.record(request_id, team.name, score, comment)
    answer: dict[str, Any] = {"object": "feedback", "request_id": request_id, "score": score}
    judged = await ledger.tally(runtime.active().cache, rated, score)
    if judged is not None:  # the cached answer it rated: its tally, and whether this vote invalidated it
        answer["cache"] = judged.report()
        if judged.invalidated:
            runtime.telemetry.metrics.cache_invalidated("feedback")
    return json_response(answer, 201)


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
    runtime.telemetry.metrics.cache_invalidated("purge", deleted)
    return json_response({"deleted": deleted, "team": team, "model": model})


async def admin_cache_entries(runtime: Runtime, request: Request) -> Response:
    """The most hit cache entries (savings, feedback) and the latest invalidations and why;
    `?limit=` (default 20, at most 100) bounds each list."""
    active = runtime.active()
    authenticate_admin(active.snapshot, request.headers)
    limit = _limit(request.query_params.get("limit"))
    if active.cache is None:
        return json_response({"object": "cache_entries", "backend": "off", "top": [], "invalidated": []})
    return json_response(await active.cache.entries(limit))


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
    report = await experiment_stats(await runtime.reports.ledger(), experiment)
    report["ledger"] = freshness = runtime.reports.freshness()
    if not freshness["stale"]:  # a verdict on a ledger missing this replica's rows promotes nothing
        runtime.experiments.consider(experiment, report)
    report["promoted"] = runtime.experiments.promoted.get(name)
    report["events"] = [e for e in runtime.experiments.events if e["experiment"] == name]
    return report


async def admin_prompts(runtime: Runtime, request: Request) -> Response:
    """The registered prompts: versions, their status and model, the variables they take."""
    snapshot = runtime.active().snapshot
    authenticate_admin(snapshot, request.headers)
    return json_response({"object": "list", "data": [describe_prompt(p) for p in snapshot.prompts.values()]})


async def admin_prompt(runtime: Runtime, request: Request) -> Response:
    """A prompt's per-version report: requests, latency, cost, errors, feedback and a verdict."""
    active = runtime.active()
    authenticate_admin(active.snapshot, request.headers)
    pid = request.path_params["prompt_id"]
    prompt = active.snapshot.prompts.get(pid)
    if prompt is None:
        raise NotFound(f"no prompt {shown(pid)} in the config")
    report = await prompt_stats(await runtime.reports.ledger(), prompt)
    report["ledger"] = runtime.reports.freshness()
    return json_response(report)


async def admin_replay(runtime: Runtime, request: Request) -> Response:
    """The ledger's window replayed through the candidate policy in the body (YAML); 422 with
    the candidate's problems when it is invalid."""
    active = runtime.active()
    snapshot = active.snapshot
    authenticate_admin(snapshot, request.headers)
    q = request.query_params
    zone = ZoneInfo(snapshot.config.accounting.timezone)
    now = time.time()
    try:
        since = parse_time(q.get("since"), now - 7 * 86400, zone)
        until = parse_time(q.get("until"), now + 1, zone)
    except ValueError as exc:
        raise InvalidRequest(f"since/until: {exc}", param="since") from None
    # the body is YAML: the size bound applies, the JSON content-type check does not
    body = await read_body(request.headers, request.receive, REPLAY_MAX_BYTES, setting=None, json_only=False)
    try:
        candidate = snapshot_from_text(body.decode("utf-8"), source="<replay candidate>")
    except UnicodeDecodeError:
        return _invalid_candidate([{"path": "", "reason": "config is not UTF-8 text"}])
    except ConfigError as exc:
        return _invalid_candidate(exc.as_dicts())
    reader = await runtime.reports.ledger()
    if reader is None:
        raise NotFound("the ledger is off (ledger.path: off): there is no recorded traffic to replay")
    team = q.get("team") or None
    return json_response(await replay_ledger(reader, snapshot, candidate, since=since, until=until, team=team))


def _invalid_candidate(problems: list[dict[str, str]]) -> Response:
    return json_response({"error": {"message": "the candidate policy is invalid", "type": "invalid_request_error",
                                    "param": None, "code": "invalid_config"}, "problems": problems}, 422)


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
    if data["ledger"].get("url"):
        data["ledger"]["url"] = redacted_url(data["ledger"]["url"])
    return data


# the paths and their handlers, for app.py to wire: (path, method, handler)
ROUTES: list[tuple[str, str, Handler]] = [
    ("/v1/models", "GET", models),
    ("/v1/models/{name:path}", "GET", model),
    ("/v1/usage", "GET", usage),
    ("/v1/feedback", "POST", feedback),
    ("/v1/messages/count_tokens", "POST", count_tokens),
    ("/v1/responses/{response_id}", "GET", stored_response),
    ("/v1/responses/{response_id}", "DELETE", delete_stored_response),
    ("/v1/responses/{response_id}/input_items", "GET", stored_response_input),
    ("/metrics", "GET", metrics),
    ("/healthz", "GET", healthz),
    ("/readyz", "GET", readyz),
    ("/dashboard", "GET", dashboard),
    ("/admin/config", "GET", admin_config),
    ("/admin/reload", "POST", admin_reload),
    ("/admin/cache", "DELETE", admin_cache_purge),
    ("/admin/cache/entries", "GET", admin_cache_entries),
    ("/admin/usage", "GET", admin_usage),
    ("/admin/costs", "GET", admin_costs),
    ("/admin/providers", "GET", admin_providers),
    ("/admin/experiments", "GET", admin_experiments),
    ("/admin/experiments/{name:path}", "GET", admin_experiment),
    ("/admin/replay", "POST", admin_replay),
    ("/admin/prompts", "GET", admin_prompts),
    ("/admin/prompts/{prompt_id:path}", "GET", admin_prompt),
]
