"""The Redis cache backend, shared by replicas (its module loads redis-py and hiredis, several
MiB, only when a config asks for Redis). Every call is time-boxed; any error counts as a
miss and feeds the shared RedisGuard, and while Redis is skipped the in-process LRU given
as `fallback` serves instead. Tallies live in a hash beside each entry, changed only by
the Lua scripts in proxy/data/."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from proxy.cache.backends import HITS_PER_CALL, INDEX_KEEP, INVALIDATIONS_KEEP, Backend, Hits, Tallied, Tally
from proxy.cache.keys import PREFIX, hits_index_key, invalidations_key, stats_key
from proxy.cache.redis_reads import RedisReads
from proxy.data import text as data_text
from proxy.redis_guard import RedisGuard

log = logging.getLogger("switchyard.cache")


class RedisBackend(Backend):
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        timeout_ms: float,
        failures: int,
        cooldown_s: float,
        fallback: Backend,
        clock: Callable[[], float] = time.monotonic,
        guard: RedisGuard | None = None,
        user: str = "cache",
        prefix: str = PREFIX,
    ) -> None:
        self._timeout = timeout_ms / 1000
        self._index = hits_index_key(prefix)
        self._invalidated = invalidations_key(prefix)
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=max(self._timeout, 0.05),
            socket_connect_timeout=max(self._timeout, 0.05),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._reads = RedisReads.for_url(url)  # lookups on a pipelined connection of their own
        self.fallback = fallback
        # shared with the other users of this Redis (proxy/redis_guard.py); a private one in tests
        self.guard = guard or RedisGuard(url, failures=failures, cooldown_s=cooldown_s, clock=clock)
        self.guard.users.add(user)
        self.errors = 0
        self._store = self.client.register_script(_STORE)
        self._hits = self.client.register_script(_HITS)
        self._vote = self.client.register_script(_VOTE)
        self._invalidate = self.client.register_script(_INVALIDATE)

    @property
    def available(self) -> bool:
        return self.guard.available

    def _ok(self) -> None:
        self.guard.ok()

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.guard.failed(exc)

    async def get(self, key: str) -> bytes | None:
        if not self.available:
            return await self.fallback.get(key)
        value: bytes | str | None = None
        failure: BaseException | None = None
        try:
            if self._reads is not None:
                value = await self._reads.get(key, self._timeout)
            else:
                value = await asyncio.wait_for(self.client.get(key), self._timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            failure = exc
        # the fallback is awaited after the except block, never in it: compiled by mypyc, an
        # await inside the block can raise the caught exception again (and leave it behind)
        if failure is not None:
            self._failed(failure)
            if self._reads is not None and isinstance(failure, (RedisConnectionError, OSError)):
                await self._forget_idle_connections()
            return await self.fallback.get(key)
        self._ok()
        return value if value is None or isinstance(value, bytes) else str(value).encode()

    async def _forget_idle_connections(self) -> None:
        """The lookups' connection was lost: redis-py's idle connections to the same Redis are
        as dead, and it would find out only by failing the next store after Redis is back."""
        try:
            await self.client.connection_pool.disconnect(inuse_connections=False)
        except (RedisError, OSError):
            pass

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if not self.available:
            await self.fallback.set(key, value, ttl_s)
            return
        failure: BaseException | None = None
        try:
            await asyncio.wait_for(self.client.set(key, value, ex=ttl_s), self._timeout * 5)
        except (TimeoutError, RedisError, OSError) as exc:
            failure = exc
        if failure is not None:  # (awaited after the except block, as in `get`)
            self._failed(failure)
            await self.fallback.set(key, value, ttl_s)
            return
        self._ok()

    async def delete(self, key: str) -> bool:
        deleted = await self.fallback.delete(key)
        if not self.available:
            return deleted
        try:
            removed = await asyncio.wait_for(self.client.delete(key), self._timeout * 5)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
            return deleted
        self._ok()
        return bool(removed) or deleted

    async def purge(self, pattern: str) -> int:
        deleted = await self.fallback.purge(pattern)
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await self._unlink(batch)
                batch.clear()
        if batch:
            deleted += await self._unlink(batch)
        return deleted

    async def _unlink(self, keys: list[bytes]) -> int:
        """Unlink entries and tallies alike; the number of entries."""
        tallies = [k for k in keys if k.endswith(b":s")]  # an entry's key ends in its hash
        if tallies:
            await self.client.unlink(*tallies)
        entries = [k for k in keys if not k.endswith(b":s")]
        return int(await self.client.unlink(*entries)) if entries else 0

    # --- tallies and invalidation: one time-boxed call each; while Redis is skipped, or for an
    # entry stored in the fallback while it was, the fallback keeps them

    async def put(self, key: str, value: bytes, ttl_s: int, entry_id: str) -> None:
        ok, _ = await self._run(self._store(keys=[key, stats_key(key)], args=[value, ttl_s, entry_id]),
                                self._timeout * 5)
        if not ok:
            await self.fallback.put(key, value, ttl_s, entry_id)

    async def count_hits(self, hits: Sequence[Hits]) -> None:
        """One script call (one round trip) per HITS_PER_CALL entries of the batch; into the
        fallback while Redis is skipped."""
        if not self.available:
            await self.fallback.count_hits(hits)
            return
        for start in range(0, len(hits), HITS_PER_CALL):  # a script blocks Redis while it runs: keep each short
            keys: list[str] = [self._index]
            args: list[str | int | float] = [INDEX_KEEP]
            for counted in hits[start:start + HITS_PER_CALL]:
                keys.append(stats_key(counted.key))
                args += [counted.entry_id, counted.key, counted.count, counted.saved_usd]
            await self._run(self._hits(keys=keys, args=args), self._slow)

    async def vote(self, key: str, entry_id: str, voter: str, score: float) -> Tally | None:
        ok, reply = await self._run(self._vote(keys=[stats_key(key)], args=[entry_id, voter, score]), self._slow)
        if ok and reply is not None:
            hits, saved, votes, total, invalidated = reply
            return Tally(int(hits or 0), float(saved or 0), int(votes or 0), float(total or 0),
                         invalidated.decode() if invalidated else None)
        return await self.fallback.vote(key, entry_id, voter, score)

    async def invalidate(self, key: str, entry_id: str, tombstone: bytes, reason: str, record: bytes) -> bool:
        ok, reply = await self._run(self._invalidate(keys=[key, stats_key(key), self._invalidated],
                                                     args=[entry_id, tombstone, reason, record, INVALIDATIONS_KEEP]),
                                    self._slow)
        local = await self.fallback.invalidate(key, entry_id, tombstone, reason, record)
        return (ok and reply == 1) or local

    async def top(self, limit: int) -> list[Tallied]:
        if not self.available:
            return await self.fallback.top(limit)
        ok, found = await self._run(self._top(limit), self._slow * 5)
        return found if ok else []

    async def _top(self, limit: int) -> list[Tallied]:
        """Walk the index from the most hit, dropping members whose version expired or was
        invalidated, until `limit` live ones are found; most hit first by their own count."""
        live: list[Tallied] = []
        start, page = 0, max(limit, 50)
        for _ in range(2 * INDEX_KEEP // page + 1):  # the index holds at most 2 * INDEX_KEEP
            if len(live) >= limit:
                break
            raw: list[Any] = await self.client.zrevrange(self._index, start, start + page - 1)
            members = [m.decode() for m in raw]
            if not members:
                break
            async with self.client.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hmget(stats_key(member), "id", "hits", "saved_usd", "votes", "sum", "invalidated")
                    pipe.exists(member)
                rows = await pipe.execute()
            dead = []
            for member, stats, exists in zip(members, rows[::2], rows[1::2], strict=True):
                entry_id, hits, saved, votes, total, invalidated = stats
                if entry_id is None or not exists or invalidated is not None:
                    dead.append(member)
                    continue
                tally = Tally(int(hits or 0), float(saved or 0), int(votes or 0), float(total or 0))
                live.append(Tallied(member, entry_id.decode(), tally))
            if dead:
                await self.client.zrem(self._index, *dead)
            start += page - len(dead)
        return heapq.nlargest(limit, live, key=lambda t: t.tally.hits)

    async def invalidations(self, limit: int) -> list[bytes]:
        ok, found = await self._run(self.client.lrange(self._invalidated, 0, limit - 1), self._slow)
        if not ok:
            return await self.fallback.invalidations(limit)
        return [bytes(r) for r in found]

    @property
    def _slow(self) -> float:
        """The bound for calls off the request path (feedback, admin reads)."""
        return max(self._timeout * 10, 1.0)

    async def _run(self, call: Awaitable[Any], timeout_s: float) -> tuple[bool, Any]:
        """One time-boxed Redis call: (True, its reply), or (False, None) when Redis is skipped
        or the call failed (counted against it)."""
        if not self.available:
            if asyncio.iscoroutine(call):
                call.close()
            return False, None
        try:
            reply = await asyncio.wait_for(call, timeout_s)
        except _ERRORS as exc:
            self._failed(exc)
            return False, None
        self._ok()
        return True, reply

    async def aclose(self) -> None:
        if self._reads is not None:
            self._reads.close()
        await self.client.aclose()


_ERRORS = (TimeoutError, RedisError, OSError)
# every Lua script says what its KEYS and ARGV hold
_STORE = data_text("cache_store.lua")
_HITS = data_text("cache_hits.lua")
_VOTE = data_text("cache_vote.lua")
_INVALIDATE = data_text("cache_invalidate.lua")
