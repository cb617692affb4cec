"""Cache storage: the in-process LRU (bound, TTL, purges) and the Redis backend, against
the real Redis (round trip, TTL, purge patterns) and against a private redis-server this
file starts, freezes and kills (time-boxing, errors as misses, the breaker's cool-down
and recovery)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.cache import Entry, ResponseCache, build_cache, decode_entry
from proxy.cache.backends import MemoryBackend
from proxy.cache.keys import cache_key, purge_pattern
from proxy.cache.redis_backend import RedisBackend
from proxy.config import CacheConfig
from support import REDIS_PREFIX, REDIS_URL, PrivateRedis, eventually

RUN = uuid.uuid4().hex[:10]  # every key this file puts in the shared Redis has it in its scope


def shared_redis() -> redis.Redis:
    """The real Redis the suite runs against; missing it is a failure, not a skip."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.fail(f"the cache tests need Redis at {REDIS_URL} (set SWITCHYARD_TEST_REDIS_URL): {exc}")
    return client


def key(scope: str, target: str = "openai/gpt-4o", n: int = 0) -> str:
    return cache_key(scope=scope, target=target, endpoint="chat/completions", body={"messages": [n]},
                     prefix=REDIS_PREFIX)


# ---------------------------------------------------------------- memory backend


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from("abcdefgh"), st.integers(1, 20)),
        st.tuples(st.just("get"), st.sampled_from("abcdefgh"), st.just(0)),
        st.tuples(st.just("tick"), st.just(""), st.integers(0, 8)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 5), ops)
def test_memory_backend_is_a_bounded_lru_with_ttl(bound, operations):
    async def run() -> None:
        clock = Clock()
        lru = MemoryBackend(bound, clock=clock)
        model: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        for n, (op, k, arg) in enumerate(operations):
            if op == "tick":
                clock.now += arg
            elif op == "set":
                value = f"{k}{n}".encode()
                await lru.set(k, value, arg)
                model[k] = (clock.now + arg, value)
                model.move_to_end(k)
                while len(model) > bound:
                    model.popitem(last=False)  # the least recently used goes first
            else:
                expected = None
                if k in model:
                    expires, value = model[k]
                    if expires > clock.now:
                        expected = value
                        model.move_to_end(k)
                    else:
                        del model[k]
                assert await lru.get(k) == expected
            assert len(lru) <= bound
            assert len(lru) == len(model)

    asyncio.run(run())


async def test_memory_backend_ttl_and_recency():
    clock = Clock()
    lru = MemoryBackend(2, clock=clock)
    await lru.set("a", b"1", 10)
    await lru.set("b", b"2", 5)
    clock.now += 5
    assert await lru.get("b") is None  # expired at exactly its TTL
    assert await lru.get("a") == b"1"
    await lru.set("c", b"3", 10)
    await lru.set("d", b"4", 10)  # the bound is 2: "a" (least recent) goes
    assert await lru.get("a") is None and await lru.get("c") == b"3" and await lru.get("d") == b"4"
    await lru.set("c", b"3b", 1)  # overwriting refreshes value and TTL
    clock.now += 1
    assert await lru.get("c") is None


names = st.text(min_size=1, max_size=8)  # including '*', '?', '[', '\\', ':' and '%'


def pattern(*, scope: str | None, model: str | None) -> str:
    return purge_pattern(scope=scope, model=model, prefix=REDIS_PREFIX)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(names, st.sampled_from(["p", "q/r", "p:x"]), names), min_size=1, max_size=6),
    st.data(),
)
def test_memory_purge_matches_exactly_one_scope_or_model(entries, data):
    """A purge by team or model removes exactly the keys of that team or model, whatever
    characters the names hold (the patterns escape glob characters, Redis-style)."""
    stored = {key(scope, f"{provider}/{model}"): (scope, f"{provider}/{model}") for scope, provider, model in entries}
    scope = data.draw(st.sampled_from([s for s, _ in stored.values()]) | names)
    target = data.draw(st.sampled_from([t for _, t in stored.values()]))
    bare = target.split("/")[-1]

    async def run() -> None:
        for how, glob, doomed in [
            ("scope", pattern(scope=scope, model=None), {k for k, (s, _) in stored.items() if s == scope}),
            ("target", pattern(scope=None, model=target), {k for k, (_, t) in stored.items() if t == target}),
            ("bare", pattern(scope=None, model=bare),
             {k for k, (_, t) in stored.items() if t.endswith("/" + bare)}),
            ("both", pattern(scope=scope, model=target),
             {k for k, (s, t) in stored.items() if s == scope and t == target}),
            ("all", pattern(scope=None, model=None), set(stored)),
        ]:
            lru = MemoryBackend(100)
            for k in stored:
                await lru.set(k, b"v", 60)
            assert await lru.purge(glob) == len(doomed), (how, glob)
            for k in stored:
                assert (await lru.get(k) is None) is (k in doomed), (how, glob, k)

    asyncio.run(run())


