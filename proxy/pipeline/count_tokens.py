"""`POST /v1/messages/count_tokens`: how many input tokens a Messages request would read.

Routed as the request itself would be. When the target is an Anthropic provider, the
provider counts: the request passes through with the model rewritten, and its answer
(or error) comes back as it is. Any other target has no counting endpoint for this
shape, so the gateway estimates (about four characters a token over the request as
chat, tool definitions included) and says so in `x-switchyard-token-count: estimated`.
Free, as Anthropic's is: not priced, not held to budgets, no ledger row.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.auth import authenticate
from proxy.dialects.messages import MessagesDialect
from proxy.forwarding import forwarded
from proxy.pipeline.body import read_body, request_headers, request_id
from proxy.providers.base import UpstreamRequest
from proxy.providers.mock import request_prompt_tokens
from proxy.relay import header_value, upstream_failure, upstream_headers
from proxy.routing import RouteRequest, classify_level, decide
from proxy.runtime import Runtime
from proxy.translate.messages_chat import to_chat
from proxy.validation import parse_json_object

ENDPOINT = "messages/count_tokens"
_MESSAGES = MessagesDialect()


async def count_tokens(runtime: Runtime, request: Request) -> Response:
    active = runtime.active()
    snapshot = active.snapshot
    headers = request_headers(request.scope)
    team = authenticate(snapshot, headers)
    body = parse_json_object(await read_body(headers, request.receive, snapshot.max_body_bytes))
    # the same checks as a Messages request, which (unlike this one) must say max_tokens
    inbound = _MESSAGES.parse(body if "max_tokens" in body else {**body, "max_tokens": 1})
    complexity = classify_level(snapshot, _MESSAGES.classifier_view(body)) if snapshot.uses_complexity else None
    decision = decide(snapshot, RouteRequest(
        model=inbound.model, team=team, user=None, stream=False, now=datetime.now(UTC), rand=random.random(),
        complexity=complexity, promoted=active.promoted,
    ))
    target = decision.target
    out = [("x-request-id", request_id(headers)), ("x-switchyard-route", decision.route),
           ("x-switchyard-provider", target.provider), ("x-switchyard-model", header_value(target.model).decode())]
    adapter = active.adapters[target.provider]
    if ENDPOINT not in adapter.spec.apis:
        return _json({"input_tokens": estimate(body)}, 200, [*out, ("x-switchyard-token-count", "estimated")])
    sent = {**body, "model": target.model}
    adapter.acquire()
    try:
        upstream = await adapter.send(UpstreamRequest(ENDPOINT, sent, False, out[0][1],
                                                      forwarded(headers, adapter.spec.forwarded)))
        await upstream.close()
    finally:
        adapter.release()
    failure = upstream_failure(target.provider, upstream)
    if failure is not None:
        raise failure
    relayed = [(k.decode(), v.decode("latin-1")) for k, v in upstream_headers(upstream)]
    return Response(upstream.body, upstream.status, media_type="application/json",
                    headers=dict([*out, *relayed, ("x-switchyard-token-count", "provider")]))


def estimate(body: dict[str, Any]) -> int:
    """The input tokens of a Messages request, estimated as the mock provider counts."""
    return request_prompt_tokens(to_chat(body))


def _json(data: Any, status: int, headers: list[tuple[str, str]]) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json", headers=dict(headers))
