"""The response cache end to end: the real server in its own process, the official
`openai` SDK as the client, a real local upstream counting its calls, and the cache in
the real Redis (or in memory). Last, a private redis-server frozen and killed under a
client that keeps sending requests."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis
from aiohttp import web

from support import (
    REDIS_PREFIX,
    REDIS_URL,
    FakeRoute,
    FakeUpstream,
    PrivateRedis,
    ServerProcess,
    chunk_events,
    completion,
    eventually,
    expire_redis_keys,
)

pytestmark = pytest.mark.integration  # the served proxy, the real Redis and a private redis-server

RUN = uuid.uuid4().hex[:10]  # in every team and model name, so this run's keys are its own
TEAM_A, TEAM_B = f"a-{RUN}", f"b-{RUN}"
KEY_A, KEY_B, ADMIN = f"sk-a-{RUN}", f"sk-b-{RUN}", f"admin-{RUN}"
MODEL, OTHER = f"m-{RUN}", f"n-{RUN}"  # the upstream models: up/m-..., up/n-...
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
SAVED = (10 * 1.0 + 5 * 2.0) / 1e6  # USAGE at up/MODEL's price
# Stores run after the answer has gone out, in the served proxy's process: nothing there can
# be drained from here, and nothing (no metric, no endpoint) says a store is done, so a test
# that needs one to have landed gives it this long.
STORE_WAIT = 0.15


def config(upstream: str, cache: str) -> str:
    return f"""
server: {{admin_keys: ["{ADMIN}"]}}
ledger: {{path: off}}
resilience: {{retries: 0, circuit: {{failures: 1000}}}}
cache: {cache}
providers:
  up: {{type: openai, base_url: "{upstream}", api_key: sk-upstream}}
pricing:
  up/{MODEL}: {{input: 1.0, output: 2.0}}
  up/{OTHER}: {{input: 3.0, output: 4.0}}
teams:
  {TEAM_A}: {{keys: ["{KEY_A}"]}}
  {TEAM_B}: {{keys: ["{KEY_B}"]}}
routes:
  - {{name: main, match: {{model: main}}, to: up/{MODEL}}}
  - {{name: alias, match: {{model: alias}}, to: up/{MODEL}}}
  - {{name: other, match: {{model: other}}, to: up/{OTHER}}}
  - {{name: short, match: {{model: short}}, to: up/{OTHER}, cache: {{ttl_s: 1}}}}
  - {{name: long, match: {{model: long}}, to: up/{OTHER}, cache: {{ttl_s: 60}}}}
  - {{name: never, match: {{model: never}}, to: up/{MODEL}, cache: off}}