# ---------------------------------------------------------------- Redis (the shared server)


@pytest.fixture
async def backend() -> AsyncIterator[RedisBackend]:
    sync = shared_redis()
    rb = RedisBackend(REDIS_URL, timeout_ms=500, failures=3, cooldown_s=5, fallback=MemoryBackend(100))
    try:
        yield rb
    finally:
        await rb.aclose()
        doomed = list(sync.scan_iter(match=f"{REDIS_PREFIX}c:*{RUN}*", count=500))
        if doomed:
            sync.delete(*doomed)
        sync.close()


@pytest.mark.integration
async def test_redis_set_get_and_ttl(backend):
    sync = shared_redis()
    k = key(f"t-{RUN}-ttl")
    assert await backend.get(k) is None
    await backend.set(k, b"\x00binary\nvalue", 1)
    assert await backend.get(k) == b"\x00binary\nvalue"
    assert 0 < sync.pttl(k) <= 1000  # the TTL is Redis's own
    long = key(f"t-{RUN}-ttl", n=1)
    await backend.set(long, b"stays", 60)
    assert 59_000 < sync.pttl(long) <= 60_000
    sync.pexpire(k, 1)  # the second's end, now: Redis itself expires the key
    await eventually(lambda: not sync.exists(k), what="the key to expire")
    assert await backend.get(k) is None
    assert await backend.get(long) == b"stays"
    assert backend.errors == 0 and backend.available
    sync.close()


@pytest.mark.integration
async def test_redis_purge_patterns(backend):
    a, b, odd = f"t-{RUN}-a", f"t-{RUN}-b", f"t-{RUN}-we*ird:[x]?"
    keys = {
        (a, "openai/gpt-4o"): key(a, "openai/gpt-4o"),
        (a, "openai/gpt-4o-mini"): key(a, "openai/gpt-4o-mini"),
        (a, "openrouter/openai/gpt-4o"): key(a, "openrouter/openai/gpt-4o"),
        (b, "openai/gpt-4o"): key(b, "openai/gpt-4o"),
        (b, "ollama/llama3:8b"): key(b, "ollama/llama3:8b"),
        (odd, "openai/gpt-4o"): key(odd, "openai/gpt-4o"),
    }
    sync = shared_redis()

    async def fill() -> None:
        for k in keys.values():
            await backend.set(k, b"v", 60)

    def left() -> set[tuple[str, str]]:
        return {name for name, k in keys.items() if sync.exists(k)}

    await fill()
    # glob characters are literal
    assert await backend.purge(purge_pattern(scope=odd, model=None, prefix=REDIS_PREFIX)) == 1
    assert left() == set(keys) - {(odd, "openai/gpt-4o")}
    assert await backend.purge(purge_pattern(scope=a, model=None, prefix=REDIS_PREFIX)) == 3
    assert left() == {(b, "openai/gpt-4o"), (b, "ollama/llama3:8b")}
    await fill()
    # a bare model, ':' and all
    assert await backend.purge(purge_pattern(scope=b, model="llama3:8b", prefix=REDIS_PREFIX)) == 1
    # a bare model name matches under every provider; a target only itself
    assert await backend.purge(purge_pattern(scope=a, model="openai/gpt-4o", prefix=REDIS_PREFIX)) == 1
    # openrouter/openai/gpt-4o
    assert await backend.purge(purge_pattern(scope=a, model="gpt-4o", prefix=REDIS_PREFIX)) == 1
    assert left() == {(a, "openai/gpt-4o-mini"), (b, "openai/gpt-4o"), (odd, "openai/gpt-4o")}
    sync.close()


