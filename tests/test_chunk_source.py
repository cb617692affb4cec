"""A stream's pieces as the relay reads them (proxy/providers/wire.py `ChunkSource`):
`next_chunk()` until None, and the same pieces through `async for`."""

from __future__ import annotations

import asyncio

import pytest

from proxy.providers.base import UpstreamResponse
from proxy.providers.wire import ChunkSource, chunk_source
from proxy.relay import StreamRelay, iterate

PIECES = [b"data: 1\n\n", b"", b"data: 2\n\n", b"data: [DONE]\n\n"]


async def generated(pieces):
    for piece in pieces:
        yield piece


async def drained(source: ChunkSource) -> list[bytes]:
    out = []
    while (piece := await source.next_chunk()) is not None:
        out.append(piece)
    return out


@pytest.mark.parametrize("make", [iterate, lambda pieces: chunk_source(generated(pieces))], ids=["replay", "wrapped"])
async def test_next_chunk_gives_every_piece_then_none(make):
    source = make(PIECES)
    assert await drained(source) == PIECES
    assert await source.next_chunk() is None  # and stays at the end


async def test_a_source_is_an_async_iterator_too():
    assert [piece async for piece in iterate(PIECES)] == PIECES


async def test_a_source_is_not_wrapped_again():
    source = iterate(PIECES)
    assert chunk_source(source) is source


async def test_an_error_mid_stream_reaches_the_reader():
    async def failing():
        yield b"data: 1\n\n"
        raise RuntimeError("cut")

    source = chunk_source(failing())
    assert await source.next_chunk() == b"data: 1\n\n"
    with pytest.raises(RuntimeError, match="cut"):
        await source.next_chunk()


@pytest.mark.parametrize("chunks", [lambda: iterate(PIECES), lambda: generated(PIECES)], ids=["source", "iterator"])
async def test_the_relay_writes_any_kind_of_pieces_alike(chunks):
    """A translated stream (any async iterator) and the upstream's own (a ChunkSource)."""
    sent: list[dict] = []
    outcomes: list[str] = []

    async def send(message):
        sent.append(message)

    async def receive():  # a client that stays: the relay's disconnect watch waits on this
        await asyncio.get_running_loop().create_future()

    relay = StreamRelay(UpstreamResponse(200, [], chunks=chunks()), [], outcomes.append)
    await relay({"type": "http", "method": "POST", "extensions": {}}, receive, send)
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert b"".join(bodies) == b"".join(PIECES) and outcomes == ["complete"]
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
