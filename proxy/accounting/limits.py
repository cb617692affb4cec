"""Per-team (and per-user) rate limits: requests and tokens per minute, by GCRA.

GCRA keeps one number per key, the theoretical arrival time (TAT): each request moves it
`60/limit` seconds on, and a request is refused when that would put it more than a
minute ahead of now. So a team may burst its whole minute's allowance and then runs at
the steady rate; the headers say how much is left and when it is back.

Tokens are only known once the answer is in, so a request is admitted while the token
budget is not already overdrawn, and its tokens are charged when it finishes (OpenAI
does the same with an estimate up front).

With `accounting.backend: redis` the TATs live in Redis and one Lua script checks and
updates every key of a request atomically, so replicas share the limits. A Redis that
fails or is slower than `timeout_ms` is skipped for a cool-down and the process's own
limiter decides meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

from proxy.config import LimitsConfig
from proxy.data import text as data_text
from proxy.errors import RateLimited
from proxy.redis_guard import RedisGuard
from proxy.tasks import spawn

log = logging.getLogger("switchyard.limits")

WINDOW_S = 60.0
MAX_LOCAL_KEYS = 50_000  # team and user keys the in-process limiter remembers


@dataclass(frozen=True, slots=True)
class Check:
    """One limit to check for a request: its key, limit per minute, and units it takes."""

    key: str
    limit: int
    cost: float  # 1 for a request; 0 for a token check (charged afterwards)
    kind: str  # requests | tokens
    scope: str  # team | user
    limit_text: bytes = field(init=False, repr=False, compare=False)  # the limit as its header value

    def __post_init__(self) -> None:  # once per cached check (checks_for), not per request
        object.__setattr__(self, "limit_text", str(self.limit).encode())


@dataclass(slots=True, init=False)
class Outcome:  # one per check per request; __init__ written out: a NamedTuple's runs as bytecode
    allowed: bool
    remaining: int
    reset_s: float  # until the allowance is whole again
    retry_after_s: float  # when refused: until the request would pass

    def __init__(self, allowed: bool, remaining: int, reset_s: float, retry_after_s: float) -> None:
        self.allowed = allowed
        self.remaining = remaining
        self.reset_s = reset_s
        self.retry_after_s = retry_after_s


def gcra(tat: float | None, now: float, limit: int, cost: float) -> tuple[Outcome, float]:
    """The outcome and the new TAT (unchanged when refused)."""
    interval = WINDOW_S / limit
    start = now if tat is None or tat < now else tat
    new_tat = start + interval * cost
    allow_at = new_tat - WINDOW_S
    if allow_at > now and cost > 0 or cost == 0 and start - now > WINDOW_S:
        wait = (allow_at if cost > 0 else start - WINDOW_S) - now
        return Outcome(False, 0, start - now, wait), start
    remaining = max(int((WINDOW_S - (new_tat - now)) / interval), 0)
    return Outcome(True, remaining, new_tat - now, 0.0), new_tat


_CHECKS: dict[tuple[str, str | None, int], tuple[LimitsConfig, tuple[Check, ...]]] = {}
MAX_CACHED_CHECKS = 4096  # the same few (team, user, limits) over and over; bounded for user floods


def checks_for(team: str, user: str | None, limits: LimitsConfig) -> tuple[Check, ...]:
    """The checks of a request, remembered by the identity of its team's limits (a pydantic
    model hashes and compares field by field, twice per request with lru_cache); the entry
    holds the limits, so their id cannot be reused while it is there."""
    key = (team, user, id(limits))
    held = _CHECKS.get(key)
    if held is not None and held[0] is limits:
        return held[1]
    checks = _checks(team, user, limits)
    if len(_CHECKS) >= MAX_CACHED_CHECKS:
        _CHECKS.clear()
    _CHECKS[key] = (limits, checks)
    return checks


def _checks(team: str, user: str | None, limits: LimitsConfig) -> tuple[Check, ...]:
    out = []
    if limits.rpm:
        out.append(Check(f"{team}:r", limits.rpm, 1, "requests", "team"))
    if limits.tpm:
        out.append(Check(f"{team}:t", limits.tpm, 0, "tokens", "team"))
    if user:
        if limits.user_rpm:
            out.append(Check(f"{team}:u:{user}:r", limits.user_rpm, 1, "requests", "user"))
        if limits.user_tpm:
            out.append(Check(f"{team}:u:{user}:t", limits.user_tpm, 0, "tokens", "user"))
    return tuple(out)


class LocalLimiter:
    """In-process GCRA; also what the Redis limiter falls back to."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    def take(self, checks: tuple[Check, ...], now: float) -> list[Outcome]:
        tats = self._tat
        results, new_tats, allowed = [], [], True
        for check in checks:  # one pass: this runs on every request of a limited team
            outcome, tat = gcra(tats.get(check.key), now, check.limit, check.cost)
            results.append(outcome)
            new_tats.append(tat)
            allowed = allowed and outcome.allowed
        if allowed:  # all or nothing, like the Redis script
            for check, tat in zip(checks, new_tats, strict=True):
                tats[check.key] = tat
            if len(tats) > MAX_LOCAL_KEYS:
                self._expire(now)
        return results

    def charge(self, key: str, limit: int, tokens: int, now: float) -> None:
        tat = self._tat.get(key)
        start = now if tat is None or tat < now else tat
        self._tat[key] = start + WINDOW_S / limit * tokens

    def _expire(self, now: float) -> None:
        for key in [k for k, tat in self._tat.items() if tat < now]:
            del self._tat[key]
        # still too many live ones (a flood of distinct user names): forget the oldest;
        # their limits restart, which errs on letting a request through
        for key in list(self._tat)[: len(self._tat) - MAX_LOCAL_KEYS]:
            del self._tat[key]


