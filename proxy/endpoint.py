"""The proxied OpenAI calls (`/v1/chat/completions`, `/v1/embeddings`) as one plain ASGI app.

One request flows one way: read the active snapshot once → key to team → body →
policy decision → provider adapter → relay. Written against ASGI directly rather than
a framework's Request so the hot path parses only the headers it needs and streams
stay untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

from proxy.accounting.pricing import warn_unpriced
from proxy.accounting.service import Accounting
from proxy.auth import authenticate
from proxy.cache import BYPASS, Entry, ResponseCache, request_policy
from proxy.cache.streams import StreamCapture, choices_identical, replay_events
from proxy.errors import ClientDisconnected, InvalidRequest, PayloadTooLarge, ProxyError, UnsupportedMediaType, shown
from proxy.forwarding import forwarded
from proxy.pipeline.record import RequestRecord
from proxy.providers.base import Adapter, UpstreamRequest, UpstreamResponse
from proxy.relay import (
    BytesResponse,
    DisconnectWatch,
    Headers,
    Receive,
    Scope,
    Send,
    StreamRelay,
    error_response,
    header_value,
    iterate,
    upstream_failure,
    upstream_headers,
)
from proxy.resilience import Attempt, Health, attempt_upstream
from proxy.routing import RouteRequest, Target, classify_level, decide
from proxy.snapshot import Snapshot
from proxy.tasks import spawn
from proxy.telemetry import TRACE_HEADERS, Telemetry
from proxy.usage import UsageStripper, UsageTap
from proxy.validation import check_chat, check_embeddings, check_name, parse_json_object

log = logging.getLogger("switchyard.proxy")


@dataclass(frozen=True, slots=True)
class Active:
    """A snapshot and the adapters built for it: what one request uses from start to end."""

    snapshot: Snapshot
    adapters: Mapping[str, Adapter]
    cache: ResponseCache | None = None
    accounting: Accounting | None = None
    promoted: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # experiment -> variant


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_CHECKS = {"chat/completions": check_chat, "embeddings": check_embeddings}
_OPERATIONS = {"chat/completions": "chat", "embeddings": "embeddings"}


class ProxyEndpoint:
    def __init__(self, active: Callable[[], Active], endpoint: str, telemetry: Telemetry, health: Health) -> None:
        self._active = active
        self._health = health
        self.endpoint = endpoint
        self._check = _CHECKS[endpoint]
        self._operation = _OPERATIONS[endpoint]
        self._telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        request_id = _request_id(headers)
        record = self._telemetry.begin(request_id, self._operation, headers)
        out: Headers = [(b"x-request-id", request_id.encode())]
        active = self._active()
        watch = DisconnectWatch()
        try:
            try:
                response = await self._handle(active, scope, headers, receive, record, out, watch)
            except ProxyError as exc:
                _failed(record, exc)
                response = error_response(exc, out)
            except asyncio.CancelledError:
                if not watch.absorb():
                    raise
                _failed(record, ClientDisconnected("the client closed the connection before its answer"))
                record.outcome = "client_disconnected"
                return  # nobody to answer
            finally:
                watch.stop()
            await response(scope, receive, send)
            if isinstance(response, StreamRelay):
                _stream_ended(record, response)
        except BaseException:
            if record.status < 500:
                record.status = 500
            raise
        finally:
            record.finished = time.perf_counter()
            if active.accounting is not None:
                active.accounting.finish(record, active.snapshot)
            self._telemetry.end(record)

    async def _handle(
        self, active: Active, scope: Scope, headers: dict[str, str], receive: Receive, record: RequestRecord,
        out: Headers, watch: DisconnectWatch,
    ) -> Any:
        snapshot = active.snapshot
        record.known_targets = snapshot.known_targets
        team = authenticate(snapshot, headers)
        record.team = team.name
        raw = await read_body(headers, receive, snapshot.max_body_bytes)
        body = parse_json_object(raw)
        watch.start(receive, scope)  # from here on, a client that leaves cancels the work
        self._check(body)
        stream = body.get("stream") is True
        named = headers.get("x-switchyard-user")
        check_name(named, "x-switchyard-user")
        user = named or body.get("user")
        record.stream = stream
        record.user = user if isinstance(user, str) else None
        model = body.get("model")
        record.requested_model = model if isinstance(model, str) else None
        decision = decide(
            snapshot,
            RouteRequest(
                model=body.get("model"),
                team=team,
                user=user if isinstance(user, str) and user else None,
                stream=stream,
                now=datetime.now(UTC),
                rand=random.random(),
                complexity=classify_level(snapshot, body) if snapshot.uses_complexity else None,
                promoted=active.promoted,
            ),
        )
        target = decision.target
        target_name = str(target)
        record.route = decision.route
        if decision.experiment is not None:
            record.experiment, record.variant = decision.experiment, decision.variant
            out.append((b"x-switchyard-experiment", f"{decision.experiment}:{decision.variant}".encode()))
        record.provider = target.provider
        record.model = target.model
        record.known_model = target_name in snapshot.known_targets
        out += [
            (b"x-switchyard-route", decision.route.encode()),
            (b"x-switchyard-provider", target.provider.encode()),
            (b"x-switchyard-model", _latin1(target.model)),
        ]
        if active.accounting is not None:  # limits and budget, knowing what the call may cost
            budgeted = snapshot.config.teams[team.name].budget is not None
            estimate = snapshot.prices.estimate(target_name, len(raw), _output_cap(body)) if budgeted else 0.0
            out += await active.accounting.admit(record, snapshot, estimate)
        policy = BYPASS
        cache = active.cache
        if cache is not None:
            route = snapshot.routes[decision.route_index]
            policy = request_policy(cache.settings, route.cache_ttl_s, route.cache_enabled,
                                    headers.get("cache-control"))
        key = ""
        if cache is not None and policy.used:
            key = cache.key(team=team.name, target=target_name, endpoint=self.endpoint, body=body)
            if policy.lookup:
                entry = await cache.lookup(key, policy.max_age)
                if entry is not None:
                    record.cache = "hit"
                    return _cache_hit(entry, snapshot, body, stream, out, record)
        record.cache = "miss" if policy.used else "bypass"
        out.append((b"x-switchyard-cache", record.cache.encode()))

        strip_usage = stream and _ask_for_usage(body)
        if self._telemetry.settings.capture_content:
            record.prompt = body.get("messages", body.get("input"))
        settings = snapshot.config.resilience
        attempts: list[Attempt] = []
        record.attempts = attempts  # filled as the tries happen (spans read the last one)

        async def send(candidate: Target) -> UpstreamResponse:
            """One attempt at one target; its adapter is held until the response is closed."""
            _name_target(out, record, candidate, snapshot)
            body["model"] = candidate.model
            trace_headers = self._telemetry.upstream_trace_headers(record)
            adapter = active.adapters[candidate.provider]
            sent_headers = forwarded(headers, adapter.spec.forwarded)
            if trace_headers:  # this attempt's span becomes the upstream's parent
                sent_headers = [h for h in sent_headers if h[0] not in TRACE_HEADERS] + trace_headers
            adapter.acquire()
            try:
                response = await adapter.send(
                    UpstreamRequest(self.endpoint, body, stream, record.request_id, sent_headers)
                )
            except BaseException as exc:
                adapter.release()
                kind = exc.kind if isinstance(exc, ProxyError) else "cancelled"
                self._telemetry.attempt_failed(record, kind or "failed", getattr(exc, "message", None))
                raise
            if response.status >= 500 or response.status == 429:  # the loop may retry: this attempt is over
                self._telemetry.attempt_failed(record, "status_429" if response.status == 429 else "status_5xx")
            return _releasing(response, adapter)

        record.upstream_started = time.perf_counter()
        try:
            target, upstream = await attempt_upstream(
                self._health.order(decision, random.random()),
                send,
                settings=settings,
                health=self._health,
                attempts=attempts,
                deadline=time.monotonic() + settings.timeout_s,
                rng=_RNG,
            )
        finally:
            record.upstream_answered = time.perf_counter()
            out.append((b"x-switchyard-attempts", str(sum(a.outcome != "circuit_open" for a in attempts)).encode()))
        target_name = str(target)
        # an answer from a fallback is not what the primary would have said: store only the primary's
        storable = policy.store and cache is not None and target == decision.target
        latency = attempts[-1].duration_s if attempts else 0.0
        if upstream.chunks is not None:
            # the assembler does not rebuild logprobs: such an answer would be stored incomplete
            capture = StreamCapture() if storable and not body.get("logprobs") else None
            tap = UsageTap()

            def finished(outcome: str) -> None:
                _judge_stream(self._health, target_name, outcome, latency, settings)
                record.usage = tap.usage
                if tap.usage is not None:
                    record.cost_usd = snapshot.prices.cost(target_name, tap.usage)
                    if record.cost_usd is None:
                        warn_unpriced(target_name, record.known_model)
                if capture is not None and outcome == "complete" and cache is not None:
                    answer = capture.assembler.completion()
                    if answer is not None and choices_identical(answer):
                        entry = Entry(target_name, time.time(), answer.get("usage"), orjson.dumps(answer))
                        spawn(cache.store(key, entry, policy.ttl_s))

            observe = tap.feed if capture is None else _both(tap.feed, capture.feed)
            rewrite = UsageStripper() if strip_usage else None
            return StreamRelay(upstream, out + upstream_headers(upstream), finished, observe, rewrite,
                               watch.hand_over())
        await upstream.close()
        if upstream.status < 500:
            self._health.succeeded(target_name, latency, settings.circuit)
        failure = upstream_failure(target.provider, upstream)
        if failure is not None:
            raise failure
        if upstream.status == 429:
            record.error_kind = "status_429"
        if upstream.ok:
            answer = upstream.answer if upstream.answer is not None else _parse_answer(upstream.body)
            usage = answer.get("usage") if answer is not None else None
            record.usage = usage if isinstance(usage, dict) else None
            cost = snapshot.prices.cost(target_name, usage)
            record.cost_usd = cost
            if cost is not None:
                out.append((b"x-switchyard-cost-usd", _usd(cost)))
            elif usage:
                warn_unpriced(target_name, record.known_model)
            if record.prompt is not None and answer is not None:
                record.completion = answer.get("choices")
            if storable and cache is not None and answer is not None and choices_identical(answer):
                spawn(cache.store(key, Entry(target_name, time.time(), usage, upstream.body), policy.ttl_s))
        record.status = upstream.status
        return BytesResponse(
            upstream.status, upstream.body, out + upstream_headers(upstream), _content_type(upstream.headers)
        )


_RNG = random.Random()


def _name_target(out: Headers, record: RequestRecord, target: Target, snapshot: Snapshot) -> None:
    """Point the record and the x-switchyard-provider/-model headers at this target."""
    record.provider = target.provider
    record.model = target.model
    record.known_model = str(target) in snapshot.known_targets
    for i, (name, _) in enumerate(out):
        if name == b"x-switchyard-provider":
            out[i] = (name, target.provider.encode())
        elif name == b"x-switchyard-model":
            out[i] = (name, _latin1(target.model))


def _releasing(response: UpstreamResponse, adapter: Adapter) -> UpstreamResponse:
    """Make closing the response (once, whoever does it) release the adapter."""
    close = response.close
    released = False

    async def close_and_release() -> None:
        nonlocal released
        if released:
            return
        released = True
        try:
            await close()
        finally:
            adapter.release()

    response.close = close_and_release
    return response


def _judge_stream(health: Health, target: str, outcome: str, latency: float, settings: Any) -> None:
    if outcome == "complete":
        health.succeeded(target, latency, settings.circuit)
    elif outcome == "upstream_failed":
        health.failed(target, settings.circuit)
    else:
        health.finished_unjudged(target)


def _cache_hit(
    entry: Entry, snapshot: Snapshot, body: dict[str, Any], stream: bool, out: Headers, record: RequestRecord
) -> Any:
    """Answer from a stored entry: the body as stored, or replayed as a stream."""
    out += [(b"x-switchyard-cache", b"hit"), (b"x-switchyard-cache-age", str(int(entry.age())).encode())]
    saved = snapshot.prices.cost(entry.target, entry.usage)
    record.saved_usd = saved
    record.cost_usd = 0.0
    if saved is not None:
        out.append((b"x-switchyard-saved-usd", _usd(saved)))
    if not stream:
        out.append((b"x-switchyard-cost-usd", b"0"))
        return BytesResponse(200, entry.body, out)
    options = body.get("stream_options") or {}
    events = replay_events(orjson.loads(entry.body), include_usage=bool(options.get("include_usage")))
    replay = UpstreamResponse(200, [], chunks=iterate(events))
    return StreamRelay(replay, out, _ignore)


def _output_cap(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _ignore(outcome: str) -> None:
    return None


def _ask_for_usage(body: dict[str, Any]) -> bool:
    """Make the upstream report a stream's usage (to price it); True when the client did
    not ask for it, so the usage chunk must be taken out again."""
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return True


def _both(first: Callable[[bytes], None], second: Callable[[bytes], None]) -> Callable[[bytes], None]:
    def observe(chunk: bytes) -> None:
        first(chunk)
        second(chunk)

    return observe


def _failed(record: RequestRecord, exc: ProxyError) -> None:
    record.status = exc.status
    record.error_message = exc.message
    if exc.kind is not None:
        record.error_kind = exc.kind


def _stream_ended(record: RequestRecord, relay: StreamRelay) -> None:
    record.outcome = relay.outcome
    record.response_started = relay.started_at
    record.first_token_at = relay.first_chunk_at
    if relay.outcome == "client_disconnected":
        record.error_kind = "client_disconnected"  # the status sent stays in the row: it was sent
    if relay.error is not None:
        record.error_kind = relay.error.kind
        record.error_message = relay.error.message


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
    # a random per-process prefix and a counter: unique, and no urandom call per request
    return f"req_{_ID_PREFIX}{next(_ID_COUNTER):012x}"


_ID_PREFIX = os.urandom(10).hex()
_ID_COUNTER = itertools.count(1)


def _content_type(headers: list[tuple[str, str]]) -> bytes:
    for name, value in headers:
        if name.lower() == "content-type":
            return value.encode("latin-1", "replace")
    return b"application/json"


def _latin1(text: str) -> bytes:
    return header_value(text)


async def read_body(headers: Mapping[str, str], receive: Receive, limit: int,
                    setting: str | None = "server.max_body_mb") -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed `limit` bytes
    (`setting` names what sets the limit, for the message)."""
    content_type = headers.get("content-type")
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaType(
                f"Content-Type must be application/json, not {shown(media) if media else 'empty'}."
            )
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(_too_large(limit, setting))
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client closed the connection before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(_too_large(limit, setting))
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(limit: int, setting: str | None) -> str:
    size = f"{limit / 1048576:g} MiB" if limit >= 1048576 else f"{limit / 1024:g} KiB"
    return f"the request body is larger than the {size} " + (
        f"this server accepts ({setting})" if setting else "this endpoint accepts")