"""


def require_redis() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:  # a missing Redis fails these tests, it does not skip them
        client.close()
        pytest.fail(f"the cache tests need Redis at {REDIS_URL} (set SWITCHYARD_TEST_REDIS_URL): {exc}")
    return client


def forget_this_run() -> None:
    client = require_redis()
    doomed = list(client.scan_iter(match=f"{REDIS_PREFIX}c:*{RUN}*", count=1000))
    if doomed:
        client.delete(*doomed)
    client.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start_threaded()
    yield up
    up.stop_threaded()


def serve(tmp: Path, upstream: FakeUpstream, cache: str) -> ServerProcess:
    path = tmp / "proxy.yaml"
    path.write_text(config(upstream.base_url, cache))
    return ServerProcess(path).start()


@pytest.fixture(scope="module", params=["redis", "memory"])
def proxy(request, tmp_path_factory, upstream) -> Iterator[ServerProcess]:
    """Team scope, ttl_s 60 (route `short`: 1 s, route `never`: off)."""
    if request.param == "redis":
        require_redis()
        cache = f'{{backend: redis, url: "{REDIS_URL}", key_prefix: "{REDIS_PREFIX}", ttl_s: 60, timeout_ms: 500}}'
    else:
        cache = "{backend: memory, ttl_s: 60, max_entries: 1000}"
    server = serve(tmp_path_factory.mktemp(f"cache-{request.param}"), upstream, cache)
    server.backend = request.param  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()
        if request.param == "redis":
            forget_this_run()


@pytest.fixture(scope="module", params=["redis", "memory"])
def shared_proxy(request, tmp_path_factory, upstream) -> Iterator[ServerProcess]:
    """Shared scope, ttl_s 1 (route `long`: 60 s)."""
    if request.param == "redis":
        require_redis()
        cache = (f'{{backend: redis, url: "{REDIS_URL}", key_prefix: "{REDIS_PREFIX}", ttl_s: 1, scope: shared, '
                 'timeout_ms: 500}')
    else:
        cache = "{backend: memory, ttl_s: 1, scope: shared}"
    server = serve(tmp_path_factory.mktemp(f"shared-{request.param}"), upstream, cache)
    server.backend = request.param  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()
        if request.param == "redis":
            forget_this_run()


def sdk(server: ServerProcess, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=10)


@pytest.fixture
def client(proxy) -> Iterator[openai.OpenAI]:
    with sdk(proxy) as c:
        yield c


@pytest.fixture
def chat_route(upstream) -> FakeRoute:
    return upstream.post("/chat/completions")


def unique(text: str = "question") -> list[dict[str, str]]:
    """A prompt no other test sends, so every test starts from an empty cache."""
    return [{"role": "user", "content": f"{text} {uuid.uuid4().hex}"}]


def ask(client: openai.OpenAI, messages: list[dict], model: str = "main", headers: dict | None = None,
        **fields: Any) -> tuple[httpx.Headers, Any, bytes]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, extra_headers=headers, **fields
    )
    return raw.headers, raw.parse(), raw.http_response.content


def ask_stream(client: openai.OpenAI, messages: list[dict], model: str = "main", headers: dict | None = None,
               **fields: Any) -> tuple[httpx.Headers, list[Any]]:
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=messages, stream=True, extra_headers=headers, **fields
    ) as response:
        return response.headers, list(response.parse())


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def cache_of(headers: httpx.Headers) -> str:
    return headers["x-switchyard-cache"]


def settle() -> None:
    time.sleep(STORE_WAIT)


def expire_short_lived(server: ServerProcess, seconds: float = 1.2) -> None:
    """Let `seconds` pass for the entries whose TTL is no longer than that. Redis keeps its
    own time: this run's keys that short-lived are expired now. The in-memory cache of a
    proxy in another process takes no clock from a test: there the time is waited out."""
    if getattr(server, "backend", "") == "redis":
        expire_redis_keys(f"{REDIS_PREFIX}c:*{RUN}*", seconds)
    else:
        time.sleep(seconds)


def purge(server: ServerProcess, query: str = "", key: str = ADMIN) -> httpx.Response:
    return httpx.delete(server.base_url + "/admin/cache" + query, headers={"Authorization": f"Bearer {key}"})


# ---------------------------------------------------------------- hits and misses


def test_miss_then_hit_without_an_upstream_call(client, chat_route):
    chat_route.respond(json=completion("the stored answer", usage=USAGE))
    before = chat_route.call_count
    messages = unique()
    headers, first, first_bytes = ask(client, messages, temperature=0.3)
    assert cache_of(headers) == "miss" and "x-switchyard-cache-age" not in headers
    assert float(headers["x-switchyard-cost-usd"]) == pytest.approx(SAVED)
    assert "x-switchyard-saved-usd" not in headers
    settle()
    headers, second, second_bytes = ask(client, messages, temperature=0.3)
    assert cache_of(headers) == "hit"
    assert int(headers["x-switchyard-cache-age"]) in (0, 1)
    assert headers["x-switchyard-cost-usd"] == "0"  # a hit costs nothing ...
    assert float(headers["x-switchyard-saved-usd"]) == pytest.approx(SAVED)  # ... and saves the list price
    assert headers["x-switchyard-route"] == "main" and headers["x-switchyard-model"] == MODEL
    assert second_bytes == first_bytes  # the stored body, as the upstream sent it
    assert second.model_dump() == first.model_dump()
    assert second.choices[0].message.content == "the stored answer"
    assert chat_route.call_count - before == 1


def test_only_answer_changing_fields_make_a_new_entry(client, proxy, chat_route):
    chat_route.respond(json=completion("same answer", usage=USAGE))
    before = chat_route.call_count
    messages = unique()
    assert cache_of(ask(client, messages, temperature=0.5, max_tokens=20)[0]) == "miss"
    settle()
    # delivery and bookkeeping fields, another alias of the same target: the same entry
    assert cache_of(ask(client, messages, temperature=0.5, max_tokens=20, user="bob")[0]) == "hit"
    assert cache_of(ask(client, messages, temperature=0.5, max_tokens=20, metadata={"k": "v"}, store=False)[0]) == "hit"
    assert cache_of(ask(client, messages, model="alias", temperature=0.5, max_tokens=20)[0]) == "hit"
    # the body's keys in another order, sent by hand
    reordered = b'{"max_tokens":20,"temperature":0.5,"messages":' + orjson.dumps(messages) + b',"model":"main"}'
    raw = httpx.post(proxy.base_url + "/v1/chat/completions", content=reordered,
                     headers={"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/json"})
    assert raw.status_code == 200 and cache_of(raw.headers) == "hit"
    assert chat_route.call_count - before == 1
    # anything that can change the answer is another entry
    for changed in ({"temperature": 0.6}, {"max_tokens": 21}, {"seed": 7}, {"top_p": 0.9}, {"stop": ["x"]}):
        fields = {"temperature": 0.5, "max_tokens": 20, **changed}
        assert cache_of(ask(client, messages, **fields)[0]) == "miss", changed
    assert cache_of(ask(client, messages + [{"role": "user", "content": "and?"}], temperature=0.5,
                        max_tokens=20)[0]) == "miss"
    assert cache_of(ask(client, messages, model="other", temperature=0.5, max_tokens=20)[0]) == "miss"
    assert chat_route.call_count - before == 8


def test_ttl_expiry_and_route_ttl_override(client, proxy, chat_route):
    chat_route.respond(json=completion("short lived", usage=USAGE))
    before = chat_route.call_count
    short, normal = unique("short"), unique("normal")
    ask(client, short, model="short")  # route ttl_s: 1
    ask(client, normal)  # the cache's ttl_s: 60
    settle()
    assert cache_of(ask(client, short, model="short")[0]) == "hit"
    expire_short_lived(proxy)  # past the route's ttl_s: 1, not the cache's 60
    assert cache_of(ask(client, short, model="short")[0]) == "miss"  # expired
    assert cache_of(ask(client, normal)[0]) == "hit"
    assert chat_route.call_count - before == 3


def test_route_cache_off_is_a_bypass(client, chat_route):
    chat_route.respond(json=completion("uncached", usage=USAGE))
    before = chat_route.call_count
    messages = unique()
    for _ in range(2):
        headers, reply, _ = ask(client, messages, model="never")
        assert cache_of(headers) == "bypass" and reply.choices[0].message.content == "uncached"
        settle()
    assert chat_route.call_count - before == 2


def test_teams_never_share_entries(proxy, chat_route):
    chat_route.respond(json=completion("team answer", usage=USAGE))
    before = chat_route.call_count
    messages = unique()
    with sdk(proxy, KEY_A) as a, sdk(proxy, KEY_B) as b:
        assert cache_of(ask(a, messages)[0]) == "miss"
        settle()
        assert cache_of(ask(b, messages)[0]) == "miss"  # the same request, another team
        settle()
        assert cache_of(ask(a, messages)[0]) == "hit"
        assert cache_of(ask(b, messages)[0]) == "hit"
    assert chat_route.call_count - before == 2


def test_shared_scope_crosses_teams_and_expires(shared_proxy, chat_route):
    chat_route.respond(json=completion("shared answer", usage=USAGE))
    before = chat_route.call_count
    messages, kept = unique(), unique("kept")
    with sdk(shared_proxy, KEY_A) as a, sdk(shared_proxy, KEY_B) as b:
        assert cache_of(ask(a, messages)[0]) == "miss"
        assert cache_of(ask(a, kept, model="long")[0]) == "miss"  # route ttl_s: 60 over the cache's 1
        settle()
        headers, reply, _ = ask(b, messages)
        assert cache_of(headers) == "hit" and reply.choices[0].message.content == "shared answer"
        assert cache_of(ask(b, kept, model="long")[0]) == "hit"
        expire_short_lived(shared_proxy)  # past the cache's ttl_s: 1, not the route's 60
        assert cache_of(ask(b, messages)[0]) == "miss"  # ttl_s: 1
        assert cache_of(ask(a, kept, model="long")[0]) == "hit"
    assert chat_route.call_count - before == 3


# ---------------------------------------------------------------- streams


def test_stream_served_from_a_non_stream_answer(client, chat_route):
    chat_route.respond(json=completion("one answer, two shapes", usage=USAGE))
    before = chat_route.call_count
    messages = unique()
    _, stored, _ = ask(client, messages)
    settle()
    headers, chunks = ask_stream(client, messages, stream_options={"include_usage": True})
    assert cache_of(headers) == "hit" and headers["content-type"].startswith("text/event-stream")
    assert float(headers["x-switchyard-saved-usd"]) == pytest.approx(SAVED)
    assert text_of(chunks) == stored.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(exclude_none=True) == USAGE
    assert {c.id for c in chunks} == {stored.id} and {c.model for c in chunks} == {stored.model}
    headers, plain = ask_stream(client, messages)  # no usage chunk unless asked for
    assert cache_of(headers) == "hit" and text_of(plain) == stored.choices[0].message.content
    assert all(c.usage is None for c in plain) and all(c.choices for c in plain)
    assert chat_route.call_count - before == 1


def test_streamed_answer_is_stored_and_served_both_ways(client, chat_route):
    chat_route.stream(chunk_events(["Stre", "amed ", "once"], model=MODEL, usage=USAGE))
    before = chat_route.call_count
    messages = unique()
    headers, live = ask_stream(client, messages)  # usage not asked for: the proxy asks, and strips it
    assert cache_of(headers) == "miss" and text_of(live) == "Streamed once"
    assert all(c.usage is None for c in live)
    assert chat_route.calls.last.request.json()["stream_options"] == {"include_usage": True}
    settle()
    headers, again = ask_stream(client, messages, stream_options={"include_usage": True})
    assert cache_of(headers) == "hit" and text_of(again) == "Streamed once"
    assert again[-1].usage is not None and again[-1].usage.total_tokens == USAGE["total_tokens"]
    headers, reply, _ = ask(client, messages)
    assert cache_of(headers) == "hit"
    assert reply.choices[0].message.content == "Streamed once" and reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.model_dump(exclude_none=True) == USAGE
    assert float(headers["x-switchyard-saved-usd"]) == pytest.approx(SAVED)
    assert chat_route.call_count - before == 1


def test_tool_call_answer_replays_as_a_tool_call_stream(client, chat_route):
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    answer = completion(usage=USAGE)
    answer["choices"] = [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                          "finish_reason": "tool_calls"}]
    chat_route.respond(json=answer)
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    messages = unique()
    ask(client, messages, tools=tools)
    settle()
    headers, chunks = ask_stream(client, messages, tools=tools)
    assert cache_of(headers) == "hit"
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].content is None  # as a live tool-call stream opens
    calls = [tc for d in deltas for tc in d.tool_calls or ()]
    assert [(tc.id, tc.function.name) for tc in calls if tc.id] == [("call_1", "weather")]
    assert "".join(tc.function.arguments or "" for tc in calls) == '{"city":"Oslo"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_partial_stream_is_never_stored(client, chat_route):
    chat_route.stream(chunk_events(["a", "b", "c", "d"], model=MODEL, usage=USAGE), cut_after=2)
    before = chat_route.call_count
    messages = unique()
    with pytest.raises(openai.APIError):
        ask_stream(client, messages)
    chat_route.stream(chunk_events(["a", "b"], model=MODEL, usage=USAGE)[:-1])  # ends without [DONE]
    ask_stream(client, messages)
    settle()
    chat_route.respond(json=completion("whole", usage=USAGE))
    headers, reply, _ = ask(client, messages)
    assert cache_of(headers) == "miss" and reply.choices[0].message.content == "whole"
    assert chat_route.call_count - before == 3


@pytest.mark.parametrize(
    "status, error",
    [(500, openai.InternalServerError), (503, openai.InternalServerError), (400, openai.BadRequestError),
     (429, openai.RateLimitError)],
)
def test_upstream_errors_are_never_stored(client, chat_route, status, error):
    chat_route.respond(status, json={"error": {"message": f"upstream says {status}", "type": "x"}})
    before = chat_route.call_count
    messages = unique()
    for stream in (False, True):
        with pytest.raises(error):
            if stream:
                ask_stream(client, messages)
            else:
                ask(client, messages)
    settle()
    chat_route.respond(json=completion("recovered", usage=USAGE))
    headers, reply, _ = ask(client, messages)
    assert cache_of(headers) == "miss" and reply.choices[0].message.content == "recovered"
    assert chat_route.call_count - before == 3


def test_n2_answers_stored_only_when_choices_agree(client, chat_route):
    def two(a: str, b: str) -> dict:
        body = completion(usage=USAGE)
        body["choices"] = [
            {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
            for i, c in enumerate((a, b))
        ]
        return body

    before = chat_route.call_count
    differ, agree = unique("differ"), unique("agree")
    chat_route.respond(json=two("x", "y"))
    ask(client, differ, n=2)
    chat_route.respond(json=two("z", "z"))
    ask(client, agree, n=2)
    settle()
    assert cache_of(ask(client, differ, n=2)[0]) == "miss"
    headers, reply, _ = ask(client, agree, n=2)
    assert cache_of(headers) == "hit" and [c.message.content for c in reply.choices] == ["z", "z"]
    assert chat_route.call_count - before == 3


# ---------------------------------------------------------------- Cache-Control


def test_cache_control_no_cache_no_store_max_age(client, chat_route):
    before = chat_route.call_count
    messages = unique()
    chat_route.respond(json=completion("v1", usage=USAGE))
    ask(client, messages)
    settle()
    chat_route.respond(json=completion("v2", usage=USAGE))
    headers, reply, _ = ask(client, messages, headers={"Cache-Control": "no-cache"})
    assert cache_of(headers) == "miss" and reply.choices[0].message.content == "v2"  # no lookup ...
    settle()
    headers, reply, _ = ask(client, messages)
    assert cache_of(headers) == "hit" and reply.choices[0].message.content == "v2"  # ... but stored
    chat_route.respond(json=completion("v3", usage=USAGE))
    headers, reply, _ = ask(client, messages, headers={"Cache-Control": "no-store"})
    assert cache_of(headers) == "bypass" and reply.choices[0].message.content == "v3"  # neither read ...
    settle()
    assert ask(client, messages)[1].choices[0].message.content == "v2"  # ... nor written
    fresh = unique("fresh")
    ask(client, fresh, headers={"Cache-Control": "no-store"})
    settle()
    assert cache_of(ask(client, fresh)[0]) == "miss"
    # max-age: an entry older than N seconds is not good enough (and the fresh answer replaces it)
    chat_route.respond(json=completion("v4", usage=USAGE))
    headers, reply, _ = ask(client, messages, headers={"Cache-Control": "max-age=0"})
    assert cache_of(headers) == "miss" and reply.choices[0].message.content == "v4"
    settle()
    headers, reply, _ = ask(client, messages, headers={"Cache-Control": "max-age=60"})
    assert cache_of(headers) == "hit" and reply.choices[0].message.content == "v4"
    assert chat_route.call_count - before == 6


# ---------------------------------------------------------------- purges


def test_admin_purge_by_team_and_model(proxy, chat_route):
    chat_route.respond(json=completion("purgeable", usage=USAGE))
    for team in (TEAM_A, TEAM_B):  # what earlier tests left, so the counts below are this test's
        assert purge(proxy, f"?team={team}").status_code == 200
    messages = unique()
    with sdk(proxy, KEY_A) as a, sdk(proxy, KEY_B) as b:
        for c in (a, b):
            ask(c, messages)
            ask(c, messages, model="other")
        settle()
        assert purge(proxy, "", key=KEY_A).status_code == 401  # a team key is not an admin key
        assert purge(proxy, "?team=nobody").json()["deleted"] == 0

        r = purge(proxy, f"?team={TEAM_A}&model={OTHER}")
        assert r.status_code == 200 and r.json() == {"deleted": 1, "team": TEAM_A, "model": OTHER}
        assert cache_of(ask(a, messages, model="other")[0]) == "miss"
        assert cache_of(ask(a, messages)[0]) == "hit"
        settle()

        assert purge(proxy, f"?team={TEAM_A}").json()["deleted"] == 2
        assert cache_of(ask(a, messages)[0]) == "miss"
        assert cache_of(ask(b, messages)[0]) == "hit"  # the other team's entries stay

        assert purge(proxy, f"?model=up/{MODEL}").json()["deleted"] == 2  # a target: both teams
        assert cache_of(ask(b, messages)[0]) == "miss"
        assert cache_of(ask(b, messages, model="other")[0]) == "hit"
        settle()
        assert purge(proxy, f"?model={OTHER}").json()["deleted"] == 1  # a bare model name, any provider
        assert cache_of(ask(b, messages, model="other")[0]) == "miss"

        if getattr(proxy, "backend", "") == "memory":  # everything (never on the shared Redis)
            settle()
            assert purge(proxy).json()["deleted"] == 2  # b's two, stored again by the misses above
            assert cache_of(ask(b, messages)[0]) == "miss"


# ---------------------------------------------------------------- Redis frozen and killed under load


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    try:
        yield server
    finally:
        server.kill()


def answer_both_ways(text: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An upstream that streams when asked to and answers JSON otherwise."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            return web.json_response(completion(text, model=MODEL, usage=USAGE))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in chunk_events([text], model=MODEL, usage=USAGE):
            await response.write(event)
        await response.write_eof()
        return response

    return handler


def test_redis_frozen_then_killed_mid_test_fails_and_stalls_nothing(tmp_path, upstream, private_redis):
    upstream.post("/chat/completions").handler(answer_both_ways("steady"))
    path = tmp_path / "proxy.yaml"
    path.write_text(config(
        upstream.base_url,
        f'{{backend: redis, url: "{private_redis.url}", timeout_ms: 50, failures: 3, cooldown_s: 0.5}}',
    ))
    log: list[tuple[float, str, float]] = []  # (when, cache header, seconds taken)
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    with ServerProcess(path) as server:
        # purging everything is safe here: this Redis is ours alone
        with sdk(server) as c:
            ask(c, unique())
        settle()
        # one entry and its tallies (hits, feedback) beside it; the purge counts entries
        assert private_redis.keys() == 2 and purge(server).json()["deleted"] == 1 and private_redis.keys() == 0

        def hammer(worker: int) -> None:
            with sdk(server, KEY_A if worker % 2 else KEY_B) as c:
                i = 0
                while not stop.is_set():
                    messages = [{"role": "user", "content": f"{RUN} question {i % 7}"}]
                    started = time.monotonic()
                    try:
                        if i % 3 == 0:
                            headers, chunks = ask_stream(c, messages)
                            assert text_of(chunks) == "steady"
                        else:
                            headers, reply, _ = ask(c, messages)
                            assert reply.choices[0].message.content == "steady"
                        result = cache_of(headers)
                    except Exception as exc:  # noqa: BLE001 - every failure is the finding
                        result = "failed"
                        with lock:
                            failures.append(repr(exc))
                    took = time.monotonic() - started
                    with lock:
                        log.append((time.monotonic(), result, took))
                    i += 1

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.6)
            frozen_at = time.monotonic()
            private_redis.send(signal.SIGSTOP)  # slow: accepts connections, never answers
            time.sleep(1.0)
            thawed_at = time.monotonic()
            private_redis.send(signal.SIGCONT)
            time.sleep(0.6)
            killed_at = time.monotonic()
            private_redis.kill()  # gone
            time.sleep(1.2)
            restarted_at = time.monotonic()
            private_redis.start()  # back, and empty
            eventually(lambda: private_redis.keys() > 0, interval=0.1, what="stores in the restarted Redis")
            time.sleep(0.3)  # a little more load on the recovered Redis
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        ready = httpx.get(server.base_url + "/readyz").json()
        stored_after_restart = private_redis.keys()

    assert failures == [], failures[:5]
    assert len(log) > 100
    # nothing waited on the frozen Redis: requests begun while it was frozen were answered before it thawed
    assert any(frozen_at < when - took and when < thawed_at for when, _, took in log)
    slowest = max(took for _, _, took in log)
    assert slowest < 5, f"the slowest request took {slowest:.2f}s"  # a hang guard, not a speed test
    assert {r for _, r, _ in log} <= {"hit", "miss"}
    assert any(r == "hit" for when, r, _ in log if when < frozen_at)
    # while Redis was down the local LRU stood in, so repeated questions still hit
    assert any(r == "hit" for when, r, _ in log if killed_at + 0.2 < when < restarted_at)
    # and once it was back, after the cool-down, answers went to Redis again
    assert stored_after_restart > 0
    assert ready["cache"]["backend"] == "redis" and ready["cache"]["redis_errors"] > 0
    assert ready["cache"]["redis_available"] is True
