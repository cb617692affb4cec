"""A cache that listens to feedback: the tally and threshold (table-driven), entry versions
and tombstones, the tallies in both backends (the in-process LRU and the real Redis, its
Lua scripts), and the whole app: a downvoted answer is invalidated at once and fetched
again, on the memory and the Redis backend, and across two replicas sharing one Redis and
one PostgreSQL ledger (feedback to one replica invalidates what the other served)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from proxy.cache import (
    Entry,
    ResponseCache,
    Tally,
    Tombstone,
    decode_entry,
    decode_tombstone,
    encode_entry,
    encode_tombstone,
    entry_ref,
    feedback_verdict,
    new_entry_id,
    parse_ref,
)
from proxy.cache.backends import Backend, Hits, MemoryBackend
from proxy.cache.keys import cache_key, key_parts
from proxy.cache.redis_backend import RedisBackend
from proxy.config import CacheConfig, ConfigError, load_text
from proxy.tasks import drain
from support import (
    REDIS_PREFIX,
    REDIS_URL,
    AppClient,
    FakeUpstream,
    PgDatabase,
    chat_body,
    chunk_events,
    completion,
    dead_port,
)

KEY_A, KEY_B, ADMIN = "sk-feedback-a", "sk-feedback-b", "admin-feedback"
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
PRICE = (10 * 1.0 + 5 * 2.0) / 1e6  # USAGE at up/priced's price
ANSWER, BACKUP = "the cached answer", "the backup answer"


def require_redis() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:  # `make test` starts Redis: missing it is a failure, never a skip
        pytest.fail(f"Redis at {REDIS_URL} is required: {exc}")


def fresh_prefix() -> str:
    """A key prefix of the test's own: the hits index and the invalidations list are per prefix."""
    return f"{REDIS_PREFIX}fb{uuid.uuid4().hex[:8]}:"


# ---------------------------------------------------------------- the threshold (pure)


@pytest.mark.parametrize(
    "scores, min_feedback, min_votes, reason",
    [
        ([0.0, 0.0], 0.5, 3, None),  # too few votes to judge
        ([0.0, 0.0, 0.0], 0.5, 3, "feedback: mean score 0.00 over 3 votes (min_feedback 0.5)"),
        ([1.0, 0.0, 0.0], 0.5, 3, "feedback: mean score 0.33 over 3 votes (min_feedback 0.5)"),
        ([0.5, 0.5, 0.5], 0.5, 3, None),  # at the threshold is not below it
        ([0.1, 0.7, 0.7], 0.5, 3, None),  # a float sum just under 1.5 is still a mean of 0.5
        ([0.0, 0.2, 0.1, 0.9], 0.5, 3, "feedback: mean score 0.30 over 4 votes (min_feedback 0.5)"),
        ([1.0, 1.0, 0.9], 0.5, 3, None),  # liked: kept
        ([0.0], 0.5, 1, "feedback: mean score 0.00 over 1 vote (min_feedback 0.5)"),
        ([0.0] * 10, None, 1, None),  # min_feedback null: feedback never invalidates
        ([0.0, 0.0, 0.0], 0.0, 1, None),  # 0: nothing is below it
        ([1.0, 1.0, 0.97], 1.0, 3, "feedback: mean score 0.99 over 3 votes (min_feedback 1)"),
        ([], 0.5, 1, None),  # no votes at all
    ],
)
def test_feedback_verdict(scores, min_feedback, min_votes, reason):
    tally = Tally(hits=7, saved_usd=0.1, votes=len(scores), score_sum=sum(scores))
    assert feedback_verdict(tally, min_feedback, min_votes) == reason


@pytest.mark.parametrize("votes, total, mean", [(0, 0.0, None), (3, 1.5, 0.5), (3, 1.4999999999999998, 0.5),
                                                 (4, 1.0, 0.25)])
def test_mean_score(votes, total, mean):
    assert Tally(votes=votes, score_sum=total).mean_score == mean


@pytest.mark.parametrize(
    "cache, problem",
    [
        ("{min_feedback: 1.5}", ("cache.min_feedback", "less than or equal to 1")),
        ("{min_feedback: -0.1}", ("cache.min_feedback", "greater than or equal to 0")),
        ("{min_feedback: lots}", ("cache.min_feedback", "valid number")),
        ("{min_votes: 0}", ("cache.min_votes", "greater than or equal to 1")),
        ("{min_votes: 2.5}", ("cache.min_votes", "valid integer")),
    ],
)
def test_config_refuses_bad_thresholds(cache, problem):
    with pytest.raises(ConfigError) as caught:
        load_text(f"cache: {cache}\nproviders: {{mock: {{type: mock}}}}\n", env={})
    (path, reason), = caught.value.problems
    assert path == problem[0] and problem[1] in reason, caught.value.problems