@pytest.mark.integration
async def test_response_cache_over_redis(backend):
    settings_ = CacheConfig(backend="redis", url=REDIS_URL, scope="team", key_prefix=REDIS_PREFIX)
    cache = ResponseCache(settings_, backend)
    k = cache.key(team=f"t-{RUN}-rc", target="openai/gpt-4o", endpoint="chat/completions",
                  body={"messages": [{"role": "user", "content": "x"}]})
    body = b'{"choices":[{"message":{"content":"' + b"long " * 1000 + b'"}}]}'
    entry = Entry("openai/gpt-4o", time.time() - 30, {"prompt_tokens": 1, "completion_tokens": 2}, body)
    await cache.store(k, entry, 60)
    raw = shared_redis().get(k)
    assert raw is not None and raw[:1] == b"z" and len(raw) < len(body)  # compact: compressed when large
    assert decode_entry(raw) == entry
    assert await cache.lookup(k, None) == entry
    assert await cache.lookup(k, 60) == entry
    assert await cache.lookup(k, 10) is None  # older than max-age
    shared_redis().set(k, b"not an entry")
    assert await cache.lookup(k, None) is None  # garbage is a miss
    assert cache.state()["backend"] == "redis" and cache.state()["redis_available"] is True


async def test_build_cache_picks_the_backend():  # builds a Redis client, connects to nothing
    assert build_cache(CacheConfig(backend="off")) is None
    memory = build_cache(CacheConfig(backend="memory", max_entries=7))
    assert memory is not None and isinstance(memory.backend, MemoryBackend) and memory.backend.max_entries == 7
    redis_cache = build_cache(CacheConfig(backend="redis", url=REDIS_URL, max_entries=9, timeout_ms=25))
    assert redis_cache is not None and isinstance(redis_cache.backend, RedisBackend)
    assert isinstance(redis_cache.backend.fallback, MemoryBackend) and redis_cache.backend.fallback.max_entries == 9
    await memory.aclose()
    await redis_cache.aclose()


# ---------------------------------------------------------------- a private Redis to kill


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    try:
        yield server
    finally:
        server.kill()


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


TIME_BOX = 0.05  # timeout_ms=50


async def settled(coro):
    """A call against a dead or frozen Redis: it must come back, counted as an error or
    skipped, never waited out (the 5 s wait_for only guards against a hang)."""
    return await asyncio.wait_for(coro, 5)


@pytest.mark.integration
async def test_killed_redis_errors_are_misses_then_breaker_then_recovery(private_redis):
    clock = Clock()
    local = MemoryBackend(100)
    rb = RedisBackend(private_redis.url, timeout_ms=TIME_BOX * 1000, failures=3, cooldown_s=5, fallback=local,
                      clock=clock)
    try:
        await rb.set("sy:c:s:t:1", b"in-redis", 60)
        assert await rb.get("sy:c:s:t:1") == b"in-redis"
        assert private_redis.client().get("sy:c:s:t:1") == b"in-redis"

        private_redis.kill()
        assert port_closed(private_redis.port)
        for n in range(1, 4):  # each error is a miss, answered at once
            value = await settled(rb.get("sy:c:s:t:1"))
            assert value is None
            assert rb.errors == n
        assert not rb.available  # three in a row: Redis is skipped for the cool-down

        # during the cool-down Redis is not even tried: no new errors, the local LRU serves
        await rb.set("sy:c:s:t:2", b"local", 60)
        assert await local.get("sy:c:s:t:2") == b"local"
        value = await settled(rb.get("sy:c:s:t:2"))
        assert value == b"local"  # the fallback answered ...
        assert rb.errors == 3  # ... and Redis was not tried: a try would have failed and counted

        # the cool-down over and Redis still down: one more try, and skipped again at once
        clock.now += 5
        assert rb.available
        assert await rb.get("sy:c:s:t:1") is None
        assert rb.errors == 4 and not rb.available

        # Redis back (empty: it kept nothing): after the cool-down it is used again
        private_redis.start()
        clock.now += 5
        await rb.set("sy:c:s:t:3", b"back", 60)
        assert rb.available and rb.errors == 4
        assert private_redis.client().get("sy:c:s:t:3") == b"back"
        assert await rb.get("sy:c:s:t:3") == b"back"
        assert await rb.get("sy:c:s:t:2") is None  # Redis answers now, not the local stand-in
        cache = ResponseCache(CacheConfig(backend="redis", url=private_redis.url), rb)
        assert cache.state()["redis_available"] is True and cache.state()["redis_errors"] == 4
    finally:
        await rb.aclose()


