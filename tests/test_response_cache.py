"""The response cache: key canonicalisation (property tests), entries, request controls,
the memory and Redis backends (real Redis, and a private one killed mid-test), and the
whole proxy serving hits, streams from cache, isolation and purges."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import orjson
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

import proxy.cache as cache_module
from proxy.cache import Entry, decode_entry, encode_entry, request_policy
from proxy.cache.backends import MemoryBackend
from proxy.cache.keys import IGNORED_FIELDS, cache_key, purge_pattern
from proxy.cache.redis_backend import RedisBackend
from proxy.config import CacheConfig
from proxy.dialects.chat_stream import StreamCapture, choices_identical, replay_events
from proxy.tasks import drain
from support import (
    REDIS_PREFIX,
    REDIS_URL,
    AppClient,
    FakeUpstream,
    PrivateRedis,
    ServerProcess,
    chat_body,
    chunk_events,
    completion,
    eventually,
    expire_redis_keys,
)


def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:  # `make test` starts Redis: missing it is a failure, not a skip
        pytest.fail(f"Redis at {REDIS_URL} is required: {exc}")
    return client


# ---------------------------------------------------------------- keys (properties)

json_scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, width=32) | st.text(
    max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=5), inner, max_size=3), max_leaves=8)
answer_fields = st.sampled_from(
    ["messages", "tools", "tool_choice", "temperature", "top_p", "max_tokens", "max_completion_tokens",
     "response_format", "seed", "n", "stop", "presence_penalty", "frequency_penalty", "logit_bias", "input"]
)
bodies = st.dictionaries(answer_fields, json_values, min_size=1, max_size=6)


def key(body: dict, *, scope: str = "team-a", target: str = "openai/gpt-4o", endpoint: str = "chat/completions") -> str:
    return cache_key(scope=scope, target=target, endpoint=endpoint, body=body, prefix=REDIS_PREFIX)


@settings(max_examples=200, deadline=None)
@given(bodies, st.randoms())
def test_key_ignores_field_order(body, rnd):
    items = list(body.items())
    rnd.shuffle(items)
    assert key(dict(items)) == key(body)


@settings(max_examples=200, deadline=None)
@given(bodies, st.dictionaries(st.sampled_from(sorted(IGNORED_FIELDS)), json_values, max_size=4))
def test_key_ignores_delivery_and_bookkeeping_fields(body, extra):
    assert key({**body, **extra}) == key(body)


@settings(max_examples=300, deadline=None)
@given(bodies, answer_fields, json_values)
def test_any_answer_changing_difference_changes_the_key(body, field, value):
    changed = {**body, field: value}
    if orjson.dumps(changed, option=orjson.OPT_SORT_KEYS) == orjson.dumps(body, option=orjson.OPT_SORT_KEYS):
        return  # not actually different
    assert key(changed) != key(body)


@settings(max_examples=100, deadline=None)
@given(bodies)
def test_scope_target_and_endpoint_separate_keys(body):
    base = key(body)
    assert key(body, scope="team-b") != base
    assert key(body, target="openai/gpt-4o-mini") != base
    assert key(body, endpoint="embeddings") != base


def test_key_layout_allows_purges_by_scope_and_model():
    k = cache_key(scope="search", target="ollama/llama3:8b", endpoint="chat/completions", body={"messages": []})
    assert k.startswith("sy:c:search:ollama/llama3%3A8b:")  # cache.key_prefix's default, then c:
    import fnmatch

    assert fnmatch.fnmatchcase(k, purge_pattern(scope="search", model=None))
    other = cache_key(scope="search", target="x/y", endpoint="chat/completions", body={}, prefix="staging:")
    assert other.startswith("staging:c:search:x/y:")
    assert not fnmatch.fnmatchcase(other, purge_pattern(scope="search", model=None))
    assert fnmatch.fnmatchcase(other, purge_pattern(scope="search", model=None, prefix="staging:"))
    assert fnmatch.fnmatchcase(k, purge_pattern(scope=None, model="llama3:8b"))
    assert fnmatch.fnmatchcase(k, purge_pattern(scope=None, model="ollama/llama3:8b"))
    assert not fnmatch.fnmatchcase(k, purge_pattern(scope="other", model=None))
    assert not fnmatch.fnmatchcase(k, purge_pattern(scope=None, model="llama3"))


# ---------------------------------------------------------------- entries and policy


@pytest.mark.parametrize("size", [0, 10, 2047, 2048, 5000, 200_000])
def test_entry_round_trip_compressed_when_large(size):
    body = orjson.dumps({"choices": [{"message": {"content": "x" * size}}]})
    entry = Entry("openai/gpt-4o", 1700000000.5, {"prompt_tokens": 3}, body)
    raw = encode_entry(entry)
    assert decode_entry(raw) == entry
    if size > 5000:
        assert len(raw) < len(body) / 5
        assert raw[:1] == b"z"


@pytest.mark.parametrize("raw", [b"", b"q{}", b"j", b"jnot json\n{}", b"z\x00\x01", b'j{"v":1}\n{}'])
def test_malformed_entries_are_misses(raw):
    assert decode_entry(raw) is None


@pytest.mark.parametrize(
    "backend, route_enabled, route_ttl, header, lookup, store, max_age, ttl",
    [
        ("redis", True, None, None, True, True, None, 3600),
        ("redis", True, 60, None, True, True, None, 60),
        ("off", True, None, None, False, False, None, 0),
        ("memory", False, None, None, False, False, None, 0),
        ("memory", True, None, "no-cache", False, True, None, 3600),
        ("memory", True, None, "no-store", False, False, None, 0),
        ("memory", True, None, "max-age=30", True, True, 30.0, 3600),
        ("memory", True, None, "No-Cache, max-age=5", False, True, 5.0, 3600),
        ("memory", True, None, "max-age=abc", True, True, None, 3600),
        ("memory", True, None, "private", True, True, None, 3600),
    ],
)
def test_request_policy(backend, route_enabled, route_ttl, header, lookup, store, max_age, ttl):
    policy = request_policy(CacheConfig(backend=backend), route_ttl, route_enabled, header)
    assert (policy.lookup, policy.store, policy.max_age, policy.ttl_s) == (lookup, store, max_age, ttl)


@settings(max_examples=300, deadline=None)
@given(backend=st.sampled_from(["off", "memory", "redis"]), ttl_s=st.integers(1, 10**6),
       route_ttl=st.none() | st.integers(0, 10**6), route_enabled=st.booleans(),
       header=st.none() | st.sampled_from(["no-cache", "no-store", "max-age=7", "private", ""]))
def test_a_caches_policy_is_request_policy_of_its_settings(backend, ttl_s, route_ttl, route_enabled, header):
    """The policy a cache gives each request (a plain request's remembered per TTL) is what
    `request_policy` says for its settings, asked again and again."""
    settings_ = CacheConfig(backend=backend, ttl_s=ttl_s)
    cache = cache_module.ResponseCache(settings_, MemoryBackend(10))
    expected = request_policy(settings_, route_ttl, route_enabled, header)
    assert cache.policy(route_ttl, route_enabled, header) == expected
    assert cache.policy(route_ttl, route_enabled, header) == expected


async def test_a_memory_hit_is_decoded_once_and_a_replaced_value_never_served_stale():
    cache = cache_module.ResponseCache(CacheConfig(backend="memory"), MemoryBackend(100))
    first = Entry("p/m", time.time(), None, b'{"n":1}', "a")
    await cache.store("k", first, 60)
    hits = [await cache.lookup("k", None) for _ in range(5)]
    assert hits == [first] * 5
    # each decoding makes a new Entry: one object for all five means the stored value was recognised
    assert all(hit is hits[0] for hit in hits) and hits[0] is not first
    second = Entry("p/m", time.time(), None, b'{"n":2}', "b")
    await cache.store("k", second, 60)
    again = await cache.lookup("k", None)
    assert again == second and again is not hits[0]


async def test_values_read_off_a_socket_are_decoded_every_time(monkeypatch):
    backend = MemoryBackend(100)
    monkeypatch.setattr(backend, "keeps_objects", False)  # as RedisBackend: a new bytes object per get
    cache = cache_module.ResponseCache(CacheConfig(backend="memory"), backend)
    assert cache._decoded is None
    entry = Entry("p/m", time.time(), None, b'{"n":1}', "a")
    await cache.store("k", entry, 60)
    assert await cache.lookup("k", None) == entry


# ---------------------------------------------------------------- streams


def assemble(events: list[bytes], size: int = 7) -> dict | None:
    capture = StreamCapture()
    raw = b"".join(events)
    for i in range(0, len(raw), size):
        capture.feed(raw[i : i + size])
    return capture.assembler.completion()


def test_stream_assembles_and_replays_faithfully():
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    answer = assemble(chunk_events(["Hel", "lo"], usage=usage))
    assert answer is not None
    assert answer["choices"][0]["message"]["content"] == "Hello"
    assert answer["usage"] == usage
    again = assemble(replay_events(answer, include_usage=True))
    assert again is not None and again["choices"] == answer["choices"] and again["usage"] == usage
    plain = replay_events(answer, include_usage=False)
    assert not any(b'"usage"' in e for e in plain) and plain[-1] == b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "events",
    [
        chunk_events(["a", "b"])[:-1],  # no [DONE]
        chunk_events(["a"])[:2],  # no finish_reason either
        [*chunk_events(["a"])[:2], b'data: {"error": {"message": "boom"}}\n\n', b"data: [DONE]\n\n"],
        [b"data: not json\n\n", b"data: [DONE]\n\n"],
    ],
    ids=["no-done", "unfinished", "error-event", "garbage"],
)
def test_broken_streams_are_never_assembled(events):
    assert assemble(events) is None


def test_tool_call_deltas_are_merged():
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    deltas = [
        {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
    ]
    events = [b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}) + b"\n\n"
              for d in deltas]
    finish = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    events.append(b"data: " + orjson.dumps({**base, "choices": [finish]})
                  + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    answer = assemble(events, size=11)
    assert answer is not None
    call = answer["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}
    assert answer["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    "choices, identical",
    [
        ([{"message": {"content": "a"}}], True),
        ([{"message": {"content": "a"}}, {"message": {"content": "a"}}], True),
        ([{"message": {"content": "a"}}, {"message": {"content": "b"}}], False),
        ([], True),
    ],
)
def test_choices_identical(choices, identical):
    assert choices_identical({"choices": choices}) is identical


# ---------------------------------------------------------------- backends


async def test_memory_backend_is_a_bounded_lru_with_ttl():
    now = [0.0]
    lru = MemoryBackend(3, clock=lambda: now[0])
    for k in "abc":
        await lru.set(k, k.encode(), 10)
    assert await lru.get("a") == b"a"  # a is now the most recent
    await lru.set("d", b"d", 10)
    assert await lru.get("b") is None and len(lru) == 3
    now[0] = 11
    assert await lru.get("a") is None
    await lru.set("x:1", b"1", 10)
    await lru.set("x:2", b"2", 10)
    assert await lru.purge("x:*") == 2


@pytest.fixture
async def redis_backend() -> AsyncIterator[RedisBackend]:
    redis_client()
    backend = RedisBackend(REDIS_URL, timeout_ms=200, failures=3, cooldown_s=5, fallback=MemoryBackend(100))
    yield backend
    await backend.purge(f"{REDIS_PREFIX}c:test-*")
    await backend.aclose()


@pytest.mark.integration
async def test_redis_backend_round_trip_ttl_and_purge(redis_backend):
    scope = f"test-{uuid.uuid4().hex[:8]}"
    k = key({"messages": [1]}, scope=scope)
    await redis_backend.set(k, b"value", 1)
    assert await redis_backend.get(k) == b"value"
    assert redis_client().ttl(k) in (0, 1)
    redis_client().pexpire(k, 1)  # the second's end, now: Redis itself expires the key

    async def expired() -> bool:
        return await redis_backend.get(k) is None

    await eventually(expired, what="the key to expire")
    assert await redis_backend.get(k) is None
    for i in range(3):
        await redis_backend.set(key({"messages": [i]}, scope=scope), b"v", 60)
    assert await redis_backend.purge(purge_pattern(scope=scope, model=None, prefix=REDIS_PREFIX)) == 3


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    yield server
    server.kill()


@pytest.mark.integration
async def test_redis_outage_is_a_miss_then_skipped_then_retried(private_redis):
    local = MemoryBackend(100)
    now = [0.0]
    backend = RedisBackend(private_redis.url, timeout_ms=50, failures=2, cooldown_s=5, fallback=local,
                           clock=lambda: now[0])
    try:
        await backend.set("sy:c:a", b"from-redis", 60)
        assert await backend.get("sy:c:a") == b"from-redis"
        private_redis.kill()
        for n in (1, 2):
            assert await asyncio.wait_for(backend.get("sy:c:a"), 5) is None  # an error is a miss ...
            assert backend.errors == n  # ... counted, not waited out (the wait_for only guards a hang)
        assert not backend.available and backend.errors == 2
        await backend.set("sy:c:b", b"local", 60)  # skipped: the local LRU stands in
        assert await backend.get("sy:c:b") == b"local"
        private_redis.start()
        now[0] = 6  # the cool-down is over: Redis is tried again
        await backend.set("sy:c:c", b"back", 60)
        assert backend.available
        assert await backend.get("sy:c:c") == b"back"
    finally:
        await backend.aclose()


# ---------------------------------------------------------------- the proxy (in process)

KEY_A, KEY_B, ADMIN = "sk-cache-team-a", "sk-cache-team-b", "admin-cache-1"


def config(upstream: str, cache: str, extra_routes: str = "") -> str:
    return f"""
server: {{admin_keys: ["{ADMIN}"]}}
ledger: {{path: off}}
cache: {cache}
providers:
  mock: {{type: mock}}
  up: {{type: openai, base_url: "{upstream}", api_key: sk-up}}
pricing:
  up/priced: {{input: 1.0, output: 2.0}}
teams:
  a: {{keys: ["{KEY_A}"]}}
  b: {{keys: ["{KEY_B}"]}}
routes:
  - {{name: priced, match: {{model: priced}}, to: up/priced}}
  - {{name: short, match: {{model: short}}, to: up/priced, cache: {{ttl_s: 1}}}}
  - {{name: never, match: {{model: never}}, to: up/priced, cache: off}}
{extra_routes}
"""


USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        up.post("/chat/completions").respond(json=completion("cached answer", usage=USAGE))
        yield up


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """The in-memory cache's clock: its TTLs run out when a test moves it on."""
    return Clock()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def proxy(request, upstream, app_client, clock) -> AppClient:
    if request.param == "redis":
        redis_client()
        text = config(upstream.base_url, f'{{backend: redis, url: "{REDIS_URL}", key_prefix: "{REDIS_PREFIX}", '
                                         'timeout_ms: 200}')
    else:
        text = config(upstream.base_url, "{backend: memory, max_entries: 100}")
    client = await app_client(text)
    cache = client.runtime.cache
    if isinstance(cache.backend, MemoryBackend):  # the same LRU, on the test's clock
        cache.backend = MemoryBackend(cache.backend.max_entries, clock=clock)
    # entries an earlier run left in the real Redis, under any scope
    await client.delete("/admin/cache?model=up/priced", headers={"Authorization": f"Bearer {ADMIN}"})
    return client


async def expire_short_lived(client: AppClient, clock: Clock, seconds: float) -> None:
    """Let `seconds` pass for the entries whose TTL is at most that: on the test's clock
    (memory), or (Redis, which keeps its own time) by expiring those keys now."""
    if isinstance(client.runtime.cache.backend, MemoryBackend):
        clock.now += seconds
    else:
        expire_redis_keys(f"{REDIS_PREFIX}c:*:up/priced:*", seconds)


def auth(key: str = KEY_A, **headers: str) -> dict:
    return {"Authorization": f"Bearer {key}", **headers}


async def post(client: httpx.AsyncClient, body: dict, headers: dict) -> httpx.Response:
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    await drain()  # stores happen in the background, after the answer is sent
    return response


async def test_miss_then_hit_without_calling_upstream(proxy, upstream):
    first = await post(proxy, chat_body("priced"), auth())
    assert first.headers["x-switchyard-cache"] == "miss"
    second = await post(proxy, chat_body("priced"), auth())
    assert second.headers["x-switchyard-cache"] == "hit"
    assert second.content == first.content
    assert int(second.headers["x-switchyard-cache-age"]) >= 0
    assert second.headers["x-switchyard-cost-usd"] == "0"
    assert float(second.headers["x-switchyard-saved-usd"]) == pytest.approx((10 * 1 + 5 * 2) / 1e6)
    assert upstream.post("/chat/completions").call_count == 1
    # a different answer-changing field is a different entry; stream/user are not
    assert (await post(proxy, chat_body("priced", temperature=0.5), auth())).headers["x-switchyard-cache"] == "miss"
    same = await post(proxy, chat_body("priced", user="bob", metadata={"x": "1"}), auth())
    assert same.headers["x-switchyard-cache"] == "hit"


async def test_teams_never_share_entries_in_team_scope(proxy, upstream):
    await post(proxy, chat_body("priced"), auth(KEY_A))
    other = await post(proxy, chat_body("priced"), auth(KEY_B))
    assert other.headers["x-switchyard-cache"] == "miss"
    assert upstream.post("/chat/completions").call_count == 2


async def test_shared_scope_shares(upstream, app_client):
    client = await app_client(config(upstream.base_url, "{backend: memory, scope: shared}"))
    await post(client, chat_body("priced"), auth(KEY_A))
    assert (await post(client, chat_body("priced"), auth(KEY_B))).headers["x-switchyard-cache"] == "hit"


async def test_stream_served_from_a_stored_answer(proxy, upstream):
    await post(proxy, chat_body("priced"), auth())
    response = await post(proxy, chat_body("priced", stream=True, stream_options={"include_usage": True}), auth())
    assert response.headers["x-switchyard-cache"] == "hit"
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "cached answer"
    assert chunks[-1]["usage"] == USAGE
    assert upstream.post("/chat/completions").call_count == 1


async def test_streamed_answer_stored_and_served_to_non_stream(proxy, upstream):
    upstream.post("/chat/completions").stream(chunk_events(["stre", "amed"], usage=USAGE))
    first = await post(proxy, chat_body("priced", stream=True), auth())
    assert first.headers["x-switchyard-cache"] == "miss"
    hit = await post(proxy, chat_body("priced"), auth())
    assert hit.headers["x-switchyard-cache"] == "hit"
    assert hit.json()["choices"][0]["message"]["content"] == "streamed"
    assert hit.json()["usage"] == USAGE


TWO_DIFFERENT = {
    **completion(),
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "y"}, "finish_reason": "stop"},
    ],
}