def test_config_thresholds_default_on_and_may_be_turned_off():
    providers = "providers: {mock: {type: mock}}\n"
    default = load_text("cache: {backend: memory}\n" + providers, env={}).config.cache
    assert (default.min_feedback, default.min_votes) == (0.5, 1)
    off = load_text("cache: {backend: memory, min_feedback: null, min_votes: 1}\n" + providers, env={}).config.cache
    assert (off.min_feedback, off.min_votes) == (None, 1)


# ---------------------------------------------------------------- versions, refs, tombstones


def test_entry_versions_round_trip_and_old_entries_still_decode():
    key = cache_key(scope="team=a", target="up/m:1", endpoint="chat/completions", body={"messages": []})
    entry = Entry("up/m:1", 1.5, None, b"{}", new_entry_id("req_abc"))
    assert entry.id.startswith("req_abc.") and new_entry_id("req_abc") != entry.id
    assert decode_entry(encode_entry(entry)) == entry
    big = Entry("up/m:1", 1.5, None, b"x" * 5000, "req_1.00ff00")
    assert encode_entry(big)[:1] == b"z" and decode_entry(encode_entry(big)) == big
    old = b"j" + orjson.dumps({"v": 1, "target": "up/m:1", "created": 1.5, "usage": None}) + b"\n{}"
    assert decode_entry(old) == Entry("up/m:1", 1.5, None, b"{}") and entry_ref(key, Entry("t", 1, None, b"")) is None
    ref = entry_ref(key, entry)
    assert ref is not None and parse_ref(ref) == (entry.id, key)
    assert key_parts(key) == ("team=a", "up/m:1")


@pytest.mark.parametrize("ref", ["", "no-at-sign", "@sy:c:x", "id@"])
def test_malformed_refs(ref):
    assert parse_ref(ref) is None


def test_tombstones_are_not_entries():
    raw = encode_tombstone(Tombstone("req_1.abcdef", "feedback: mean score 0.10 over 3 votes", 99.5))
    assert decode_entry(raw) is None
    assert decode_tombstone(raw) == Tombstone("req_1.abcdef", "feedback: mean score 0.10 over 3 votes", 99.5)
    assert decode_tombstone(b"x{not json") is None and decode_tombstone(b"j{}") is None


# ---------------------------------------------------------------- tallies in both backends


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def backend(request) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend(100)
        return
    require_redis()
    made = RedisBackend(REDIS_URL, timeout_ms=500, failures=3, cooldown_s=1, fallback=MemoryBackend(100),
                        prefix=fresh_prefix())
    try:
        yield made
    finally:
        await made.aclose()


def entry_key(n: int = 0) -> str:
    return cache_key(scope=f"team=t{uuid.uuid4().hex[:6]}", target="up/priced", endpoint="chat/completions",
                     body={"messages": [n]}, prefix=REDIS_PREFIX)


async def test_tallies_belong_to_one_entry_version(backend):
    key = entry_key()
    await backend.put(key, b"jv1", 60, "e1")
    await backend.count_hits([Hits(key, "e1", 1, 0.5), Hits(key, "e0", 1, 1.0)])  # e0: no longer stored, nothing
    await backend.count_hits([Hits(key, "e1", 1, 0.25)])
    assert await backend.vote(key, "e1", "r1", 0.2) == Tally(2, 0.75, 1, 0.2)
    again = await backend.vote(key, "e1", "r1", 0.6)  # the same request voting again replaces its score
    assert again is not None and again.votes == 1 and again.score_sum == pytest.approx(0.6)
    assert await backend.vote(key, "e0", "r2", 0.0) is None
    assert await backend.vote(entry_key(1), "e1", "r2", 0.0) is None  # nothing stored there

    assert await backend.invalidate(key, "e0", b"xother", "why", b"{}") is False  # another version
    assert await backend.invalidate(key, "e1", b"xgone", "why", b'{"n": 1}') is True
    assert await backend.get(key) == b"xgone"
    assert await backend.invalidate(key, "e1", b"xagain", "why", b'{"n": 2}') is False  # once
    await backend.count_hits([Hits(key, "e1", 1, 1.0)])  # hits still gathered count nothing now
    assert await backend.vote(key, "e1", "r3", 0.0) == Tally(2, 0.75, 2, 0.6, "why")
    assert await backend.invalidations(10) == [b'{"n": 1}']

    await backend.put(key, b"jv2", 60, "e2")  # stored again: a new version with tallies of its own
    assert await backend.vote(key, "e2", "r1", 1.0) == Tally(0, 0.0, 1, 1.0)
    assert await backend.vote(key, "e1", "r4", 0.0) is None


