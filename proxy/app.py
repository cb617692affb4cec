"""The Starlette application: routes to handlers, and the lifespan that owns clients and watchers."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from types import MappingProxyType
from typing import Any, AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import __version__
from proxy.accounting.service import Accounting
from proxy.auth import authenticate, authenticate_admin
from proxy.endpoint import Active, ProxyEndpoint, read_body
from proxy.accounting.reports import GROUPS
from proxy.errors import InvalidRequest, NoHealthyUpstream, NotFound, ProxyError, error_body, shown
from proxy.cache import ResponseCache, build_cache
from proxy.providers import AdapterFactory, ProviderPool, build_adapter
from proxy.providers.base import spawn
from proxy.reload import ConfigWatcher, install_sighup, reload_now
from proxy.experiments import ExperimentState, experiments_of
from proxy.experiments import report as experiment_stats
from proxy.redis_guard import RedisGuards
from proxy.resilience import Health
from proxy.server import LIMITS_KEY, LimitsRef
from proxy.routing import check_model
from proxy.validation import check_feedback, parse_json_object
from proxy.snapshot import Snapshot, SnapshotHolder
from proxy.telemetry import Telemetry
from proxy.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = logging.getLogger("switchyard")

DEFAULT_CONFIG = "proxy.yaml"
FEEDBACK_MAX_BYTES = 64 * 1024  # a score and a comment of at most 4,000 characters fit many times over


class Runtime:
    """The serving state: the snapshot holder and the adapters built for its snapshot."""

    def __init__(self, holder: SnapshotHolder, pool: ProviderPool) -> None:
        self.holder = holder
        self.pool = pool
        self.started_at = time.time()
        self._active: Active | None = None
        self.cache: ResponseCache | None = None
        self.accounting: Accounting | None = None
        self.telemetry = Telemetry()
        self.health = Health()  # circuit breakers and balancing state: outlive config reloads
        self.health.on_change = self._circuit_changed
        self.experiments = ExperimentState()
        self.redis = RedisGuards()  # one health state per Redis server, for every user of it
        self.head_limits = LimitsRef()  # what the HTTP protocol (proxy/server.py) enforces
        holder.listeners.append(self._install)
        holder.observers.append(self.telemetry.metrics.reload_result)

    def _install(self, snapshot: Snapshot) -> None:
        self.telemetry.configure(snapshot.config.telemetry)
        self.telemetry.metrics.config_loaded(snapshot.generation, snapshot.digest)
        self.telemetry.metrics.team_budgets({
            name: (team.budget.daily_usd, team.budget.monthly_usd)
            for name, team in snapshot.config.teams.items() if team.budget is not None
        })
        settings = snapshot.config.cache
        if self.cache is None or self.cache.settings != settings:
            old, self.cache = self.cache, build_cache(settings, self.redis)
            if old is not None:
                spawn(old.aclose())
        if self.accounting is None:
            self.accounting = Accounting(snapshot, self.telemetry.metrics, self.redis)
        else:
            self.accounting.configure(snapshot)
        self.experiments.forget_missing(snapshot)
        self.health.known = snapshot.known_targets
        self.head_limits.update(snapshot.config.server)
        self._active = Active(snapshot, self.pool.sync(snapshot), self.cache, self.accounting,
                              MappingProxyType(self.experiments.promoted))

    def _circuit_changed(self, target: str, state: str) -> None:
        known = self._active is not None and target in self._active.snapshot.known_targets
        self.telemetry.metrics.circuit_changed(target, state, known)
        log.warning("circuit for %s is now %s", target, state.replace("_", "-"))

    async def aclose(self) -> None:
        async with _timed("closing provider connections"):
            await self.pool.aclose()
        if self.cache is not None:
            async with _timed("closing the cache"):
                await self.cache.aclose()
        if self.accounting is not None:
            async with _timed("closing accounting (writing queued ledger rows)"):
                await self.accounting.aclose()
        async with _timed("closing telemetry"):
            await self.telemetry.aclose()

    def active(self) -> Active:
        assert self._active is not None, "no config loaded"
        return self._active


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _error(exc: ProxyError) -> Response:
    headers = {k.decode(): v.decode() for k, v in exc.headers}
    return Response(exc.body(), exc.status, media_type="application/json", headers=headers)


def create_app(
    config_path: str | None = None,
    *,
    adapter_factory: AdapterFactory = build_adapter,
    watch: bool | None = None,
) -> "FastPath":
    path = config_path or os.environ.get("SWITCHYARD_CONFIG") or DEFAULT_CONFIG
    holder = SnapshotHolder(path)
    runtime = Runtime(holder, ProviderPool(adapter_factory))
    if reload_now(holder, "startup") != "ok":
        failure = holder.last_failure
        problems = "; ".join(f"{p or '<file>'}: {r}" for p, r in failure.problems) if failure else "unknown"
        raise SystemExit(f"switchyard: cannot start, {path} is invalid: {problems}")

    async def models(request: Request) -> Response:
        snapshot = runtime.active().snapshot
        team = authenticate(snapshot, request.headers)
        return json_response({"object": "list", "data": [_model(n) for n in snapshot.model_names(team)]})

    async def model(request: Request) -> Response:
        snapshot = runtime.active().snapshot
        team = authenticate(snapshot, request.headers)
        name = request.path_params["name"]
        check_model(snapshot, team, name)  # the 403/404 a chat request for it would get
        return json_response(_model(name))

    async def usage(request: Request) -> Response:
        active = runtime.active()
        team = authenticate(active.snapshot, request.headers)
        assert active.accounting is not None
        return json_response(await active.accounting.team_usage(team.name))

    async def admin_usage(request: Request) -> Response:
        active = runtime.active()
        authenticate_admin(active.snapshot, request.headers)
        assert active.accounting is not None
        q = request.query_params
        group_by = q.get("group_by") or "team"
        if group_by not in GROUPS:
            raise InvalidRequest(f"group_by must be one of {', '.join(GROUPS)}", param="group_by")
        team = q.get("team") or None
        if team is not None and team not in active.snapshot.teams:
            raise NotFound(f"no team {shown(team)} in the config")
        try:
            report = await active.accounting.usage_report(
                since=q.get("since"), until=q.get("until"), team=team, group_by=group_by
            )
        except ValueError as exc:
            raise InvalidRequest(f"since/until: {exc}", param="since") from None
        return json_response(report)

    async def admin_costs(request: Request) -> Response:
        active = runtime.active()
        authenticate_admin(active.snapshot, request.headers)
        assert active.accounting is not None
        return json_response(await active.accounting.costs())

    async def feedback(request: Request) -> Response:
        active = runtime.active()
        team = authenticate(active.snapshot, request.headers)
        limit = min(FEEDBACK_MAX_BYTES, active.snapshot.max_body_bytes)  # read no further than that
        body = parse_json_object(await read_body(request.headers, request.receive, limit, setting=None))
        request_id, score, comment = check_feedback(body)
        accounting = active.accounting
        assert accounting is not None
        if not await accounting.request_of_team(request_id, team.name):
            raise NotFound(f"no request {shown(request_id)} of team {team.name!r} (feedback is for your own requests)")
        accounting.record_feedback(request_id, team.name, score, comment)
        return json_response({"object": "feedback", "request_id": request_id, "score": score}, 201)

    async def experiment_report(name: str) -> dict[str, Any]:
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

    async def admin_experiments(request: Request) -> Response:
        authenticate_admin(runtime.active().snapshot, request.headers)
        names = sorted(experiments_of(runtime.active().snapshot))
        reports = [await experiment_report(n) for n in names]
        return json_response({"object": "list", "data": [
            {k: r[k] for k in ("experiment", "objective", "sticky", "control", "verdict", "promoted")}
            | {"requests": {v["variant"]: v["requests"] for v in r["variants"]}}
            for r in reports
        ]})

    async def admin_experiment(request: Request) -> Response:
        authenticate_admin(runtime.active().snapshot, request.headers)
        return json_response(await experiment_report(request.path_params["name"]))

    async def admin_providers(request: Request) -> Response:
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

    async def metrics(request: Request) -> Response:
        return Response(runtime.telemetry.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> Response:
        active = runtime.active()
        snapshot = active.snapshot
        return json_response(
            {
                "status": "ready",
                "version": __version__,
                "generation": snapshot.generation,
                "providers": sorted(snapshot.providers),
                "disabled_providers": dict(snapshot.disabled_providers),
                "cache": active.cache.state() if active.cache is not None else {"backend": "off"},
                "redis": runtime.redis.report(),
            }
        )

    async def admin_config(request: Request) -> Response:
        snapshot = runtime.active().snapshot
        authenticate_admin(snapshot, request.headers)
        return json_response(config_report(holder, snapshot))

    async def admin_reload(request: Request) -> Response:
        authenticate_admin(runtime.active().snapshot, request.headers)
        # ?force=true also applies a file that drops every route or team (refused otherwise)
        forced = request.query_params.get("force", "").lower() in ("1", "true", "yes")
        result = reload_now(holder, "admin API" + (" (forced)" if forced else ""), force=True, allow_drop=forced)
        report = config_report(holder, runtime.active().snapshot)
        return json_response({"result": result, **report}, 200 if result != "error" else 422)

    async def admin_cache_purge(request: Request) -> Response:
        active = runtime.active()
        authenticate_admin(active.snapshot, request.headers)
        team = request.query_params.get("team") or None
        model = request.query_params.get("model") or None
        if active.cache is None:
            return json_response({"deleted": 0, "cache": "off"})
        try:
            deleted = await active.cache.purge(team=team, model=model)
        except Exception as exc:  # Redis down: say so instead of pretending
            log.warning("cache purge failed: %s", exc)
            raise NoHealthyUpstream("the cache backend did not answer; nothing was purged") from None
        log.info("cache purge team=%s model=%s deleted=%d", team or "*", model or "*", deleted)
        return json_response({"deleted": deleted, "team": team, "model": model})

    async def on_proxy_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProxyError)
        return _error(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            body = error_body(f"method {request.method} is not allowed on {request.url.path}",
                              "invalid_request_error", "method_not_allowed")
        elif exc.status_code == 404:
            body = error_body(f"unknown path {request.url.path}", "invalid_request_error", "not_found")
        else:
            body = error_body(str(exc.detail), "invalid_request_error", None)
        return Response(body, exc.status_code, media_type="application/json", headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return Response(
            error_body("internal error in the proxy; it has been logged", "api_error", "internal_error"),
            500,
            media_type="application/json",
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        watching = runtime.active().snapshot.config.server.watch if watch is None else watch
        watcher = ConfigWatcher(holder)
        if watching:
            watcher.start()
        install_sighup(holder)
        await runtime.redis.probe_all()  # /readyz tells what was seen, from the start
        # everything built so far (modules, config, clients) lives as long as the process:
        # keep it out of the collector's full passes, which otherwise stall requests
        gc.collect()
        gc.freeze()
        try:
            # the HTTP protocol (proxy/server.py) reads the serving config's head limits here
            yield {LIMITS_KEY: runtime.head_limits}
        finally:
            async with _timed("stopping the config watcher"):
                await watcher.stop()
            await runtime.aclose()

    chat = ProxyEndpoint(runtime.active, "chat/completions", runtime.telemetry, runtime.health)
    embeddings = ProxyEndpoint(runtime.active, "embeddings", runtime.telemetry, runtime.health)
    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/usage", usage, methods=["GET"]),
        Route("/v1/feedback", feedback, methods=["POST"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/admin/config", admin_config, methods=["GET"]),
        Route("/admin/reload", admin_reload, methods=["POST"]),
        Route("/admin/cache", admin_cache_purge, methods=["DELETE"]),
        Route("/admin/usage", admin_usage, methods=["GET"]),
        Route("/admin/providers", admin_providers, methods=["GET"]),
        Route("/admin/experiments", admin_experiments, methods=["GET"]),
        Route("/admin/experiments/{name:path}", admin_experiment, methods=["GET"]),
        Route("/admin/costs", admin_costs, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ProxyError: on_proxy_error, HTTPException: on_http_error, Exception: on_unexpected},
    )
    app.state.runtime = runtime
    return FastPath(app, {"/v1/chat/completions": chat, "/v1/embeddings": embeddings})


class FastPath:
    """POSTs to the proxied endpoints go straight to them; everything else (and any other
    method on those paths) goes through Starlette's routing and middleware. On a request
    that costs the proxy ~100 µs, Starlette's layers would add several more."""

    def __init__(self, app: Starlette, endpoints: dict[str, Any]) -> None:
        self.app = app
        self.state = app.state
        self.routes = app.routes
        self._endpoints = endpoints

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._endpoints.get(scope["path"])
            if endpoint is not None:
                try:
                    await endpoint(scope, receive, send)
                except Exception:  # the endpoint answers its own errors; this is a bug
                    log.exception("unexpected error on POST %s", scope["path"])
                    await _internal_error(send)
                return
        await self.app(scope, receive, send)


async def _internal_error(send: Any) -> None:
    body = error_body("internal error in the proxy; it has been logged", "api_error", "internal_error")
    try:
        await send({"type": "http.response.start", "status": 500,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    except Exception:  # noqa: BLE001 - the response had already started: nothing more to say
        pass


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "switchyard"}


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


@contextlib.asynccontextmanager
async def _timed(step: str, slow_s: float = 2.0) -> AsyncIterator[None]:
    """Say so when a shutdown step is slow: a stuck one otherwise looks like a hung process."""
    started = time.monotonic()
    try:
        yield
    finally:
        took = time.monotonic() - started
        if took > slow_s:
            log.warning("shutdown: %s took %.1f s", step, took)
