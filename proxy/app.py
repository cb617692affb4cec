"""The ASGI application: paths wired to handlers, and the lifespan that owns watchers and clients.

POSTs to the proxied APIs go straight to their endpoint (plain ASGI, proxy/pipeline/);
everything else goes through Starlette's routing to the handlers in proxy/admin.py. Every
error a client can see is a `ProxyError` rendered by proxy/errors.py, whichever path it took.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from proxy import admin
from proxy.dialects.base import Dialect
from proxy.dialects.chat import CHAT, COMPLETIONS, EMBEDDINGS
from proxy.dialects.messages import MessagesDialect, error_payload
from proxy.dialects.responses import ResponsesDialect
from proxy.errors import InternalError, MethodNotAllowed, NotFound, ProxyError, shown
from proxy.live import LiveEndpoint
from proxy.pipeline.endpoint import ProxyEndpoint
from proxy.pipeline.fast_path import FastPath
from proxy.providers import AdapterFactory, ProviderPool, build_adapter
from proxy.reload import ConfigWatcher, install_sighup, reload_now
from proxy.runtime import Runtime, timed
from proxy.server import LIMITS_KEY
from proxy.snapshot import SnapshotHolder

log = logging.getLogger("switchyard")

DEFAULT_CONFIG = "proxy.yaml"
# the collector's first generation runs every 20,000 new container objects, not 700: a request
# makes several hundred, nearly all freed by reference counting, and at 700 a collection ran
# every request or two to look at the ones still in flight (5% of a served request's CPU)
GC_THRESHOLDS = (20_000, 50, 50)
# /v1/<endpoint>: the calls relayed to providers, each in its surface's dialect
DIALECTS: tuple[Dialect, ...] = (CHAT, EMBEDDINGS, COMPLETIONS, ResponsesDialect(), MessagesDialect())


def create_app(
    config_path: str | None = None,
    *,
    adapter_factory: AdapterFactory = build_adapter,
    watch: bool | None = None,
) -> FastPath:
    path = config_path or os.environ.get("SWITCHYARD_CONFIG") or DEFAULT_CONFIG
    holder = SnapshotHolder(path)
    runtime = Runtime(holder, ProviderPool(adapter_factory))
    if reload_now(holder, "startup") != "ok":
        failure = holder.last_failure
        problems = "; ".join(f"{p or '<file>'}: {r}" for p, r in failure.problems) if failure else "unknown"
        raise SystemExit(f"switchyard: cannot start, {path} is invalid: {problems}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        watching = runtime.active().snapshot.config.server.watch if watch is None else watch
        watcher = ConfigWatcher(holder)
        if watching:
            watcher.start()
        install_sighup(holder)
        await runtime.redis.probe_all()  # /readyz tells what was seen, from the start
        if runtime.accounting is not None:
            runtime.accounting.start_soon()  # today's spend is read back while the first requests come in
        # everything built so far (modules, config, clients) lives as long as the process:
        # keep it out of the collector's full passes, which otherwise stall requests
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            # the HTTP protocol (proxy/server.py) reads the serving config's head limits here
            yield {LIMITS_KEY: runtime.head_limits}
        finally:
            async with timed("stopping the config watcher"):
                await watcher.stop()
            await runtime.aclose()

    routes: list[BaseRoute] = [Route(path, _bound(handler, runtime), methods=[method])
                               for path, method, handler in admin.ROUTES]
    routes.append(WebSocketRoute("/admin/live", LiveEndpoint(runtime)))  # proxy/live.py
    endpoints = {f"/v1/{d.endpoint}": ProxyEndpoint(runtime.active, d, runtime.telemetry, runtime.health)
                 for d in DIALECTS}
    routes += [Route(path, endpoint, methods=["POST"]) for path, endpoint in endpoints.items()]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ProxyError: _on_proxy_error, HTTPException: _on_http_error, Exception: _on_unexpected},
    )
    app.state.runtime = runtime
    return FastPath(app, endpoints)


def _bound(handler: admin.Handler, runtime: Runtime) -> Any:
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        return await handler(runtime, request)

    return endpoint


def _response(request: Request, exc: ProxyError) -> Response:
    """The error in the shape of the client's API: Anthropic's for its SDK and paths."""
    headers = {k.decode(): v.decode() for k, v in exc.headers}
    body = error_payload(exc.status, exc.message) if admin.anthropic_client(request) else exc.body()
    return Response(body, exc.status, media_type="application/json", headers=headers)


async def _on_proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return _response(request, exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method) as the gateway's errors."""
    assert isinstance(exc, HTTPException)
    path = shown(request.url.path)
    if exc.status_code == 405:
        return _response(request, MethodNotAllowed(f"method {request.method} is not allowed on {path}"))
    if exc.status_code == 404:
        return _response(request, NotFound(f"unknown path {path}"))
    error = ProxyError(str(exc.detail))
    error.status, error.type, error.code = exc.status_code, "invalid_request_error", None
    return _response(request, error)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _response(request, InternalError())