async def test_top_lists_live_entries_by_hits(backend):
    keys = [entry_key(n) for n in range(4)]
    for n, key in enumerate(keys):
        await backend.put(key, b"j", 60, f"e{n}")
    await backend.count_hits([Hits(key, f"e{n}", n, 0.001 * n) for n, key in enumerate(keys) if n])  # e0: no hits
    await backend.invalidate(keys[3], "e3", b"x", "why", b"{}")  # the most hit, but invalidated
    top = await backend.top(10)
    assert [(t.key, t.entry_id, t.tally.hits) for t in top] == [(keys[2], "e2", 2), (keys[1], "e1", 1)]
    assert top[0].tally.saved_usd == pytest.approx(0.002)
    assert [t.key for t in await backend.top(1)] == [keys[2]]


async def test_invalidation_keeps_the_entrys_remaining_ttl_in_redis():
    require_redis()
    made = RedisBackend(REDIS_URL, timeout_ms=500, failures=3, cooldown_s=1, fallback=MemoryBackend(10),
                        prefix=fresh_prefix())
    key = entry_key()
    try:
        await made.put(key, b"jv1", 30, "e1")
        assert await made.vote(key, "e1", "r1", 0.0) is not None
        assert await made.invalidate(key, "e1", b"xtomb", "why", b"{}")
        with redis.Redis.from_url(REDIS_URL) as client:
            assert client.get(key) == b"xtomb" and 25 < client.ttl(key) <= 30
            assert 25 < client.ttl(key + ":s") <= 30  # the tallies live exactly as long
    finally:
        await made.aclose()


def script_calls() -> int:
    """EVALSHA calls Redis has run so far (the backends' scripts run that way)."""
    with redis.Redis.from_url(REDIS_URL) as client:
        return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.mark.integration
async def test_hits_are_gathered_off_the_request_path_and_counted_in_one_call():
    # Redis counts the calls: the compiled cache takes no stand-in backend from tests
    require_redis()
    backend = RedisBackend(REDIS_URL, timeout_ms=2000, failures=3, cooldown_s=1, fallback=MemoryBackend(10),
                           prefix=fresh_prefix())
    cache = ResponseCache(CacheConfig(backend="redis"), backend)
    try:
        key, other_key = entry_key(1), entry_key(2)
        entry, other = Entry("up/priced", time.time(), None, b"{}", "e1"), Entry("up/priced", time.time(), None, b"{}", "e9")
        await cache.store(key, entry, 60)
        await cache.store(other_key, other, 60)
        await backend.count_hits([Hits(entry_key(3), "e0", 1, 0.0)])  # Redis has the script (nothing stored there)
        before = script_calls()
        for _ in range(1000):
            cache.count_hit(key, entry, 0.001)
        cache.count_hit(other_key, other, None)
        assert script_calls() == before and await backend.top(2) == []  # a hit only adds to the batch
        await drain()
        assert script_calls() == before + 1  # one round trip for the whole batch
        most, least = await backend.top(2)
        assert (most.key, most.entry_id, most.tally.hits) == (key, "e1", 1000)
        assert most.tally.saved_usd == pytest.approx(1.0)
        assert (least.key, least.entry_id, least.tally.hits) == (other_key, "e9", 1)
    finally:
        await cache.aclose()


async def test_with_redis_away_the_fallback_keeps_tallies_and_tombstones():
    away = RedisBackend(f"redis://127.0.0.1:{dead_port()}/0", timeout_ms=50, failures=1, cooldown_s=60,
                        fallback=MemoryBackend(10))
    try:
        await away.put("k", b"jv1", 60, "e1")  # Redis refuses: the fallback stores it, and Redis is skipped
        assert not away.available and await away.get("k") == b"jv1"
        await away.count_hits([Hits("k", "e1", 2, 0.5)])
        assert await away.vote("k", "e1", "r1", 0.0) == Tally(2, 0.5, 1, 0.0)
        assert await away.invalidate("k", "e1", b"xtomb", "why", b"{}")
        assert await away.get("k") == b"xtomb" and await away.invalidations(5) == [b"{}"]
    finally:
        await away.aclose()