@pytest.mark.parametrize(
    "script, stream",
    [
        (lambda up: up.post("/chat/completions").stream(chunk_events(["a", "b", "c"]), cut_after=2), True),
        (lambda up: up.post("/chat/completions").stream(chunk_events(["a", "b"])[:-1]), True),
        (lambda up: up.post("/chat/completions").respond(500, json={"error": {"message": "no"}}), False),
        (lambda up: up.post("/chat/completions").respond(400, json={"error": {"message": "bad"}}), False),
        (lambda up: up.post("/chat/completions").respond(json=TWO_DIFFERENT), False),
    ],
    ids=["cut-stream", "stream-without-done", "5xx", "4xx", "n2-different"],
)
async def test_failures_and_unfaithful_answers_are_never_stored(proxy, upstream, script, stream):
    script(upstream)
    await post(proxy, chat_body("priced", stream=stream), auth())
    upstream.post("/chat/completions").respond(json=completion("fresh"))
    after = await post(proxy, chat_body("priced"), auth())
    assert after.headers["x-switchyard-cache"] == "miss"
    assert after.json()["choices"][0]["message"]["content"] == "fresh"


async def test_cache_control_headers(proxy, upstream):
    await post(proxy, chat_body("priced"), auth())
    no_cache = await post(proxy, chat_body("priced"), auth(**{"Cache-Control": "no-cache"}))
    assert no_cache.headers["x-switchyard-cache"] == "miss"
    assert upstream.post("/chat/completions").call_count == 2
    store_none = await post(proxy, chat_body("priced", "secret"), auth(**{"Cache-Control": "no-store"}))
    assert store_none.headers["x-switchyard-cache"] == "bypass"
    assert (await post(proxy, chat_body("priced", "secret"), auth())).headers["x-switchyard-cache"] == "miss"
    await asyncio.sleep(1.1)  # the entry's age (the compiled cache reads the real clock)
    old = await post(proxy, chat_body("priced"), auth(**{"Cache-Control": "max-age=1"}))
    assert old.headers["x-switchyard-cache"] == "miss"  # the entry is older than 1 s
    young = await post(proxy, chat_body("priced"), auth(**{"Cache-Control": "max-age=60"}))
    assert young.headers["x-switchyard-cache"] == "hit"


