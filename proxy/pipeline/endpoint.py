"""The one request pipeline, as a plain ASGI app per API surface.

Every proxied call, whichever surface it came in on (Chat Completions, Responses,
Messages, legacy Completions, Embeddings), goes the same way, one named step each:

    authenticate → read (body, checked by the surface's dialect) → route → admit
    (rate limits, budget) → look up (cache) → attempt (translation to the provider's
    wire, retries, fallbacks, circuits) → relay (JSON, or the stream as it arrives)
    → account (ledger row, spend, metrics, span, access log: when the last byte is out)

What differs between surfaces lives in their `Dialect` (proxy/dialects/) and in the
`Translator` chosen per provider (proxy/translate/). Written against ASGI rather than a
framework's Request so the hot path parses only what it needs and streams stay untouched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from proxy.accounting.pricing import warn_unpriced
from proxy.auth import authenticate
from proxy.cache.service import BYPASS, CachePolicy, Entry, Tombstone, entry_ref, new_entry_id
from proxy.dialects.base import Dialect, Inbound
from proxy.errors import ClientDisconnected, InvalidRequest, ProxyError, shown
from proxy.forwarding import forwarded
from proxy.pipeline.active import Active
from proxy.pipeline.body import read_body, request_headers, request_id
from proxy.pipeline.record import RequestRecord, tries
from proxy.prompts import PromptUse, PromptVersion, read_reference, render, split_reference
from proxy.providers.base import Adapter, UpstreamRequest, UpstreamResponse
from proxy.relay import (
    BytesResponse,
    DisconnectWatch,
    Headers,
    Receive,
    Scope,
    Send,
    StreamRelay,
    header_list,
    header_value,
    iterate,
    upstream_failure,
    upstream_headers,
)
from proxy.resilience import Attempt, Health, attempt_upstream, within
from proxy.responses_store import conversation, with_history
from proxy.routing import Decision, RouteRequest, Target, classify_level, decide, remembered
from proxy.snapshot import Snapshot, Team
from proxy.tasks import spawn
from proxy.telemetry import TRACE_HEADERS, Telemetry
from proxy.translate import Translator, dropped_fields, translator_for
from proxy.validation import check_name, parse_json_object

log = logging.getLogger("switchyard.proxy")

Response = BytesResponse | StreamRelay
NOTHING_READ: Final = Inbound(None, False, None)  # a call's body until it is read
_RNG = random.Random()


class Call:
    """One request's working state as it goes down the pipeline (the record is what it
    did, for accounting and telemetry; this is how it is doing it)."""

    __slots__ = ("active", "snapshot", "scope", "headers", "record", "out", "watch", "team", "raw", "body",
                 "inbound", "decision", "policy", "key", "translator", "strip", "previous", "prompt", "own")

    def __init__(self, active: Active, scope: Scope, headers: dict[str, str], record: RequestRecord,
                 out: Headers, watch: DisconnectWatch) -> None:
        self.active = active
        self.snapshot: Snapshot = active.snapshot
        self.scope = scope
        self.headers = headers
        self.record = record
        self.out = out  # response headers so far
        self.watch = watch
        self.team: Team | None = None
        self.raw = b""
        self.body: dict[str, Any] = {}
        self.inbound = NOTHING_READ
        self.decision: Decision | None = None
        self.policy: CachePolicy = BYPASS
        self.key = ""
        self.translator: Translator | None = None  # of the attempt that answered
        self.strip = False  # the stream's usage was asked for on the client's behalf: take it out again
        self.previous: str | None = None  # a stored response this one continues (its conversation is in the body)
        self.prompt: PromptUse | None = None  # the registered prompt it names
        self.own: Any = None  # with a prompt: the request's own messages, before the prompt's went ahead


class ProxyEndpoint:
    def __init__(self, active: Callable[[], Active], dialect: Dialect, telemetry: Telemetry, health: Health) -> None:
        self._active = active
        self.dialect = dialect
        self._telemetry = telemetry
        self._health = health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = request_headers(scope)
        record = self._telemetry.begin(request_id(headers), self.dialect.operation, headers)
        record.endpoint = self.dialect.endpoint
        out: Headers = [(b"x-request-id", record.request_id.encode())]
        call = Call(self._active(), scope, headers, record, out, DisconnectWatch())
        try:
            try:
                response = await self._handle(call, receive)
            except ProxyError as exc:
                _failed(record, exc)
                response = self._error(exc, out)
            except asyncio.CancelledError:
                if not call.watch.absorb():
                    raise
                _failed(record, ClientDisconnected("the client closed the connection before its answer"))
                record.outcome = "client_disconnected"
                return  # nobody to answer
            finally:
                call.watch.stop()
            await response(scope, receive, send)
            if isinstance(response, StreamRelay):
                _stream_ended(record, response)
        except BaseException:
            if record.status < 500:
                record.status = 500
            raise
        finally:
            self._account(call)

    async def _handle(self, call: Call, receive: Receive) -> Response:
        await self._read(call, receive)
        self._route(call)
        await self._admit(call)
        hit = await self._look_up(call)
        if hit is not None:
            return hit
        target, upstream = await self._attempt(call)
        return await self._relay(call, target, upstream)

    # --- authenticate and read

    async def _read(self, call: Call, receive: Receive) -> None:
        snapshot, record = call.snapshot, call.record
        record.known_targets = snapshot.known_targets
        call.team = authenticate(snapshot, call.headers)
        record.team = call.team.name
        call.raw = await read_body(call.headers, receive, snapshot.max_body_bytes)
        call.body = parse_json_object(call.raw)
        call.watch.start(receive, call.scope)  # from here on, a client that leaves cancels the work
        if self.dialect.takes_prompt and "prompt" in call.body:
            self._use_prompt(call)
        call.inbound = self.dialect.parse(call.body)
        if self.dialect.stateful:
            await self._recall(call)
        named = call.headers.get("x-switchyard-user")
        check_name(named, "x-switchyard-user")
        record.stream = call.inbound.stream
        record.user = named or call.inbound.user
        record.requested_model = call.inbound.model

    def _use_prompt(self, call: Call) -> None:
        """Render the registered prompt the request names ahead of its own messages; the
        version's model, when it has one, is the model asked for."""
        use = read_reference(call.snapshot.prompts, call.body["prompt"], foreign_ok=self.dialect.stateful)
        if use is None:
            return  # an OpenAI stored prompt, for a provider serving Responses itself
        del call.body["prompt"]
        call.prompt = use
        call.own = self.dialect.own_messages(call.body)
        self._render(call, use.version)
        if use.version.model is not None:
            call.body["model"] = use.version.model

    def _render(self, call: Call, version: PromptVersion) -> None:
        assert call.prompt is not None
        self.dialect.with_prompt(call.body, render(call.prompt, version), call.own)
        call.record.prompt_id, call.record.prompt_version = version.prompt, version.version

    async def _recall(self, call: Call) -> None:
        """A request continuing a response the gateway made itself gets that conversation
        put before its own input (proxy/responses_store.py)."""
        previous, store, team = call.body.get("previous_response_id"), call.active.responses, call.team
        if isinstance(previous, str) and store is not None and team is not None:
            stored = await store.load(team.name, previous)
            if stored is not None:
                with_history(call.body, stored)
                call.previous = previous

    # --- route

    def _route(self, call: Call) -> None:
        snapshot, record, team = call.snapshot, call.record, call.team
        assert team is not None
        use = call.prompt
        prompt = None if use is None else use.prompt.id
        pinned = None if use is None or not use.pinned else use.version.ref
        decision = remembered(snapshot, call.inbound.model, team, call.inbound.stream, prompt, pinned)
        if decision is None:
            decision = decide(snapshot, self._route_request(call, call.inbound.model, prompt, pinned))
        call.decision = decision
        if use is not None:
            decision = call.decision = self._prompt_variant(call, use, decision)
        target = decision.target
        record.route = decision.route
        if decision.experiment is not None:
            record.experiment, record.variant = decision.experiment, decision.variant
            call.out.append((b"x-switchyard-experiment", f"{decision.experiment}:{decision.variant}".encode()))
        record.provider, record.model = target.provider, target.model
        record.known_model = target.name in snapshot.known_targets
        call.out += [
            (b"x-switchyard-route", decision.route.encode()),
            (b"x-switchyard-provider", target.provider.encode()),
            (b"x-switchyard-model", header_value(target.model)),
        ]

    def _route_request(self, call: Call, model: str | None, prompt: str | None, pinned: str | None) -> RouteRequest:
        """What routing needs to know of this request, asking for `model`."""
        snapshot, team = call.snapshot, call.team
        assert team is not None
        complexity = None
        if snapshot.uses_complexity:
            complexity = classify_level(snapshot, self.dialect.classifier_view(call.body))
        return RouteRequest(model=model, team=team, user=call.record.user or None, stream=call.inbound.stream,
                            now=datetime.now(UTC), rand=random.random(), complexity=complexity,
                            promoted=call.active.promoted, prompt=prompt, prompt_pinned=pinned)

    def _prompt_variant(self, call: Call, use: PromptUse, decision: Decision) -> Decision:
        """An experiment's variant may render another version of the request's prompt. A
        variant naming only a version asks for that version's model, when it has one."""
        version = use.version
        pid, name = split_reference(decision.prompt) if decision.prompt is not None else ("", "")
        if name and pid in ("", use.prompt.id) and name in use.prompt.versions:
            version = use.prompt.versions[name]
            if version is not use.version:
                self._render(call, version)
            if decision.prompt_only and version.model is not None and version.model != decision.requested:
                # pinned: the experiment is not asked again
                rerouted = decide(call.snapshot, self._route_request(call, version.model, use.prompt.id, version.ref))
                decision = dataclasses.replace(rerouted, experiment=decision.experiment, variant=decision.variant,
                                               prompt=decision.prompt)
        call.out.append((b"x-switchyard-prompt", header_value(version.ref)))
        return decision

    # --- admit: rate limits and budget, knowing what the call may cost

    async def _admit(self, call: Call) -> None:
        accounting, team, decision = call.active.accounting, call.team, call.decision
        if accounting is None or team is None or decision is None:
            return
        estimate = 0.0
        if team.budget is not None:
            estimate = call.snapshot.prices.estimate(decision.target.name, len(call.raw), call.inbound.output_cap)
        call.out += await accounting.admit(call.record, call.snapshot, estimate)

    # --- look up: the cache

    async def _look_up(self, call: Call) -> Response | None:
        cache, decision, team = call.active.cache, call.decision, call.team
        assert decision is not None and team is not None
        if cache is not None:
            route = call.snapshot.routes[decision.route_index]
            call.policy = cache.policy(route.cache_ttl_s, route.cache_enabled, call.headers.get("cache-control"))
        if cache is not None and call.policy.used:
            call.key = cache.key(team=team.name, target=decision.target.name, endpoint=self.dialect.endpoint,
                                 body=call.body)
            if call.policy.lookup:
                found = await cache.lookup(call.key, call.policy.max_age)
                if isinstance(found, Entry):
                    call.record.cache = "hit"
                    return self._cache_hit(call, found)
                if isinstance(found, Tombstone):  # a miss to the client; the ledger prices the re-fetch as lost savings
                    call.out.append((b"x-switchyard-cache", b"miss"))
                    call.record.cache = "invalidated"
                    return None
        call.record.cache = "miss" if call.policy.used else "bypass"
        call.out.append((b"x-switchyard-cache", call.record.cache.encode()))
        return None

    def _cache_hit(self, call: Call, entry: Entry) -> Response:
        """Answer from a stored entry: the body as stored, or replayed as a stream."""
        out, record = call.out, call.record
        out += [(b"x-switchyard-cache", b"hit"), (b"x-switchyard-cache-age", str(int(entry.age())).encode())]
        assert call.decision is not None
        apis = call.active.adapters[call.decision.target.provider].spec.apis  # the entry's target's provider
        if self.dialect.endpoint not in apis:  # its answer came through a translation
            _name_dropped(out, dropped_fields(self.dialect.endpoint, apis, call.body))
        saved = call.snapshot.prices.cost(entry.target, entry.usage)
        record.saved_usd = saved
        record.cost_usd = 0.0
        record.cache_entry = entry_ref(call.key, entry)
        if record.cache_entry is not None and call.active.cache is not None:
            call.active.cache.count_hit(call.key, entry, saved)  # batched: counted off the request path
        if saved is not None:
            out.append((b"x-switchyard-saved-usd", _usd(saved)))
        if not call.inbound.stream:
            out.append((b"x-switchyard-cost-usd", b"0"))
            return BytesResponse(200, entry.body, out)
        events = self.dialect.replay(orjson.loads(entry.body), call.body)
        return StreamRelay(UpstreamResponse(200, [], chunks=iterate(events)), out, _ignore,
                           stream_error=self.dialect.stream_error)

    # --- attempt: translation, retries, fallbacks, circuits

    async def _attempt(self, call: Call) -> tuple[Target, UpstreamResponse]:
        decision, record, snapshot = call.decision, call.record, call.snapshot
        assert decision is not None
        call.strip = call.inbound.stream and self.dialect.request_usage(call.body)
        if self._telemetry.capture_content:
            record.prompt = call.body.get("messages", call.body.get("input"))
        settings = snapshot.resilience
        attempts: list[Attempt] = []
        record.attempts = attempts  # filled as the tries happen (spans read the last one)

        async def send(candidate: Target, deadline: float) -> UpstreamResponse:
            return await self._send(call, candidate, deadline)

        record.upstream_started = time.perf_counter()
        try:
            return await attempt_upstream(
                self._health.order(decision, random.random()), send, settings=settings, health=self._health,
                attempts=attempts, deadline=time.monotonic() + settings.timeout_s, rng=_RNG,
            )
        finally:
            record.upstream_answered = time.perf_counter()
            call.out.append((b"x-switchyard-attempts",
                             str(tries(attempts)).encode()))

    async def _send(self, call: Call, candidate: Target, deadline: float) -> UpstreamResponse:
        """One attempt at one target, in its wire format, ending by `deadline` (time.monotonic());
        its adapter is held until the response is closed."""
        record = call.record
        _name_target(call.out, record, candidate, call.snapshot)
        adapter = call.active.adapters[candidate.provider]
        translator = translator_for(self.dialect.endpoint, candidate.provider, adapter.spec.apis)
        call.body["model"] = candidate.model
        payload = translator.request(call.body)
        if self.dialect.stateful and call.body.get("previous_response_id") is not None:
            payload = _continued(call, translator, payload)
        trace_headers = self._telemetry.upstream_trace_headers(record)
        sent_headers = forwarded(call.headers, adapter.spec.forwarded)
        if trace_headers:  # this attempt's span becomes the upstream's parent
            sent_headers = [h for h in sent_headers if h[0] not in TRACE_HEADERS] + trace_headers
        adapter.acquire()
        try:
            request = UpstreamRequest(translator.upstream_endpoint, payload, call.inbound.stream, record.request_id,
                                      sent_headers, deadline)
            sending = adapter.send(request)
            response = await (sending if adapter.keeps_deadline else within(deadline, sending))
        except BaseException as exc:
            adapter.release()
            kind = exc.kind if isinstance(exc, ProxyError) else "cancelled"
            self._telemetry.attempt_failed(record, kind or "failed", getattr(exc, "message", None))
            raise
        if response.status >= 500 or response.status == 429:  # the loop may retry: this attempt is over
            self._telemetry.attempt_failed(record, "status_429" if response.status == 429 else "status_5xx")
        call.translator = translator
        if not translator.passthrough:
            _translate(response, translator, call.body, candidate.provider)
        return _releasing(response, adapter)

    # --- relay

    async def _relay(self, call: Call, target: Target, upstream: UpstreamResponse) -> Response:
        record, snapshot, decision = call.record, call.snapshot, call.decision
        assert decision is not None
        target_name = target.name
        if call.translator is not None and not call.translator.passthrough:
            _name_dropped(call.out, call.translator.dropped(call.body))
        # an answer from a fallback is not what the primary would have said: store only the primary's
        storable = call.policy.store and call.active.cache is not None and target == decision.target
        latency = record.attempts[-1].duration_s if record.attempts else 0.0
        if upstream.chunks is not None:
            return self._relay_stream(call, target_name, upstream, storable, latency)
        await upstream.close()
        settings = snapshot.resilience
        if upstream.status < 500:
            self._health.succeeded(target_name, latency, settings.circuit)
        failure = upstream_failure(target.provider, upstream)
        if failure is not None:
            raise failure
        if upstream.status == 429:
            record.error_kind = "status_429"
        if upstream.ok:
            self._priced(call, target_name, upstream, storable)
        record.status = upstream.status
        return BytesResponse(upstream.status, upstream.body, call.out + upstream_headers(upstream),
                             _content_type(upstream.headers))

    def _priced(self, call: Call, target_name: str, upstream: UpstreamResponse, storable: bool) -> None:
        """Usage and cost of a JSON answer (and its header); stored when it may be."""
        record, snapshot = call.record, call.snapshot
        answer = upstream.answer if upstream.answer is not None else _parse_answer(upstream.body)
        usage = self.dialect.usage(answer) if answer is not None else None
        record.usage = usage
        cost = snapshot.prices.cost(target_name, usage)
        record.cost_usd = cost
        if cost is not None:
            call.out.append((b"x-switchyard-cost-usd", _usd(cost)))
        elif usage:
            warn_unpriced(target_name, record.known_model)
        if record.prompt is not None and answer is not None:
            record.completion = answer.get("choices", answer.get("output", answer.get("content")))
        cache = call.active.cache
        if storable and cache is not None and answer is not None and self.dialect.cacheable(answer):
            entry = Entry(target_name, time.time(), usage, upstream.body, new_entry_id(record.request_id))
            spawn(cache.store(call.key, entry, call.policy.ttl_s))
            record.cache_entry = entry_ref(call.key, entry)  # only an answer stored: a fallback's never is
        if answer is not None and self._remembers(call):
            self._remember(call, answer)

    def _relay_stream(self, call: Call, target_name: str, upstream: UpstreamResponse, storable: bool,
                      latency: float) -> StreamRelay:
        record, snapshot, cache = call.record, call.snapshot, call.active.cache
        settings = snapshot.resilience
        # the chat assembler does not rebuild logprobs: such an answer would be stored incomplete
        storable = storable and not call.body.get("logprobs")
        remembers = self._remembers(call)
        observer = self.dialect.stream_observer(capture=storable or remembers)

        def finished(outcome: str) -> None:
            _judge_stream(self._health, target_name, outcome, latency, settings)
            record.usage = observer.usage
            if observer.usage is not None:
                record.cost_usd = snapshot.prices.cost(target_name, observer.usage)
                if record.cost_usd is None:
                    warn_unpriced(target_name, record.known_model)
            answer = observer.answer() if outcome == "complete" else None
            if answer is None:
                return
            if storable and cache is not None and self.dialect.cacheable(answer):
                entry = Entry(target_name, time.time(), observer.usage, orjson.dumps(answer),
                              new_entry_id(record.request_id))
                spawn(cache.store(call.key, entry, call.policy.ttl_s))
                record.cache_entry = entry_ref(call.key, entry)
            if remembers:
                self._remember(call, answer)

        rewrite = self.dialect.strip_usage(observer) if call.strip else None
        return StreamRelay(upstream, call.out + upstream_headers(upstream), finished, observer.feed, rewrite,
                           call.watch.hand_over(), stream_error=self.dialect.stream_error)

    def _remembers(self, call: Call) -> bool:
        """Whether this answer is one the gateway made (translated) and must keep for a later
        previous_response_id; a provider serving the surface natively keeps its own."""
        translator = call.translator
        return (self.dialect.stateful and call.active.responses is not None and translator is not None
                and not translator.passthrough and call.body.get("store") is not False)

    def _remember(self, call: Call, answer: dict[str, Any]) -> None:
        store, team = call.active.responses, call.team
        if store is not None and team is not None:
            spawn(store.save(team.name, answer, conversation(call.body, answer)))

    # --- errors and accounting

    def _error(self, exc: ProxyError, out: Headers) -> BytesResponse:
        body = self.dialect.error_body(exc)
        return BytesResponse(exc.status, body, out + exc.headers if exc.headers else out)

    def _account(self, call: Call) -> None:
        record, active = call.record, call.active
        record.finished = time.perf_counter()
        if active.accounting is not None:
            active.accounting.finish(record, active.snapshot)
        self._telemetry.end(record)