async def test_memory_tombstone_lasts_until_the_entry_would_have_expired():
    now = [0.0]
    lru = MemoryBackend(10, clock=lambda: now[0])
    await lru.put("k", b"jv1", 30, "e1")
    now[0] = 10
    assert await lru.invalidate("k", "e1", b"xtomb", "why", b"{}")
    now[0] = 29
    assert await lru.get("k") == b"xtomb"
    now[0] = 30
    assert await lru.get("k") is None and await lru.vote("k", "e1", "r", 1.0) is None


# ---------------------------------------------------------------- the whole app


def config(upstream: FakeUpstream, cache: str, ledger: str = "{path: ledger.db, flush_interval_s: 0.05}") -> str:
    if "min_votes" not in cache:  # these tests vote three times: one vote alone must not decide
        cache = cache[:-1] + ", min_votes: 3}"
    root = upstream.base_url.removesuffix("/v1")
    return f"""
server: {{admin_keys: ["{ADMIN}"]}}
ledger: {ledger}
resilience: {{retries: 0, circuit: {{failures: 1000}}}}
cache: {cache}
providers:
  up: {{type: openai, base_url: "{upstream.base_url}", api_key: sk-up}}
  alt: {{type: openai, base_url: "{root}/alt/v1", api_key: sk-alt}}
pricing:
  up/priced: {{input: 1.0, output: 2.0}}
  alt/backup: {{input: 1.0, output: 2.0}}
teams:
  a: {{keys: ["{KEY_A}"]}}
  b: {{keys: ["{KEY_B}"]}}
routes:
  - {{name: main, match: {{model: main}}, to: up/priced, fallbacks: [alt/backup]}}
"""


def redis_cache(prefix: str) -> str:
    return f'{{backend: redis, url: "{REDIS_URL}", key_prefix: "{prefix}", timeout_ms: 500}}'


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        up.post("/chat/completions").respond(json=completion(ANSWER, usage=USAGE))
        up.at("POST", "/alt/v1/chat/completions").respond(json=completion(BACKUP, usage=USAGE))
        yield up


def upstream_calls(upstream: FakeUpstream) -> int:
    return upstream.post("/chat/completions").call_count


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def proxy(request, upstream, app_client) -> AppClient:
    if request.param == "redis":
        require_redis()
        return await app_client(config(upstream, redis_cache(fresh_prefix())))
    return await app_client(config(upstream, "{backend: memory}"))


async def test_by_default_one_bad_vote_invalidates(upstream, app_client):
    proxy = await app_client(config(upstream, "{backend: memory, min_votes: 1}").replace(", min_votes: 1", ""))
    assert (await proxy.get("/admin/cache/entries", headers=ADMIN_AUTH)).json()["min_votes"] == 1
    served = await proxy.post("/v1/chat/completions", headers=auth(), json=chat_body("main", "what is up?"))
    await drain()
    hit = await proxy.post("/v1/chat/completions", headers=auth(), json=chat_body("main", "what is up?"))
    assert hit.headers["x-switchyard-cache"] == "hit" and upstream_calls(upstream) == 1
    voted = await proxy.post("/v1/feedback", headers=auth(), json={"request_id": hit.headers["x-request-id"], "score": 0})
    assert voted.status_code == 201 and voted.json()["cache"]["invalidated"]
    again = await proxy.post("/v1/chat/completions", headers=auth(), json=chat_body("main", "what is up?"))
    assert again.headers["x-switchyard-cache"] == "miss" and upstream_calls(upstream) == 2
    assert served.json() == again.json()


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


async def ask(client: httpx.AsyncClient, text: str = "what is up?", *, stream: bool = False,
              **headers: str) -> httpx.Response:
    response = await client.post("/v1/chat/completions", json=chat_body("main", text, stream=stream),
                                 headers={**auth(), **headers})
    assert response.status_code == 200, response.text
    await drain()  # stores and hit counts run in the background, after the answer
    return response


