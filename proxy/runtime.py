"""The serving state of one process: the snapshot holder and everything built for its
snapshot (adapters, cache, accounting), plus what outlives reloads (circuit breakers,
experiment promotions, Redis guards, telemetry). A reload builds a fresh `Active` and
swaps it in; each request keeps the `Active` it started with.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

from proxy.accounting.feedback import Feedback
from proxy.accounting.reporting import Reports
from proxy.accounting.service import Accounting
from proxy.cache import ResponseCache, build_cache
from proxy.experiments import ExperimentState
from proxy.pipeline.active import Active
from proxy.providers import ProviderPool
from proxy.redis_guard import RedisGuards
from proxy.resilience import Health
from proxy.responses_store import ResponseStore, build_store
from proxy.server import LimitsRef
from proxy.snapshot import Snapshot, SnapshotHolder
from proxy.tasks import spawn
from proxy.telemetry import Telemetry

log = logging.getLogger("switchyard")


class Runtime:
    def __init__(self, holder: SnapshotHolder, pool: ProviderPool) -> None:
        self.holder = holder
        self.pool = pool
        self.started_at = time.time()
        self._active: Active | None = None
        self.cache: ResponseCache | None = None
        self.responses: ResponseStore | None = None
        self._responses_settings: tuple[Any, ...] = ()
        self.accounting: Accounting | None = None
        self.telemetry = Telemetry()
        self.health = Health()  # circuit breakers and balancing state: outlive config reloads
        self.health.on_change = self._circuit_changed
        self.experiments = ExperimentState()
        self.redis = RedisGuards()  # one health state per Redis server, for every user of it
        self.head_limits = LimitsRef()  # what the HTTP protocol (proxy/server.py) enforces
        holder.listeners.append(self._install)
        holder.observers.append(self.telemetry.metrics.reload_result)

    def _install(self, snapshot: Snapshot) -> None:
        self.telemetry.configure(snapshot.config.telemetry)
        self.telemetry.metrics.config_loaded(snapshot.generation, snapshot.digest)
        self.telemetry.metrics.team_budgets({
            name: (team.budget.daily_usd, team.budget.monthly_usd)
            for name, team in snapshot.config.teams.items() if team.budget is not None
        })
        settings = snapshot.config.cache
        if self.cache is None or self.cache.settings != settings:
            old, self.cache = self.cache, build_cache(settings, self.redis)
            if old is not None:
                spawn(old.aclose())
        responses_settings = (snapshot.config.responses, snapshot.config.cache)
        if responses_settings != self._responses_settings:
            old_store, self.responses = self.responses, build_store(snapshot.config, self.redis)
            self._responses_settings = responses_settings
            if old_store is not None:
                spawn(old_store.aclose())
        if self.accounting is None:
            self.accounting = Accounting(snapshot, self.telemetry.metrics, self.redis)
        else:
            self.accounting.configure(snapshot)
        self.experiments.forget_missing(snapshot)
        self.health.known = snapshot.known_targets
        self.head_limits.update(snapshot.config.server)
        self._active = Active(snapshot, self.pool.sync(snapshot), self.cache, self.accounting,
                              MappingProxyType(self.experiments.promoted), self.responses)

    def _circuit_changed(self, target: str, state: str) -> None:
        known = self._active is not None and target in self._active.snapshot.known_targets
        self.telemetry.metrics.circuit_changed(target, state, known)
        log.warning("circuit for %s is now %s", target, state.replace("_", "-"))

    def active(self) -> Active:
        assert self._active is not None, "no config loaded"
        return self._active

    @property
    def reports(self) -> Reports:
        assert self.accounting is not None, "no config loaded"
        return Reports(self.accounting)

    @property
    def feedback(self) -> Feedback:
        assert self.accounting is not None, "no config loaded"
        return Feedback(self.accounting)

    async def aclose(self) -> None:
        async with timed("closing provider connections"):
            await self.pool.aclose()
        if self.cache is not None:
            async with timed("closing the cache"):
                await self.cache.aclose()
        if self.responses is not None:
            async with timed("closing the response store"):
                await self.responses.aclose()
        if self.accounting is not None:
            async with timed("closing accounting (writing queued ledger rows)"):
                await self.accounting.aclose()
        async with timed("closing telemetry"):
            await self.telemetry.aclose()


@contextlib.asynccontextmanager
async def timed(step: str, slow_s: float = 2.0) -> AsyncIterator[None]:
    """Say so when a shutdown step is slow: a stuck one otherwise looks like a hung process."""
    started = time.monotonic()
    try:
        yield
    finally:
        took = time.monotonic() - started
        if took > slow_s:
            log.warning("shutdown: %s took %.1f s", step, took)