@pytest.mark.integration
async def test_frozen_redis_is_cut_off_by_the_time_box(private_redis):
    """A Redis that accepts connections but never answers (SIGSTOP) costs each lookup the
    time box at most, then nothing at all while the breaker is open."""
    clock = Clock()
    rb = RedisBackend(private_redis.url, timeout_ms=TIME_BOX * 1000, failures=2, cooldown_s=5,
                      fallback=MemoryBackend(100), clock=clock)
    sync = private_redis.client()
    try:
        await rb.set("sy:c:s:t:a", b"A", 60)
        await rb.set("sy:c:s:t:b", b"B", 60)
        assert await rb.get("sy:c:s:t:a") == b"A"

        private_redis.freeze()
        for n in (1, 2):
            value = await settled(rb.get("sy:c:s:t:a"))
            assert value is None  # the fallback's answer (a miss) ...
            assert rb.errors == n  # ... once the time box cut the lookup off, counted as a failure
        assert not rb.available
        value = await settled(rb.get("sy:c:s:t:a"))
        assert value is None and rb.errors == 2  # skipped: not even tried
        await settled(rb.set("sy:c:s:t:c", b"C", 60))
        assert await rb.fallback.get("sy:c:s:t:c") == b"C" and rb.errors == 2  # stores go to the local LRU meanwhile

        private_redis.thaw()
        clock.now += 5
        # the commands cut off while it was frozen must not leave stale replies behind
        for _ in range(3):
            assert await rb.get("sy:c:s:t:b") == b"B"
            assert await rb.get("sy:c:s:t:a") == b"A"
            assert await rb.get("sy:c:s:t:missing") is None
        assert rb.available and rb.errors == 2
        await rb.set("sy:c:s:t:d", b"D", 60)
        assert sync.get("sy:c:s:t:d") == b"D"
    finally:
        if private_redis.proc is not None:
            private_redis.thaw()
        sync.close()
        await rb.aclose()


@pytest.mark.integration
async def test_many_concurrent_lookups_against_a_frozen_redis_all_return_in_time(private_redis):
    rb = RedisBackend(private_redis.url, timeout_ms=TIME_BOX * 1000, failures=1000, cooldown_s=5,
                      fallback=MemoryBackend(100))
    try:
        await rb.set("sy:c:s:t:x", b"X", 60)
        private_redis.freeze()
        # each is cut off by its own time box: one after another, the 50 would take 2.5 s or more,
        # so the generous 2 s guard still tells "concurrently" from "in turn"
        results = await asyncio.wait_for(asyncio.gather(*(rb.get(f"sy:c:s:t:{i}") for i in range(50))), 2)
        assert results == [None] * 50
        assert rb.errors == 50
        private_redis.thaw()
        assert await rb.get("sy:c:s:t:x") == b"X"
    finally:
        if private_redis.proc is not None:
            private_redis.thaw()
        await rb.aclose()


@pytest.mark.integration
async def test_purge_against_a_dead_redis_raises_instead_of_pretending(private_redis):
    rb = RedisBackend(private_redis.url, timeout_ms=TIME_BOX * 1000, failures=3, cooldown_s=5,
                      fallback=MemoryBackend(100))
    try:
        await rb.set("sy:c:s:t:1", b"v", 60)
        await rb.set("sy:c:o:t:1", b"v", 60)
        assert await rb.purge(purge_pattern(scope="s", model=None)) == 1
        assert await rb.purge(purge_pattern(scope=None, model=None)) == 1  # everything, on a server of our own
        private_redis.kill()
        with pytest.raises((redis.RedisError, OSError)):
            await rb.purge(purge_pattern(scope=None, model=None))
    finally:
        await rb.aclose()
