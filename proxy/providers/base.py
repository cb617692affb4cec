"""The provider adapter interface and the values that cross it.

An adapter takes an OpenAI-shaped request (model already rewritten by the policy) and
returns an `UpstreamResponse`: the status, the headers worth relaying, and either the
whole body or an async iterator of body chunks for a stream. Transport failures are
raised as `UpstreamError` / `UpstreamTimeout`, before or during a stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from proxy.providers.wire import Endpoint, UpstreamRequest, UpstreamResponse
from proxy.snapshot import ProviderSpec
from proxy.tasks import spawn


class Adapter(ABC):
    """One configured provider. Counts requests in flight so a retired one closes when idle."""

    # True: `send` ends with DeadlinePassed when the request's deadline runs out, on the
    # timers its HTTP client runs anyway; False: the caller bounds it (asyncio.timeout)
    keeps_deadline = False

    def __init__(self, spec: ProviderSpec) -> None:
        self.spec = spec
        self.inflight = 0
        self._retired = False

    @abstractmethod
    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...

    async def aclose(self) -> None:
        return None

    def acquire(self) -> None:
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1
        if self._retired and self.inflight == 0:
            spawn(self._close_if_idle())

    async def retire(self) -> None:
        """No new requests will come; close once the last one in flight is done."""
        self._retired = True
        await self._close_if_idle()

    async def _close_if_idle(self) -> None:
        # checked when it runs, not when it was scheduled: a request of the snapshot that
        # held this adapter (one that had not reached it yet, or a retry) may have started
        # on it in between. Such a late request reopens the connection pool (see aclose),
        # and its own release closes it again.
        if self.inflight == 0:
            await self.aclose()


__all__ = ["Adapter", "Endpoint", "UpstreamRequest", "UpstreamResponse"]
