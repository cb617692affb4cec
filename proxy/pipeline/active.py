"""What one request uses from start to end: a snapshot and what was built for it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from proxy.accounting.service import Accounting
from proxy.cache.service import ResponseCache
from proxy.providers.base import Adapter
from proxy.responses_store import ResponseStore
from proxy.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class Active:
    """A snapshot and the adapters built for it: what one request uses from start to end."""

    snapshot: Snapshot
    adapters: Mapping[str, Adapter]
    cache: ResponseCache | None = None
    accounting: Accounting | None = None
    promoted: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # experiment -> variant
    responses: ResponseStore | None = None  # the Responses API answers the gateway translated
