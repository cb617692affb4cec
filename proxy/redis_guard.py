"""The one place that decides whether Redis is used, and says so.

The cache, the rate limiter and the spend counters all talk to Redis and must never
fail or stall a request because of it. Each asks its server's `RedisGuard` before a
call (`available`) and reports how the call went (`ok`, `failed`). After `failures`
consecutive failures the server is skipped for `cooldown_s` (the cache answers from its
local LRU, limits and budgets are enforced in-process), then one call is let through to
try again. Every user of the same URL shares one guard, so they agree on its state, the
log says each change once ("not answering", "answering again"), and `/readyz` reports
what was last seen, from a probe at startup onwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("switchyard.redis")

UNKNOWN, UP, DOWN = "unknown", "up", "down"


def redacted_url(url: str) -> str:
    """A Redis URL without its password, for logs and /readyz."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisGuard:
    def __init__(self, url: str, *, failures: int = 3, cooldown_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.state = UNKNOWN
        self.users: set[str] = set()  # cache, rate limits, spend counters
        self.errors = 0
        self.last_error: str | None = None
        self._consecutive = 0
        self._skip_until = 0.0

    @property
    def available(self) -> bool:
        """May a call go to Redis now? False while it is skipped after failures."""
        return self._clock() >= self._skip_until

    @property
    def up(self) -> bool:
        return self.state == UP

    def ok(self) -> None:
        if self.state != UP:
            if self.state == DOWN:
                log.info("Redis at %s is answering again (%s)", redacted_url(self.url), self._who())
            self.state = UP
        self._consecutive = 0
        self._skip_until = 0.0

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        self._consecutive += 1
        self.last_error = str(exc) or type(exc).__name__
        if self._consecutive < self.failures:
            return
        self._skip_until = self._clock() + self.cooldown_s
        if self.state != DOWN:
            self.state = DOWN
            log.warning("Redis at %s is not answering (%s); skipping it for %.0f s at a time: %s",
                        redacted_url(self.url), self.last_error, self.cooldown_s, self._fallbacks())

    def report(self) -> dict[str, Any]:
        return {
            "url": redacted_url(self.url),
            "state": self.state,
            "used_by": sorted(self.users),
            "errors": self.errors,
            "last_error": self.last_error,
            "retry_in_s": round(max(0.0, self._skip_until - self._clock()), 3),
        }

    async def probe(self, timeout_s: float = 1.0) -> bool:
        """Ping once (at startup), so the state is known before the first request."""
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            await asyncio.wait_for(client.ping(), timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure means: not answering
            self._consecutive = self.failures - 1  # one failure is enough to call it down now
            self.failed(exc)
            return False
        finally:
            await client.aclose()
        log.info("Redis at %s answers (%s)", redacted_url(self.url), self._who())
        self.ok()
        return True

    def _who(self) -> str:
        return ", ".join(sorted(self.users)) or "unused"

    def _fallbacks(self) -> str:
        meanwhile = {"cache": "the cache answers from the local LRU",
                     "rate limits": "rate limits are enforced in this process",
                     "spend counters": "budgets are enforced on this process's view, spend is kept to push later"}
        return "; ".join(meanwhile[u] for u in sorted(self.users) if u in meanwhile) or "nothing uses it yet"


class RedisGuards:
    """One guard per Redis URL for the whole process, across config reloads."""

    def __init__(self) -> None:
        self._guards: dict[str, RedisGuard] = {}

    def get(self, url: str, *, failures: int = 3, cooldown_s: float = 5.0) -> RedisGuard:
        """The guard of this URL (its users add themselves to `users`)."""
        guard = self._guards.get(url)
        if guard is None:
            guard = self._guards[url] = RedisGuard(url, failures=failures, cooldown_s=cooldown_s)
        return guard

    def all(self) -> list[RedisGuard]:
        return list(self._guards.values())

    def report(self) -> dict[str, dict[str, Any]]:
        return {redacted_url(g.url): g.report() for g in self._guards.values()}

    async def probe_all(self) -> None:
        await asyncio.gather(*(g.probe() for g in self._guards.values()))
