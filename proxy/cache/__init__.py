"""The response cache: what to look up and store for a request, and the stored entries.

An entry holds the answer's exact JSON body plus the target that produced it, its
usage and its creation time. Values are a one-line orjson header, a newline and the
body; those over `COMPRESS_OVER` bytes are zlib-compressed. Stores happen in the
background, after the answer has gone to the client.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.cache.backends import Backend, MemoryBackend, RedisBackend
from proxy.cache.keys import cache_key, purge_pattern
from proxy.config import CacheConfig
from proxy.redis_guard import RedisGuards

log = logging.getLogger("switchyard.cache")

COMPRESS_OVER = 2048
_PLAIN, _ZLIB = b"j", b"z"


@dataclass(frozen=True, slots=True)
class Entry:
    target: str
    created: float  # unix time
    usage: dict[str, Any] | None
    body: bytes  # the answer as the upstream (or the assembled stream) gave it

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.created)


def encode_entry(entry: Entry) -> bytes:
    header = orjson.dumps({"v": 1, "target": entry.target, "created": entry.created, "usage": entry.usage})
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
        return Entry(meta["target"], float(meta["created"]), meta.get("usage"), body)
    except (zlib.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


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


BYPASS = CachePolicy(False, False, None, 0)


def request_policy(settings: CacheConfig, route_ttl: int | None, route_enabled: bool,
                   cache_control: str | None) -> CachePolicy:
    """Combine the config, the route's override and the client's Cache-Control header."""
    if settings.backend == "off" or not route_enabled:
        return BYPASS
    lookup, store, max_age = True, True, None
    for directive in (cache_control or "").lower().split(","):
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

    def key(self, *, team: str, target: str, endpoint: str, body: Mapping[str, Any]) -> str:
        # "team=" keeps a team that happens to be called "shared" out of the shared scope
        scope = f"team={team}" if self.settings.scope == "team" else "shared"
        return cache_key(scope=scope, target=target, endpoint=endpoint, body=dict(body),
                         prefix=self.settings.key_prefix)

    async def lookup(self, key: str, max_age: float | None) -> Entry | None:
        value = await self.backend.get(key)
        if value is None:
            return None
        entry = decode_entry(value)
        if entry is None or (max_age is not None and entry.age() > max_age):
            return None
        return entry

    async def store(self, key: str, entry: Entry, ttl_s: int) -> None:
        try:
            await self.backend.set(key, encode_entry(entry), ttl_s)
        except Exception:  # a store is best effort and must never surface
            log.exception("cache store failed")

    async def purge(self, *, team: str | None = None, model: str | None = None) -> int:
        scope = None if team is None else (f"team={team}" if self.settings.scope == "team" else "shared")
        if team is not None and self.settings.scope == "shared":
            return 0  # shared entries belong to no team
        return await self.backend.purge(purge_pattern(scope=scope, model=model, prefix=self.settings.key_prefix))

    def state(self) -> dict[str, Any]:
        backend = self.backend
        info: dict[str, Any] = {"backend": backend.name, "scope": self.settings.scope, "ttl_s": self.settings.ttl_s}
        if isinstance(backend, RedisBackend):
            info["redis"] = backend.guard.report()
            info["redis_available"] = backend.guard.up  # as last seen (probed at startup), not assumed
            info["redis_errors"] = backend.errors
        return info

    async def aclose(self) -> None:
        await self.backend.aclose()


def build_cache(settings: CacheConfig, guards: RedisGuards | None = None) -> ResponseCache | None:
    if settings.backend == "off":
        return None
    local = MemoryBackend(settings.max_entries)
    if settings.backend == "memory":
        return ResponseCache(settings, local)
    guard = guards.get(settings.url, failures=settings.failures, cooldown_s=settings.cooldown_s) \
        if guards is not None else None
    backend = RedisBackend(
        settings.url,
        timeout_ms=settings.timeout_ms,
        failures=settings.failures,
        cooldown_s=settings.cooldown_s,
        fallback=local,
        guard=guard,
    )
    return ResponseCache(settings, backend)


__all__ = ["BYPASS", "CachePolicy", "Entry", "ResponseCache", "build_cache", "request_policy"]