async def test_route_overrides_ttl_and_off(proxy, upstream, clock):
    await post(proxy, chat_body("never"), auth())
    assert (await post(proxy, chat_body("never"), auth())).headers["x-switchyard-cache"] == "bypass"
    await post(proxy, chat_body("short"), auth())
    assert (await post(proxy, chat_body("short"), auth())).headers["x-switchyard-cache"] == "hit"
    await expire_short_lived(proxy, clock, 1.3)  # past the route's ttl_s: 1, not the cache's 3600
    assert (await post(proxy, chat_body("short"), auth())).headers["x-switchyard-cache"] == "miss"


async def test_admin_purge_by_team_and_model(proxy, upstream):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    await post(proxy, chat_body("priced"), auth(KEY_A))
    await post(proxy, chat_body("priced"), auth(KEY_B))
    r = await proxy.delete("/admin/cache?team=a", headers=admin)
    assert r.status_code == 200 and r.json()["deleted"] == 1
    assert (await post(proxy, chat_body("priced"), auth(KEY_A))).headers["x-switchyard-cache"] == "miss"
    assert (await post(proxy, chat_body("priced"), auth(KEY_B))).headers["x-switchyard-cache"] == "hit"
    r = await proxy.delete("/admin/cache?model=priced", headers=admin)
    assert r.json()["deleted"] == 2
    assert (await post(proxy, chat_body("priced"), auth(KEY_B))).headers["x-switchyard-cache"] == "miss"
    assert (await proxy.delete("/admin/cache", headers=auth())).status_code == 401