_TAKE = data_text("ratelimit_take.lua")  # every Lua script says what its KEYS and ARGV hold

_CHARGE = data_text("ratelimit_charge.lua")


class RateLimiter:
    def __init__(self, url: str | None, *, timeout_s: float = 0.02, cooldown_s: float = 5.0, failures: int = 3,
                 prefix: str = "sy:rl", guard: RedisGuard | None = None) -> None:
        self.local = LocalLimiter()
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._redis = None
        self.guard: RedisGuard | None = None
        if url is not None:
            self.guard = guard or RedisGuard(url, failures=failures, cooldown_s=cooldown_s)
            self.guard.users.add("rate limits")
            import redis.asyncio as redis

            self._redis = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1, health_check_interval=0)
            self._take = self._redis.register_script(_TAKE)
            self._charge = self._redis.register_script(_CHARGE)

    async def admit(self, team: str, user: str | None, limits: LimitsConfig | None) -> list[tuple[bytes, bytes]]:
        """Response headers for an admitted request; raises RateLimited (with headers) if over."""
        if limits is None:
            return []
        checks = checks_for(team, user, limits)
        if not checks:
            return []
        outcomes = self.local.take(checks, time.time()) if self._redis is None else await self._outcomes(checks)
        headers = _headers(checks, outcomes)
        for check, outcome in zip(checks, outcomes, strict=True):
            if not outcome.allowed:
                retry = max(1, math.ceil(outcome.retry_after_s))
                who = f"team {team!r}" if check.scope == "team" else f"user {user!r} of team {team!r}"
                limit = f"{check.limit} {check.kind} per minute"
                error = RateLimited(
                    f"Rate limit reached for {who}: {limit}. Try again in {retry}s.",
                    headers=[*headers, (b"retry-after", str(retry).encode())],
                )
                if check.kind == "tokens":
                    error.type = "tokens"
                raise error
        return headers

    def charge(self, team: str, user: str | None, limits: LimitsConfig | None, tokens: int) -> None:
        """Count a finished request's tokens against its token limits (never refuses)."""
        if limits is None or tokens <= 0:
            return
        now = time.time()
        for check in checks_for(team, user, limits):
            if check.kind == "tokens":
                self.local.charge(check.key, check.limit, tokens, now)
                if self._redis is not None and self._redis_usable():
                    spawn(self._charge_redis(check, tokens))

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    # --- Redis, time-boxed, with a breaker

    def _redis_usable(self) -> bool:
        return self.guard is not None and self.guard.available

    async def _outcomes(self, checks: tuple[Check, ...]) -> list[Outcome]:
        if self._redis is None or not self._redis_usable():
            return self.local.take(checks, time.time())
        keys = [f"{self.prefix}:{c.key}" for c in checks]
        args: list[float] = []
        for c in checks:
            args += [WINDOW_S / c.limit, c.cost]
        try:
            raw = await asyncio.wait_for(self._take(keys=keys, args=args), self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - any Redis trouble: decide locally
            self._redis_failed(exc)
            return self.local.take(checks, time.time())
        assert self.guard is not None
        self.guard.ok()
        outcomes = [Outcome(bool(a), int(r), float(reset), float(wait)) for a, r, reset, wait in raw]
        if all(o.allowed for o in outcomes):  # keep the local view close, for when Redis goes away
            self.local.take(checks, time.time())
        return outcomes

    async def _charge_redis(self, check: Check, tokens: int) -> None:
        try:
            await asyncio.wait_for(
                self._charge(keys=[f"{self.prefix}:{check.key}"], args=[WINDOW_S / check.limit * tokens]),
                max(self.timeout_s * 10, 0.2),
            )
        except Exception as exc:  # noqa: BLE001
            self._redis_failed(exc)

    def _redis_failed(self, exc: BaseException) -> None:
        if self.guard is not None:
            self.guard.failed(exc)  # it logs the change, once, for every user of this Redis


_HEADER_NAMES = {kind: (f"x-ratelimit-limit-{kind}".encode(), f"x-ratelimit-remaining-{kind}".encode(),
                         f"x-ratelimit-reset-{kind}".encode()) for kind in ("requests", "tokens")}


def _headers(checks: tuple[Check, ...], outcomes: list[Outcome]) -> list[tuple[bytes, bytes]]:
    """OpenAI-style headers, from the tightest team or user limit of each kind."""
    requests: tuple[Check, Outcome] | None = None
    tokens: tuple[Check, Outcome] | None = None
    for check, outcome in zip(checks, outcomes, strict=True):
        if check.kind == "requests":
            if requests is None or outcome.remaining < requests[1].remaining:
                requests = (check, outcome)
        elif tokens is None or outcome.remaining < tokens[1].remaining:
            tokens = (check, outcome)
    out: list[tuple[bytes, bytes]] = []
    for kind, tightest in (("requests", requests), ("tokens", tokens)):
        if tightest is not None:
            check, outcome = tightest
            limit_name, remaining_name, reset_name = _HEADER_NAMES[kind]
            out += [(limit_name, check.limit_text), (remaining_name, str(outcome.remaining).encode()),
                    (reset_name, duration(outcome.reset_s).encode())]
    return out


def duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1s, 6m0s."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
