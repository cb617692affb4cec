"""The proxied OpenAI calls (`/v1/chat/completions`, `/v1/embeddings`) as one plain ASGI app.

One request flows one way: read the active snapshot once → key to team → body →
policy decision → provider adapter → relay. Written against ASGI directly rather than
a framework's Request so the hot path parses only the headers it needs and streams
stay untouched.
"""

from __future__ import annotations

import logging
import random
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import orjson

from proxy.accounting.pricing import warn_unpriced
from proxy.auth import authenticate
from proxy.cache import BYPASS, Entry, ResponseCache, request_policy
from proxy.cache.streams import StreamCapture, choices_identical, replay_events
from proxy.errors import InvalidRequest, PayloadTooLarge, ProxyError, UnsupportedMediaType
from proxy.providers.base import Adapter, UpstreamRequest, UpstreamResponse, spawn
from proxy.relay import (
    BytesResponse,
    Headers,
    Receive,
    Scope,
    Send,
    StreamRelay,
    error_response,
    iterate,
    upstream_failure,
    upstream_headers,
)
from proxy.routing import RouteRequest, decide
from proxy.snapshot import Snapshot
from proxy.validation import check_chat, check_embeddings, parse_json_object

log = logging.getLogger("switchyard.proxy")


@dataclass(frozen=True, slots=True)
class Active:
    """A snapshot and the adapters built for it: what one request uses from start to end."""

    snapshot: Snapshot
    adapters: Mapping[str, Adapter]
    cache: ResponseCache | None = None