# ---------------------------------------------------------------- Redis killed under a live proxy


@pytest.mark.integration
def test_redis_killed_mid_test_fails_no_request(tmp_path, private_redis):
    upstream = FakeUpstream().start_threaded()
    upstream.post("/chat/completions").respond(json=completion("steady", usage=USAGE))
    path = tmp_path / "proxy.yaml"
    path.write_text(config(upstream.base_url, f'{{backend: redis, url: "{private_redis.url}", timeout_ms: 10}}'))
    failures: list[str] = []
    spans: list[tuple[float, float]] = []  # (started, ended) of every request
    results: list[str] = []
    stop = threading.Event()
    try:
        with ServerProcess(path) as server, contextlib.ExitStack() as stack:
            client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY_A, max_retries=0, timeout=5)
            stack.callback(client.close)

            def hammer() -> None:
                i = 0
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        raw = client.chat.completions.with_raw_response.create(
                            model="priced", messages=[{"role": "user", "content": f"q{i % 5}"}]
                        )
                        results.append(raw.headers["x-switchyard-cache"])
                    except openai.OpenAIError as exc:
                        failures.append(repr(exc))
                    spans.append((started, time.monotonic()))
                    i += 1

            threads = [threading.Thread(target=hammer) for _ in range(3)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            hits_before = results.count("hit")
            private_redis.kill()
            killed_at = time.monotonic()
            time.sleep(1.5)
            restarted_at = time.monotonic()
            private_redis.start()
            time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join(10)
            ready = httpx.get(server.base_url + "/readyz").json()
    finally:
        stop.set()
        upstream.stop_threaded()
    assert failures == []
    assert hits_before > 0 and len(results) > 100
    # no request waited for the dead Redis: requests begun after it died were answered before it came back
    assert any(killed_at < started and ended < restarted_at for started, ended in spans)
    assert max(ended - started for started, ended in spans) < 5  # a hang guard, not a speed test
    assert ready["cache"]["backend"] == "redis"


async def test_streamed_answer_with_logprobs_is_not_stored(proxy, upstream):
    upstream.post("/chat/completions").stream(chunk_events(["a", "b"]))
    await post(proxy, chat_body("priced", stream=True, logprobs=True), auth())
    upstream.post("/chat/completions").respond(json=completion("with logprobs"))
    again = await post(proxy, chat_body("priced", logprobs=True), auth())
    assert again.headers["x-switchyard-cache"] == "miss"