async def rate(client: httpx.AsyncClient, answered: httpx.Response, score: float) -> dict:
    response = await client.post("/v1/feedback", headers=auth(),
                                 json={"request_id": answered.headers["x-request-id"], "score": score})
    assert response.status_code == 201, response.text
    return response.json()


def cache_of(response: httpx.Response) -> str:
    return response.headers["x-switchyard-cache"]


async def test_a_downvoted_answer_is_invalidated_and_fetched_again(proxy, upstream):
    stored = await ask(proxy)
    hits = [await ask(proxy), await ask(proxy)]
    assert [cache_of(r) for r in (stored, *hits)] == ["miss", "hit", "hit"] and upstream_calls(upstream) == 1

    first = await rate(proxy, stored, 0.0)  # on the request whose answer was stored
    assert first["cache"]["votes"] == 1 and first["cache"]["invalidated"] is None
    assert first["cache"]["entry"].startswith(stored.headers["x-request-id"] + ".")
    assert (await rate(proxy, hits[0], 0.2))["cache"]["votes"] == 2
    assert cache_of(await ask(proxy)) == "hit"  # two votes: fewer than min_votes (3), still served
    third = await rate(proxy, hits[1], 0.1)
    reason = "feedback: mean score 0.10 over 3 votes (min_feedback 0.5)"
    assert third["cache"] == {"entry": first["cache"]["entry"], "votes": 3, "mean_score": 0.1, "invalidated": reason}

    refetched = await ask(proxy)  # at once: the next identical request goes upstream
    assert cache_of(refetched) == "miss" and upstream_calls(upstream) == 2
    after = await ask(proxy)  # the answer fetched again is a new entry, served from now on
    assert cache_of(after) == "hit" and upstream_calls(upstream) == 2
    late = await rate(proxy, hits[0], 0.0)  # a late vote for the old version touches nothing
    assert "cache" not in late
    assert (await rate(proxy, after, 1.0))["cache"]["votes"] == 1  # the new version's tallies start afresh

    usage = (await proxy.get("/admin/usage", headers=ADMIN_AUTH)).json()["data"][0]
    assert usage["requests"] == 6 and usage["cache_hits"] == 4 and usage["invalidated_misses"] == 1
    assert usage["savings_lost_usd"] == pytest.approx(PRICE) and usage["cache_savings_usd"] == pytest.approx(4 * PRICE)
    own = (await proxy.get("/v1/usage", headers=auth())).json()["savings"]
    assert own["cache_lost_usd"] == pytest.approx(PRICE)

    entries = (await proxy.get("/admin/cache/entries", headers=ADMIN_AUTH)).json()
    assert entries["object"] == "cache_entries" and entries["min_feedback"] == 0.5 and entries["min_votes"] == 3
    (gone,) = entries["invalidated"]
    assert gone["entry"] == first["cache"]["entry"] and gone["reason"] == reason
    assert gone["team"] == "a" and gone["target"] == "up/priced" and gone["invalidated_at"].endswith("Z")
    assert gone["hits"] == 3 and gone["saved_usd"] == pytest.approx(3 * PRICE)
    assert gone["feedback"] == {"votes": 3, "mean_score": 0.1}
    (live,) = entries["top"]
    assert live["entry"].startswith(refetched.headers["x-request-id"] + ".")
    assert live["hits"] == 1 and live["saved_usd"] == pytest.approx(PRICE)
    assert live["feedback"] == {"votes": 1, "mean_score": 1.0}

    metrics = (await proxy.get("/metrics")).text
    assert 'llm_cache_invalidations_total{reason="feedback"} 1.0' in metrics
    assert 'llm_cache_requests_total{result="invalidated"}' not in metrics  # counted as the miss it was
    assert 'llm_cache_invalidations_total{reason="purge"} 0.0' in metrics
    purged = (await proxy.delete("/admin/cache", headers=ADMIN_AUTH)).json()["deleted"]
    assert purged >= 1
    assert f'llm_cache_invalidations_total{{reason="purge"}} {float(purged)}' in (await proxy.get("/metrics")).text


async def test_liked_answers_stay(proxy, upstream):
    answered = [await ask(proxy) for _ in range(4)]
    for response, score in zip(answered, (1.0, 0.9, 0.2, 0.8), strict=True):
        assert (await rate(proxy, response, score))["cache"]["invalidated"] is None
    assert cache_of(await ask(proxy)) == "hit" and upstream_calls(upstream) == 1
    assert (await proxy.get("/admin/cache/entries", headers=ADMIN_AUTH)).json()["invalidated"] == []


