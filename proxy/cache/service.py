"""The response cache's front (`ResponseCache`) and its stored entries; the package's
`__init__` re-exports them (a package `__init__` cannot be compiled with mypyc)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from proxy.cache.backends import Backend, Hits, MemoryBackend, Tallied, Tally
from proxy.cache.keys import cache_key, key_parts, purge_pattern
from proxy.config import CacheConfig
from proxy.redis_guard import RedisGuards
from proxy.tasks import spawn

log = logging.getLogger("switchyard.cache")

COMPRESS_OVER: Final = 2048
HITS_EVERY_S: Final = 0.1  # hits are gathered in-process and counted in one backend call this often
DECODED_KEEP = 256  # decoded entries kept for a backend that keeps objects (values it holds anyway)
MAX_PENDING_HITS: Final = 10_000  # distinct entries gathered at most; hits on others wait for the next batch
_PLAIN: Final = b"j"
_ZLIB: Final = b"z"
_TOMBSTONE: Final = b"x"


@dataclass(frozen=True, slots=True)
class Entry:
    target: str
    created: float  # unix time
    usage: dict[str, Any] | None
    body: bytes  # the answer as the upstream (or the assembled stream) gave it
    id: str = ""  # of this stored version; "" for entries stored before versions had ids

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.created)


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What takes an invalidated entry's place until it would have expired."""

    id: str  # the version invalidated
    reason: str
    at: float


def new_entry_id(request_id: str) -> str:
    # the suffix keeps versions apart when a client sends the same x-request-id twice
    return f"{request_id}.{os.urandom(3).hex()}"


def entry_ref(key: str, entry: Entry) -> str | None:
    """How the ledger names an entry version; None for an entry without an id."""
    return f"{entry.id}@{key}" if entry.id else None


def parse_ref(ref: str) -> tuple[str, str] | None:
    """(entry id, key) of an `entry_ref`; ids never hold '@' (request ids cannot)."""
    entry_id, at, key = ref.partition("@")
    return (entry_id, key) if entry_id and at and key else None


def encode_entry(entry: Entry) -> bytes:
    meta = {"v": 1, "target": entry.target, "created": entry.created, "usage": entry.usage}
    if entry.id:
        meta["id"] = entry.id
    header = orjson.dumps(meta)
    payload = header + b"\n" + entry.body
    if len(payload) > COMPRESS_OVER:
        return _ZLIB + zlib.compress(payload, 1)
    return _PLAIN + payload