def _translate(response: UpstreamResponse, translator: Translator, body: dict[str, Any], provider: str) -> None:
    """The provider's answer in the client's shapes: the stream, the JSON answer or the error."""
    if response.chunks is not None:
        response.chunks = translator.stream(response.chunks, body, provider)
    elif response.ok and response.answer is not None:
        response.answer = translator.answer(response.answer, body)
        response.body = orjson.dumps(response.answer)
        response.headers = _json_headers(response.headers)
    elif 400 <= response.status < 500:
        response.status, response.body = translator.error(response.status, response.body)
        response.headers = _json_headers(response.headers)


def _continued(call: Call, translator: Translator, payload: dict[str, Any]) -> dict[str, Any]:
    """The request naming a previous response, as this target can take it."""
    previous = call.body["previous_response_id"]
    if call.previous is None:  # not one the gateway made: only a provider serving Responses knows it
        if translator.passthrough:
            return payload
        raise InvalidRequest(f"Previous response with id {shown(str(previous))} not found.",
                             param="previous_response_id")
    if translator.passthrough:  # the conversation is in the input already; the provider never saw the id
        return {k: v for k, v in payload.items() if k != "previous_response_id"}
    return payload


def _json_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-length")] + [
        ("content-type", "application/json")]


def _name_target(out: Headers, record: RequestRecord, target: Target, snapshot: Snapshot) -> None:
    """Point the record and the x-switchyard-provider/-model headers at this target."""
    if record.provider == target.provider and record.model == target.model:
        return  # already: the first attempt goes where routing pointed
    record.provider = target.provider
    record.model = target.model
    record.known_model = target.name in snapshot.known_targets
    for i, (name, _) in enumerate(out):
        if name == b"x-switchyard-provider":
            out[i] = (name, target.provider.encode())
        elif name == b"x-switchyard-model":
            out[i] = (name, header_value(target.model))


