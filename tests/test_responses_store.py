"""The store behind previous_response_id for translated Responses answers: per team,
bounded ids, expiry, the conversation it keeps, and the real Redis it shares across
replicas (the tests' own database and key prefix)."""

from __future__ import annotations

import uuid

import pytest
import redis

from proxy.cache.backends import MemoryBackend
from proxy.cache.redis_backend import RedisBackend
from proxy.config import Config
from proxy.responses_store import ResponseStore, Stored, build_store, conversation, input_items, with_history
from support import REDIS_PREFIX, REDIS_URL

RESPONSE = {"id": "resp_1", "object": "response", "output": [
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]}]}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def memory_store(clock: Clock | None = None, ttl_s: int = 60) -> ResponseStore:
    return ResponseStore(MemoryBackend(100, clock or Clock()), "t:", ttl_s)


async def test_a_saved_response_is_loaded_by_its_team_only():
    store = memory_store()
    await store.save("alpha", RESPONSE, ["in", *RESPONSE["output"]])
    stored = await store.load("alpha", "resp_1")
    assert stored is not None and stored.response == RESPONSE and stored.input_items == ["in"]
    assert await store.load("beta", "resp_1") is None
    assert not await store.delete("beta", "resp_1")
    assert await store.delete("alpha", "resp_1")
    assert await store.load("alpha", "resp_1") is None


@pytest.mark.parametrize("team_a, team_b, response_id", [
    ("a:b", "a", "b:resp_1"),  # no id reaches into another team's keys
    ("a", "a:b", "resp_1"),
])
async def test_team_and_id_cannot_be_confused(team_a, team_b, response_id):
    store = memory_store()
    await store.save(team_a, RESPONSE, [])
    assert await store.load(team_b, response_id) is None


@pytest.mark.parametrize("response_id", ["", "resp*", "resp:1", "x" * 129, "resp 1", "rés"])
async def test_ids_outside_the_safe_alphabet_are_never_looked_up(response_id):
    store = memory_store()
    assert await store.load("a", response_id) is None
    assert not await store.delete("a", response_id)
    await store.save("a", {**RESPONSE, "id": response_id}, [])
    assert len(store.backend) == 0  # type: ignore[arg-type]


async def test_entries_expire_after_ttl():
    clock = Clock()
    store = memory_store(clock, ttl_s=10)
    await store.save("a", RESPONSE, [])
    clock.now = 9.9
    assert await store.load("a", "resp_1") is not None
    clock.now = 10.1
    assert await store.load("a", "resp_1") is None


async def test_a_corrupt_entry_is_as_good_as_absent():
    store = memory_store()
    await store.backend.set(store._key("a", "resp_1"), b"{not json", 60)
    assert await store.load("a", "resp_1") is None


@pytest.mark.parametrize("value, expected", [
    ("hi", [{"type": "message", "role": "user", "content": "hi"}]),
    ([{"role": "user", "content": "x"}], [{"role": "user", "content": "x"}]),
    (None, []),
    (7, []),
])
def test_input_items(value, expected):
    assert input_items(value) == expected


def test_history_goes_before_the_input_and_the_output_after():
    body = {"input": "next", "previous_response_id": "resp_1"}
    with_history(body, Stored(RESPONSE, ["first", *RESPONSE["output"]]))
    assert body["input"] == ["first", *RESPONSE["output"], {"type": "message", "role": "user", "content": "next"}]
    answer = {"id": "resp_2", "output": ["out"]}
    assert conversation(body, answer) == [*body["input"], "out"]


@pytest.mark.parametrize("settings, cache, kind", [
    ({}, {}, "memory"),
    ({}, {"backend": "memory"}, "memory"),
    ({}, {"backend": "redis", "url": REDIS_URL}, "redis"),
    ({"store": "memory"}, {"backend": "redis", "url": REDIS_URL}, "memory"),
    ({"store": "redis", "url": REDIS_URL}, {}, "redis"),
    ({"store": "off"}, {"backend": "redis", "url": REDIS_URL}, None),
])
async def test_where_the_store_lives(settings, cache, kind):
    store = build_store(Config.model_validate({"responses": settings, "cache": cache}))
    if kind is None:
        assert store is None
        return
    assert store is not None and store.backend.name == kind
    await store.aclose()


async def test_redis_store_is_shared_between_replicas_and_expires():
    prefix = f"{REDIS_PREFIX}{uuid.uuid4().hex[:8]}:"

    def replica() -> ResponseStore:
        backend = RedisBackend(REDIS_URL, timeout_ms=500, failures=3, cooldown_s=1, fallback=MemoryBackend(10),
                               user="stored responses")
        return ResponseStore(backend, prefix, 120)

    one, two = replica(), replica()
    try:
        await one.save("alpha", RESPONSE, ["in"])
        stored = await two.load("alpha", "resp_1")
        assert stored is not None and stored.items == ["in"]
        client = redis.Redis.from_url(REDIS_URL)
        (key,) = client.keys(f"{prefix}r:*")
        assert 0 < client.ttl(key) <= 120
        client.close()
        assert await two.delete("alpha", "resp_1")
        assert await one.load("alpha", "resp_1") is None
    finally:
        await one.aclose()
        await two.aclose()
