"""The provider adapter interface and the values that cross it.

An adapter takes an OpenAI-shaped request (model already rewritten by the policy) and
returns an `UpstreamResponse`: the status, the headers worth relaying, and either the
whole body or an async iterator of body chunks for a stream. Transport failures are
raised as `UpstreamError` / `UpstreamTimeout`, before or during a stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.snapshot import ProviderSpec
from proxy.tasks import spawn

Endpoint = str  # "chat/completions" | "embeddings"


@dataclass(slots=True)
class UpstreamRequest:
    endpoint: Endpoint
    body: dict[str, Any]
    stream: bool
    request_id: str
    headers: list[tuple[str, str]] = field(default_factory=list)  # client headers safe to forward
    deadline: float | None = None  # time.monotonic() by which the answer (a stream's head) must be in


async def _nothing() -> None:
    return None


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None  # set for a successful stream
    close: Callable[[], Awaitable[None]] = _nothing
    answer: dict[str, Any] | None = None  # a 2xx JSON answer, parsed once by the adapter that checked it

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


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