def _name_dropped(out: Headers, dropped: list[str]) -> None:
    """`x-switchyard-dropped-fields`: the request fields the provider's format had no place for."""
    if dropped:
        out.append((b"x-switchyard-dropped-fields", header_list(dropped)))


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


def _ignore(outcome: str) -> None:
    return None


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


_USD_TEXT: Final[dict[float, bytes]] = {}  # amounts repeat (the same tokens, the same cached entry)
MAX_USD_TEXTS: Final = 4096


def _usd(amount: float) -> bytes:
    """A cost header's value: at most ten decimals, no trailing zeros. Remembered per amount:
    a float's exact decimal rendering costs more than the rest of a cache hit's headers."""
    text = _USD_TEXT.get(amount)
    if text is None:
        if amount == 0:
            return b"0"  # (and -0.0, which shares 0.0's key)
        text = (format(amount, ".10f").rstrip("0").rstrip(".") or "0").encode()
        if len(_USD_TEXT) >= MAX_USD_TEXTS:
            _USD_TEXT.clear()
        _USD_TEXT[amount] = text
    return text


def _content_type(headers: list[tuple[str, str]]) -> bytes:
    for name, value in headers:
        if name.lower() == "content-type":
            return value.encode("latin-1", "replace")
    return b"application/json"
