"""Cache storage: Redis (shared by replicas) and a bounded in-process LRU.

Both store opaque bytes with a TTL. The Redis backend never fails or stalls a request:
every call is cut off after `timeout_ms`, any error counts as a miss, and after
`failures` consecutive failures Redis is skipped for `cooldown_s` before it is tried
again. While it is skipped, the cache serves from the in-process LRU instead.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from proxy.redis_guard import RedisGuard

log = logging.getLogger("switchyard.cache")


class Backend(ABC):
    name: str

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete one key; whether it was there."""

    @abstractmethod
    async def purge(self, pattern: str) -> int:
        """Delete keys matching a Redis-style glob; the number deleted."""

    async def aclose(self) -> None:
        return None


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        self._items[key] = (self._clock() + ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    async def delete(self, key: str) -> bool:
        return self._items.pop(key, None) is not None

    async def purge(self, pattern: str) -> int:
        match = redis_glob(pattern).fullmatch
        doomed = [k for k in self._items if match(k)]
        for key in doomed:
            del self._items[key]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._items)


def redis_glob(pattern: str) -> re.Pattern[str]:
    """The globs `purge_pattern` makes, matched as Redis does: `*`, `?`, and a backslash
    escaping the next character (which `fnmatch` would take literally)."""
    out: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


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
    ) -> None:
        self._timeout = timeout_ms / 1000
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=max(self._timeout, 0.05),
            socket_connect_timeout=max(self._timeout, 0.05),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self.fallback = fallback
        # shared with the other users of this Redis (proxy/redis_guard.py); a private one in tests
        self.guard = guard or RedisGuard(url, failures=failures, cooldown_s=cooldown_s, clock=clock)
        self.guard.users.add(user)
        self.errors = 0

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
        try:
            value = await asyncio.wait_for(self.client.get(key), self._timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
            return await self.fallback.get(key)
        self._ok()
        return value if value is None or isinstance(value, bytes) else str(value).encode()

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if not self.available:
            await self.fallback.set(key, value, ttl_s)
            return
        try:
            await asyncio.wait_for(self.client.set(key, value, ex=ttl_s), self._timeout * 5)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
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
                deleted += await self.client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self.client.unlink(*batch)
        return deleted

    async def aclose(self) -> None:
        await self.client.aclose()
