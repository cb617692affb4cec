"""Provider adapters and the pool that keeps one adapter (one connection pool) per provider."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from types import MappingProxyType

from proxy.providers.base import Adapter, UpstreamRequest, UpstreamResponse
from proxy.providers.mock import MockAdapter
from proxy.providers.openai import AzureOpenAIAdapter, OpenAIAdapter
from proxy.snapshot import ProviderSpec, Snapshot
from proxy.tasks import spawn

AdapterFactory = Callable[[ProviderSpec], Adapter]


def build_adapter(spec: ProviderSpec) -> Adapter:
    if spec.type == "mock":
        return MockAdapter(spec)
    if spec.type == "openai":
        return OpenAIAdapter(spec)
    if spec.type == "azure":
        return AzureOpenAIAdapter(spec)
    if spec.type == "anthropic":
        from proxy.providers.anthropic import AnthropicAdapter

        return AnthropicAdapter(spec)
    raise ValueError(f"no adapter for provider type {spec.type!r}")


class ProviderPool:
    """Builds adapters for a snapshot, reusing those whose spec did not change.

    `sync()` returns an immutable name -> adapter mapping that belongs to that snapshot;
    adapters it no longer holds are retired and close once their last request is done.
    """

    def __init__(self, factory: AdapterFactory = build_adapter) -> None:
        self._factory = factory
        self._adapters: dict[str, Adapter] = {}

    def sync(self, snapshot: Snapshot) -> Mapping[str, Adapter]:
        fresh: dict[str, Adapter] = {}
        for name, spec in snapshot.providers.items():
            current = self._adapters.get(name)
            fresh[name] = current if current is not None and current.spec == spec else self._factory(spec)
        for name, adapter in self._adapters.items():
            if fresh.get(name) is not adapter:
                spawn(adapter.retire())
        self._adapters = fresh
        return MappingProxyType(dict(fresh))

    async def aclose(self) -> None:
        adapters, self._adapters = self._adapters, {}
        await asyncio.gather(*(a.aclose() for a in adapters.values()))


__all__ = ["Adapter", "ProviderPool", "UpstreamRequest", "UpstreamResponse", "build_adapter"]
