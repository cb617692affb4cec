"""The values that cross the adapter interface (`proxy/providers/base.py` says how):
their own module so that `make native` compiles them, as two are made on every request.
Their `__init__` is written out (`init=False`): the one `dataclass` writes runs as
bytecode even in a compiled class."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Endpoint = str  # "chat/completions" | "embeddings"


@dataclass(slots=True, init=False)
class UpstreamRequest:
    endpoint: Endpoint
    body: dict[str, Any]
    stream: bool
    request_id: str
    headers: list[tuple[str, str]] = field(default_factory=list)  # client headers safe to forward
    deadline: float | None = None  # time.monotonic() by which the answer (a stream's head) must be in

    def __init__(self, endpoint: Endpoint, body: dict[str, Any], stream: bool, request_id: str,
                 headers: list[tuple[str, str]] | None = None, deadline: float | None = None) -> None:
        self.endpoint = endpoint
        self.body = body
        self.stream = stream
        self.request_id = request_id
        self.headers = [] if headers is None else headers
        self.deadline = deadline


async def _nothing() -> None:
    return None


@dataclass(slots=True, init=False)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None  # set for a successful stream
    close: Callable[[], Awaitable[None]] = _nothing
    answer: dict[str, Any] | None = None  # a 2xx JSON answer, parsed once by the adapter that checked it

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes = b"",
                 chunks: AsyncIterator[bytes] | None = None, close: Callable[[], Awaitable[None]] = _nothing,
                 answer: dict[str, Any] | None = None) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.chunks = chunks
        self.close = close
        self.answer = answer

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class ChunkSource:
    """A stream's pieces, each from `next_chunk()` and None after the last. The relay awaits
    it directly: `async for` calls `__anext__` through a generic lookup each time and ends by
    raising StopAsyncIteration, which in compiled code builds a traceback. Still an async
    iterator for everything else (translators, tests)."""

    async def next_chunk(self) -> bytes | None:
        raise NotImplementedError

    def __aiter__(self) -> ChunkSource:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk


def chunk_source(chunks: AsyncIterator[bytes]) -> ChunkSource:
    """`chunks` as a ChunkSource (itself when it is one: the upstream's, a replay)."""
    return chunks if isinstance(chunks, ChunkSource) else _IteratedChunks(chunks)


class _IteratedChunks(ChunkSource):
    """Any other async iterator of pieces (a translated stream, say)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def next_chunk(self) -> bytes | None:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return None
