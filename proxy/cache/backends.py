"""Cache storage: Redis (shared by replicas) and a bounded in-process LRU.

Both store opaque bytes with a TTL. The Redis backend never fails or stalls a request:
every call is cut off after `timeout_ms`, any error counts as a miss, and after
`failures` consecutive failures Redis is skipped for `cooldown_s` before it is tried
again. While it is skipped, the cache serves from the in-process LRU instead.

Beside each entry stored with `put` a backend keeps its tallies (hits, the USD they saved,
feedback votes) for as long as the entry lives; `invalidate` puts a tombstone in the
entry's place for the rest of its TTL. In Redis the tallies are a hash next to the entry,
changed only by the Lua scripts in proxy/data/, so every replica sees the same ones.
"""

from __future__ import annotations

import heapq
import logging
import re
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("switchyard.cache")

INDEX_KEEP = 1000  # entries the hits index keeps (it is trimmed to these when it doubles)
INVALIDATIONS_KEEP = 100  # invalidation records kept, newest first
HITS_PER_CALL = 500  # entries whose hits one Redis script call counts


@dataclass(frozen=True, slots=True)
class Tally:
    """What one entry version has been through: hits, the USD they saved, feedback votes."""

    hits: int = 0
    saved_usd: float = 0.0
    votes: int = 0
    score_sum: float = 0.0
    invalidated: str | None = None  # why, once it was

    @property
    def mean_score(self) -> float | None:
        # rounded: sums kept as floats must not put a mean of exactly the threshold below it
        return round(self.score_sum / self.votes, 9) if self.votes else None


@dataclass(frozen=True, slots=True)
class Hits:
    """Hits on one entry version since the last count."""

    key: str
    entry_id: str
    count: int
    saved_usd: float


@dataclass(frozen=True, slots=True)
class Tallied:
    """One live entry version and its tally, as `top()` lists them."""

    key: str
    entry_id: str
    tally: Tally


class Backend(ABC):
    name: str
    # `get` returns the very bytes object stored (not a copy read off a socket): a value
    # seen before can be recognised by identity, and its decoded entry reused
    keeps_objects = False

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete one key; whether it was there."""

    @abstractmethod
    async def purge(self, pattern: str) -> int:
        """Delete entries matching a Redis-style glob (their tallies too); the number deleted."""

    @abstractmethod
    async def put(self, key: str, value: bytes, ttl_s: int, entry_id: str) -> None:
        """Store an entry version with fresh tallies: an answer stored again is a new one."""

    @abstractmethod
    async def count_hits(self, hits: Sequence[Hits]) -> None:
        """Count hits on entry versions (nothing for a version no longer stored or invalidated)."""

    @abstractmethod
    async def vote(self, key: str, entry_id: str, voter: str, score: float) -> Tally | None:
        """Record a voter's score (voting again replaces it); the tally after it, or None
        when that version is no longer stored."""

    @abstractmethod
    async def invalidate(self, key: str, entry_id: str, tombstone: bytes, reason: str, record: bytes) -> bool:
        """Put `tombstone` in the place of that version for the rest of its TTL and `record`
        on the invalidations list; False (and nothing done) when the version is no longer
        stored or was invalidated already."""

    @abstractmethod
    async def top(self, limit: int) -> list[Tallied]:
        """The live, valid entry versions with the most hits (at least one), most first."""

    @abstractmethod
    async def invalidations(self, limit: int) -> list[bytes]:
        """The records `invalidate` kept, newest first."""

    async def aclose(self) -> None:
        return None


class MemoryBackend(Backend):
    name = "memory"
    keeps_objects = True

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._stats: dict[str, _Stats] = {}  # of entries in _items stored with put(); go with them
        self._invalidations: deque[bytes] = deque(maxlen=INVALIDATIONS_KEEP)

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        self._stats.pop(key, None)  # whatever was counted was another value's
        self._items[key] = (self._clock() + ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._drop(next(iter(self._items)))

    async def delete(self, key: str) -> bool:
        self._stats.pop(key, None)
        return self._items.pop(key, None) is not None

    async def purge(self, pattern: str) -> int:
        match = redis_glob(pattern).fullmatch
        doomed = [k for k in self._items if match(k)]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    async def put(self, key: str, value: bytes, ttl_s: int, entry_id: str) -> None:
        await self.set(key, value, ttl_s)
        if key in self._items:
            self._stats[key] = _Stats(entry_id)

    async def count_hits(self, hits: Sequence[Hits]) -> None:
        for counted in hits:
            stats = self._live(counted.key, counted.entry_id)
            if stats is not None and stats.invalidated is None:
                stats.hits += counted.count
                stats.saved_usd += counted.saved_usd

    async def vote(self, key: str, entry_id: str, voter: str, score: float) -> Tally | None:
        stats = self._live(key, entry_id)
        if stats is None:
            return None
        stats.votes[voter] = score
        return stats.tally()

    async def invalidate(self, key: str, entry_id: str, tombstone: bytes, reason: str, record: bytes) -> bool:
        stats = self._live(key, entry_id)
        if stats is None or stats.invalidated is not None:
            return False
        stats.invalidated = reason
        self._items[key] = (self._items[key][0], tombstone)  # for the rest of the entry's TTL
        self._invalidations.appendleft(record)
        return True

    async def top(self, limit: int) -> list[Tallied]:
        now = self._clock()
        live = [Tallied(k, s.id, s.tally()) for k, s in self._stats.items()
                if s.hits and s.invalidated is None and self._items[k][0] > now]
        return heapq.nlargest(limit, live, key=lambda t: t.tally.hits)

    async def invalidations(self, limit: int) -> list[bytes]:
        return list(self._invalidations)[:limit]

    def _live(self, key: str, entry_id: str) -> _Stats | None:
        """The tallies of that version, while it is stored and unexpired."""
        stats = self._stats.get(key)
        if stats is None or stats.id != entry_id:
            return None
        if self._items[key][0] <= self._clock():
            self._drop(key)
            return None
        return stats

    def _drop(self, key: str) -> None:
        del self._items[key]
        self._stats.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class _Stats:
    """The in-process LRU's tallies of one entry version (Redis keeps them in a hash)."""

    id: str
    hits: int = 0
    saved_usd: float = 0.0
    votes: dict[str, float] = field(default_factory=dict)  # voter -> score
    invalidated: str | None = None

    def tally(self) -> Tally:
        return Tally(self.hits, self.saved_usd, len(self.votes), sum(self.votes.values()), self.invalidated)


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