async def test_feedback_on_a_fallbacks_answer_leaves_the_primarys_entry(proxy, upstream):
    stored = await ask(proxy)
    upstream.post("/chat/completions").respond(500, json={"error": {"message": "down"}})
    # no-cache: skip the lookup (the fallback then answers), a store is still allowed
    backups = [await ask(proxy, **{"cache-control": "no-cache"}) for _ in range(3)]
    assert all(r.headers["x-switchyard-provider"] == "alt" for r in backups)
    for response in backups:  # never stored, so it is rated in the ledger only
        assert "cache" not in await rate(proxy, response, 0.0)
    upstream.post("/chat/completions").respond(json=completion(ANSWER, usage=USAGE))
    hit = await ask(proxy)
    assert cache_of(hit) == "hit" and hit.json()["choices"][0]["message"]["content"] == ANSWER
    assert (await rate(proxy, stored, 0.0))["cache"]["votes"] == 1  # the primary's entry, untouched


async def test_a_streamed_answer_is_rated_on_the_entry_it_was_stored_as(proxy, upstream):
    upstream.post("/chat/completions").stream(chunk_events(["str", "eamed"], usage=USAGE))
    streamed = await ask(proxy, stream=True)
    assert cache_of(streamed) == "miss"
    hits = [await ask(proxy), await ask(proxy, stream=True)]
    assert [cache_of(r) for r in hits] == ["hit", "hit"]
    for response in (streamed, *hits):
        judged = (await rate(proxy, response, 0.0))["cache"]
    assert judged["invalidated"] is not None
    assert cache_of(await ask(proxy)) == "miss" and upstream_calls(upstream) == 2


async def test_entries_need_the_admin_key_and_bound_their_lists(proxy):
    for n in range(3):
        await ask(proxy, f"question {n}")
        await ask(proxy, f"question {n}")
    assert (await proxy.get("/admin/cache/entries", headers=auth())).status_code == 401
    listed = (await proxy.get("/admin/cache/entries?limit=2", headers=ADMIN_AUTH)).json()
    assert len(listed["top"]) == 2 and all(e["hits"] == 1 for e in listed["top"])
    assert (await proxy.get("/admin/cache/entries?limit=0", headers=ADMIN_AUTH)).status_code == 400


@pytest.fixture
async def pg_ledger() -> AsyncIterator[str]:
    database = await PgDatabase().create()
    try:
        yield f'{{url: "{database.url}", flush_interval_s: 0.05}}'
    finally:
        await database.drop()


@pytest.mark.integration
async def test_feedback_to_one_replica_invalidates_for_every_replica(pg_ledger, upstream, app_client,
                                                                     tmp_path: Path):
    require_redis()
    text = config(upstream, redis_cache(fresh_prefix()), ledger=pg_ledger)
    a = await app_client(text, path=tmp_path / "a" / "proxy.yaml")
    b = await app_client(text, path=tmp_path / "b" / "proxy.yaml")
    stored, hit_on_b, hit_on_a = await ask(a), await ask(b), await ask(a)
    assert [cache_of(r) for r in (stored, hit_on_b, hit_on_a)] == ["miss", "hit", "hit"]

    # every vote goes to replica B, two of them on requests replica A served
    verdicts = [(await rate(b, response, 0.0))["cache"] for response in (stored, hit_on_b, hit_on_a)]
    assert [v["votes"] for v in verdicts] == [1, 2, 3] and verdicts[-1]["invalidated"] is not None

    assert cache_of(await ask(a)) == "miss" and upstream_calls(upstream) == 2  # A: invalidated by B's vote
    assert cache_of(await ask(b)) == "hit" and upstream_calls(upstream) == 2  # B: A's re-fetched answer
    (gone,) = (await a.get("/admin/cache/entries", headers=ADMIN_AUTH)).json()["invalidated"]
    assert gone["entry"] == verdicts[0]["entry"] and gone["hits"] == 2

    await a.get("/v1/usage", headers=auth())  # a report writes this replica's queued rows first
    usage = (await b.get("/admin/usage", headers=ADMIN_AUTH)).json()["data"][0]
    assert usage["invalidated_misses"] == 1 and usage["savings_lost_usd"] == pytest.approx(PRICE)
    assert 'llm_cache_invalidations_total{reason="feedback"} 1.0' in (await b.get("/metrics")).text
