"""The app uvicorn serves: POSTs to the proxied endpoints go straight to their pipeline;
everything else (and any other method on those paths) goes through Starlette's routing
and middleware, which would add several µs to a request costing the proxy under 100.

Compiled (`make native`): this coroutine's frame is under every step of every request's
task, and an interpreted frame there is entered again at each of them.
"""

from __future__ import annotations

import logging
from typing import Any

from proxy.errors import InternalError
from proxy.pipeline.endpoint import ProxyEndpoint
from proxy.relay import Receive, Scope, Send, error_response

log = logging.getLogger("switchyard")


class FastPath:
    def __init__(self, app: Any, endpoints: dict[str, ProxyEndpoint]) -> None:
        self.app = app  # Starlette
        self.state = app.state
        self.routes = app.routes
        self._endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._endpoints.get(scope["path"])
            if endpoint is not None:
                failed = False
                try:
                    await endpoint(scope, receive, send)
                except Exception:  # the endpoint answers its own errors; this is a bug
                    log.exception("unexpected error on POST %s", scope["path"])
                    failed = True
                if failed:  # answered after the except block: compiled, an await in it can re-raise
                    await _internal_error(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _internal_error(scope: Scope, receive: Receive, send: Send) -> None:
    try:
        await error_response(InternalError(), [])(scope, receive, send)
    except Exception:  # noqa: BLE001 - the response had already started: nothing more to say
        pass
