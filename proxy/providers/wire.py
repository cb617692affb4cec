"""The values that cross the adapter interface (`proxy/providers/base.py` says how):
their own module so that `make native` compiles them, as two are made on every request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

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