# request headers never forwarded upstream: the client's credentials, hop-by-hop
# headers, framing the adapter sets itself, and our own controls
_NOT_FORWARDED = frozenset(
    {
        "host",
        "authorization",
        "api-key",
        "cookie",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-type",
        "accept-encoding",
        "openai-organization",
        "openai-project",
        "x-request-id",
    }
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_CHECKS = {"chat/completions": check_chat, "embeddings": check_embeddings}


class ProxyEndpoint:
    def __init__(self, active: Callable[[], Active], endpoint: str) -> None:
        self._active = active
        self.endpoint = endpoint
        self._check = _CHECKS[endpoint]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        request_id = _request_id(headers)
        out: Headers = [(b"x-request-id", request_id.encode())]
        try:
            response = await self._handle(headers, receive, request_id, out)
        except ProxyError as exc:
            response = error_response(exc, out)
        await response(scope, receive, send)

    async def _handle(self, headers: dict[str, str], receive: Receive, request_id: str, out: Headers) -> Any:
        active = self._active()
        snapshot = active.snapshot
        team = authenticate(snapshot, headers)
        body = parse_json_object(await read_body(headers, receive, snapshot.max_body_bytes))
        self._check(body)
        stream = body.get("stream") is True
        user = headers.get("x-switchyard-user") or body.get("user")
        decision = decide(
            snapshot,
            RouteRequest(
                model=body.get("model"),
                team=team,
                user=user if isinstance(user, str) and user else None,
                stream=stream,
                now=datetime.now(timezone.utc),
                rand=random.random(),
            ),
        )
        target = decision.target
        target_name = str(target)
        out += [
            (b"x-switchyard-route", decision.route.encode()),
            (b"x-switchyard-provider", target.provider.encode()),
            (b"x-switchyard-model", _latin1(target.model)),
        ]
        policy = BYPASS
        cache = active.cache
        if cache is not None:
            route = snapshot.routes[decision.route_index]
            policy = request_policy(cache.settings, route.cache_ttl_s, route.cache_enabled, headers.get("cache-control"))
        key = ""
        if cache is not None and policy.used:
            key = cache.key(team=team.name, target=target_name, endpoint=self.endpoint, body=body)
            if policy.lookup:
                entry = await cache.lookup(key, policy.max_age)
                if entry is not None:
                    return _cache_hit(entry, snapshot, body, stream, out)
        out.append((b"x-switchyard-cache", b"miss" if policy.used else b"bypass"))

        body["model"] = target.model
        adapter = active.adapters[target.provider]
        request = UpstreamRequest(self.endpoint, body, stream, request_id, _forwarded(headers))
        adapter.acquire()
        try:
            upstream = await adapter.send(request)
        except BaseException:
            adapter.release()
            raise
        if upstream.chunks is not None:
            capture = StreamCapture() if policy.store else None

            def finished(outcome: str) -> None:
                adapter.release()
                if capture is not None and outcome == "complete" and cache is not None:
                    answer = capture.assembler.completion()
                    if answer is not None and choices_identical(answer):
                        entry = Entry(target_name, time.time(), answer.get("usage"), orjson.dumps(answer))
                        spawn(cache.store(key, entry, policy.ttl_s))

            observe = capture.feed if capture is not None else None
            return StreamRelay(upstream, out + upstream_headers(upstream), finished, observe)
        adapter.release()
        failure = upstream_failure(target.provider, upstream)
        if failure is not None:
            raise failure
        if upstream.ok:
            answer = _parse_answer(upstream.body)
            usage = answer.get("usage") if answer is not None else None
            cost = snapshot.prices.cost(target_name, usage)
            if cost is not None:
                out.append((b"x-switchyard-cost-usd", _usd(cost)))
            elif usage:
                warn_unpriced(target_name)
            if cache is not None and policy.store and answer is not None and choices_identical(answer):
                spawn(cache.store(key, Entry(target_name, time.time(), usage, upstream.body), policy.ttl_s))
        return BytesResponse(
            upstream.status, upstream.body, out + upstream_headers(upstream), _content_type(upstream.headers)
        )


def _cache_hit(entry: Entry, snapshot: Snapshot, body: dict[str, Any], stream: bool, out: Headers) -> Any:
    """Answer from a stored entry: the body as stored, or replayed as a stream."""
    out += [(b"x-switchyard-cache", b"hit"), (b"x-switchyard-cache-age", str(int(entry.age())).encode())]
    saved = snapshot.prices.cost(entry.target, entry.usage)
    if saved is not None:
        out.append((b"x-switchyard-saved-usd", _usd(saved)))
    if not stream:
        out.append((b"x-switchyard-cost-usd", b"0"))
        return BytesResponse(200, entry.body, out)
    options = body.get("stream_options") or {}
    events = replay_events(orjson.loads(entry.body), include_usage=bool(options.get("include_usage")))
    replay = UpstreamResponse(200, [], chunks=iterate(events))
    return StreamRelay(replay, out, _ignore)


def _ignore(outcome: str) -> None:
    return None


def _parse_answer(raw: bytes) -> dict[str, Any] | None:
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def _usd(amount: float) -> bytes:
    return (f"{amount:.10f}".rstrip("0").rstrip(".") or "0").encode()


def _headers(scope: Scope) -> dict[str, str]:
    # ASGI servers give lower-cased names; later duplicates win, which is fine for these
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def _request_id(headers: Mapping[str, str]) -> str:
    given = headers.get("x-request-id")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return "req_" + uuid.uuid4().hex


def _forwarded(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k not in _NOT_FORWARDED and not k.startswith("x-switchyard-")]


def _content_type(headers: list[tuple[str, str]]) -> bytes:
    for name, value in headers:
        if name.lower() == "content-type":
            return value.encode("latin-1", "replace")
    return b"application/json"


def _latin1(text: str) -> bytes:
    return text.encode("latin-1", "replace")


async def read_body(headers: Mapping[str, str], receive: Receive, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed `limit` bytes."""
    content_type = headers.get("content-type")
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaType(
                f"Content-Type must be application/json, not {media or 'empty'!r}."
            )
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(_too_large(limit))
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client closed the connection before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(_too_large(limit))
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(limit: int) -> str:
    return f"the request body is larger than the {limit / 1048576:g} MiB this server accepts (server.max_body_mb)"