def decode_entry(value: bytes) -> Entry | None:
    """None for anything that is not a well-formed entry (it is then treated as a miss)."""
    try:
        kind, payload = value[:1], value[1:]
        if kind == _ZLIB:
            payload = zlib.decompress(payload)
        elif kind != _PLAIN:
            return None
        header, _, body = payload.partition(b"\n")
        meta = orjson.loads(header)
        return Entry(meta["target"], float(meta["created"]), meta.get("usage"), body, str(meta.get("id") or ""))
    except (zlib.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def encode_tombstone(tombstone: Tombstone) -> bytes:
    return _TOMBSTONE + orjson.dumps({"id": tombstone.id, "reason": tombstone.reason, "at": tombstone.at})


def decode_tombstone(value: bytes) -> Tombstone | None:
    if value[:1] != _TOMBSTONE:
        return None
    try:
        meta = orjson.loads(value[1:])
        return Tombstone(str(meta["id"]), str(meta["reason"]), float(meta["at"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def feedback_verdict(tally: Tally, min_feedback: float | None, min_votes: int) -> str | None:
    """Why an entry with this tally must go, or None while it may stay: no threshold set,
    fewer than `min_votes` votes, or a mean score at or above `min_feedback`."""
    mean = tally.mean_score
    if min_feedback is None or mean is None or tally.votes < min_votes or mean >= min_feedback:
        return None
    votes = f"{tally.votes} vote" + ("s" if tally.votes != 1 else "")
    return f"feedback: mean score {mean:.2f} over {votes} (min_feedback {min_feedback:g})"


@dataclass(frozen=True, slots=True)
class Judged:
    """What one vote did to the entry version it rated."""

    ref: str
    tally: Tally
    invalidated: bool  # by this vote

    def report(self) -> dict[str, Any]:
        return {"entry": self.ref, "votes": self.tally.votes, "mean_score": self.tally.mean_score,
                "invalidated": self.tally.invalidated}


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What one request may do with the cache."""

    lookup: bool
    store: bool
    max_age: float | None  # accept entries at most this old (Cache-Control: max-age)
    ttl_s: int

    @property
    def used(self) -> bool:
        return self.lookup or self.store


BYPASS: Final = CachePolicy(False, False, None, 0)


def request_policy(settings: CacheConfig, route_ttl: int | None, route_enabled: bool,
                   cache_control: str | None) -> CachePolicy:
    """Combine the config, the route's override and the client's Cache-Control header."""
    if settings.backend == "off" or not route_enabled:
        return BYPASS
    if cache_control is None:  # (ResponseCache.policy remembers these per TTL)
        return CachePolicy(True, True, None, route_ttl or settings.ttl_s)
    lookup, store, max_age = True, True, None
    for directive in cache_control.lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name == "no-store":
            return BYPASS
        if name == "no-cache":
            lookup = False
        elif name == "max-age" and value.strip().isdigit():
            max_age = float(value.strip())
    return CachePolicy(lookup, store, max_age, route_ttl or settings.ttl_s)


class ResponseCache:
    def __init__(self, settings: CacheConfig, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self._hits: dict[tuple[str, str], tuple[int, float]] = {}  # (key, entry id) -> (hits, saved USD)
        # decoded entries by the identity of the stored value (a backend that keeps objects):
        # a hot entry is decoded once, not on every hit
        self._decoded: dict[int, tuple[bytes, Entry]] | None = {} if backend.keeps_objects else None
        # what every request reads, as plain fields (compiled, a pydantic attribute is a generic lookup)
        self._off = settings.backend == "off"
        self._ttl_s = settings.ttl_s
        self._scope_team = settings.scope == "team"
        self._key_prefix = settings.key_prefix
        self._plain: dict[int, CachePolicy] = {}  # by TTL: the policy of a request without Cache-Control

    def policy(self, route_ttl: int | None, route_enabled: bool, cache_control: str | None) -> CachePolicy:
        """`request_policy` for this cache's settings."""
        if cache_control is not None or not route_enabled or self._off:
            return request_policy(self.settings, route_ttl, route_enabled, cache_control)
        ttl = route_ttl or self._ttl_s
        plain = self._plain.get(ttl)
        if plain is None:  # (one per TTL the config names: bounded)
            plain = self._plain[ttl] = CachePolicy(True, True, None, ttl)
        return plain

    def key(self, *, team: str, target: str, endpoint: str, body: Mapping[str, Any]) -> str:
        # "team=" keeps a team that happens to be called "shared" out of the shared scope
        scope = f"team={team}" if self._scope_team else "shared"
        return cache_key(scope=scope, target=target, endpoint=endpoint, body=body, prefix=self._key_prefix)

    async def lookup(self, key: str, max_age: float | None) -> Entry | Tombstone | None:
        """The entry to answer with; its tombstone when feedback invalidated it; else None."""
        value = await self.backend.get(key)
        if value is None:
            return None
        entry = self._decode(value)
        if entry is None:
            return decode_tombstone(value)
        if max_age is not None and entry.age() > max_age:
            return None
        return entry

    def _decode(self, value: bytes) -> Entry | None:
        memo = self._decoded
        if memo is None:
            return decode_entry(value)
        seen = memo.get(id(value))
        if seen is not None and seen[0] is value:  # held here, so its id cannot have been reused
            return seen[1]
        entry = decode_entry(value)
        if entry is not None:
            if len(memo) >= DECODED_KEEP:
                memo.clear()
            memo[id(value)] = (value, entry)
        return entry

    async def store(self, key: str, entry: Entry, ttl_s: int) -> None:
        try:
            if entry.id:
                await self.backend.put(key, encode_entry(entry), ttl_s, entry.id)
            else:
                await self.backend.set(key, encode_entry(entry), ttl_s)
        except Exception:  # a store is best effort and must never surface
            log.exception("cache store failed")

    def count_hit(self, key: str, entry: Entry, saved_usd: float | None) -> None:
        """On the request path, so it only adds to a batch: the batch is counted off it, in one
        backend call (one Redis round trip) at most HITS_EVERY_S later, whatever the rate."""
        pending = self._hits
        hits, saved = pending.get((key, entry.id), (0, 0.0))
        if not hits and len(pending) >= MAX_PENDING_HITS:
            return
        if not pending:
            spawn(self._count_hits_soon())
        pending[key, entry.id] = (hits + 1, saved + (saved_usd or 0.0))

    async def _count_hits_soon(self) -> None:
        await asyncio.sleep(HITS_EVERY_S)
        await self._count_hits()

    async def _count_hits(self) -> None:
        batch, self._hits = self._hits, {}
        if not batch:
            return
        try:
            await self.backend.count_hits([Hits(key, entry_id, hits, saved)
                                           for (key, entry_id), (hits, saved) in batch.items()])
        except Exception:  # noqa: BLE001 - a tally is best effort and must never surface
            log.exception("cache hit count failed")

    async def feedback(self, ref: str, voter: str, score: float) -> Judged | None:
        """Tally `voter`'s score (0..1) on the entry version `ref` names, and invalidate the
        version when its mean falls below `min_feedback`. None when that version is no longer
        stored (expired, replaced, purged) or the backend could not be asked."""
        parsed = parse_ref(ref)
        if parsed is None:
            return None
        entry_id, key = parsed
        try:
            tally = await self.backend.vote(key, entry_id, voter, score)
            if tally is None:
                return None
            reason = feedback_verdict(tally, self.settings.min_feedback, self.settings.min_votes)
            if reason is None or tally.invalidated is not None:
                return Judged(ref, tally, False)
            done = await self._invalidate(key, entry_id, ref, tally, reason)
        except Exception:  # noqa: BLE001 - the vote is in the ledger; the cache side is best effort
            log.exception("cache feedback failed")
            return None
        return Judged(ref, Tally(tally.hits, tally.saved_usd, tally.votes, tally.score_sum, reason), done)

    async def _invalidate(self, key: str, entry_id: str, ref: str, tally: Tally, reason: str) -> bool:
        now = time.time()
        record = orjson.dumps({**self._described(key, ref, tally), "reason": reason, "invalidated_at": _iso(now)})
        done = await self.backend.invalidate(key, entry_id, encode_tombstone(Tombstone(entry_id, reason, now)),
                                             reason, record)
        if done:
            log.info("cache entry %s invalidated: %s", ref, reason)
        return done

    async def entries(self, limit: int) -> dict[str, Any]:
        """`GET /admin/cache/entries`: the most hit entries with their savings and feedback,
        and the latest invalidations with their reasons (each list at most `limit` long)."""
        top = await self.backend.top(limit)
        invalidated = [orjson.loads(r) for r in await self.backend.invalidations(limit)]
        return {"object": "cache_entries", "backend": self.backend.name, "min_feedback": self.settings.min_feedback,
                "min_votes": self.settings.min_votes, "top": [self._listed(t) for t in top],
                "invalidated": invalidated}

    def _listed(self, tallied: Tallied) -> dict[str, Any]:
        return self._described(tallied.key, f"{tallied.entry_id}@{tallied.key}", tallied.tally)

    def _described(self, key: str, ref: str, tally: Tally) -> dict[str, Any]:
        scope, target = key_parts(key, self.settings.key_prefix) or ("", "")
        return {"entry": ref, "team": scope.removeprefix("team=") if scope.startswith("team=") else None,
                "target": target or None, "hits": tally.hits, "saved_usd": round(tally.saved_usd, 10),
                "feedback": {"votes": tally.votes, "mean_score": tally.mean_score}}

    async def purge(self, *, team: str | None = None, model: str | None = None) -> int:
        scope = None if team is None else (f"team={team}" if self.settings.scope == "team" else "shared")
        if team is not None and self.settings.scope == "shared":
            return 0  # shared entries belong to no team
        return await self.backend.purge(purge_pattern(scope=scope, model=model, prefix=self.settings.key_prefix))

    def state(self) -> dict[str, Any]:
        backend = self.backend
        info: dict[str, Any] = {"backend": backend.name, "scope": self.settings.scope, "ttl_s": self.settings.ttl_s}
        guard = getattr(backend, "guard", None)  # the Redis backend's
        if guard is not None:
            info["redis"] = guard.report()
            info["redis_available"] = guard.up  # as last seen (probed at startup), not assumed
            info["redis_errors"] = getattr(backend, "errors", 0)
        return info

    async def aclose(self) -> None:
        await self._count_hits()  # what was gathered, before the connection goes
        await self.backend.aclose()


def build_cache(settings: CacheConfig, guards: RedisGuards | None = None) -> ResponseCache | None:
    if settings.backend == "off":
        return None
    local = MemoryBackend(settings.max_entries)
    if settings.backend == "memory":
        return ResponseCache(settings, local)
    from proxy.cache.redis_backend import RedisBackend  # redis-py: loaded only when asked for

    guard = guards.get(settings.url, failures=settings.failures, cooldown_s=settings.cooldown_s) \
        if guards is not None else None
    backend = RedisBackend(
        settings.url,
        timeout_ms=settings.timeout_ms,
        failures=settings.failures,
        cooldown_s=settings.cooldown_s,
        fallback=local,
        guard=guard,
        prefix=settings.key_prefix,
    )
    return ResponseCache(settings, backend)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


__all__ = ["BYPASS", "CachePolicy", "Entry", "Judged", "ResponseCache", "Tally", "Tombstone", "build_cache",
           "entry_ref", "feedback_verdict", "new_entry_id", "request_policy"]
