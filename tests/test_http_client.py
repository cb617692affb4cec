"""The upstream HTTP/1.1 client (proxy/providers/http.py) against scripted servers.

Each server is a plain asyncio server whose handler writes exact bytes, so every framing,
fault and timing the client must survive is staged for real on loopback: body framings,
keep-alive reuse and its limits, a server dropping an idle connection, cut and malformed
answers, connect/read/pool timeouts, back-pressure, TLS.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import socket
import ssl
import subprocess
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from proxy.providers.http import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    DeadlineExceeded,
    HttpPool,
    HttpResponse,
    PoolTimeout,
    ReadTimeout,
    _request_head,
)
from support import UnansweredPort, dead_port, eventually

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """Runs `handler(reader, writer, server)` for every connection; counts them."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body) as received
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def url(self, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bool:
        """Read one request (head and content-length body); False at end of connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.requests.append((head, body))
        return True


def answer(body: bytes = b'{"ok":true}', status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status, len(body), extra, body)


def serving(response: bytes | Callable[[int], bytes], *, close_after: bool = False, delay_s: float = 0) -> Handler:
    """Answer every request on a connection with `response` (or `response(n)` for the nth),
    `delay_s` after it arrived."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader):
            if delay_s:
                await asyncio.sleep(delay_s)
            writer.write(response(len(server.requests)) if callable(response) else response)
            await writer.drain()
            if close_after:
                return

    return handler


def silent(seconds: float) -> Handler:
    """Read each connection's first request and answer nothing for `seconds`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        await asyncio.sleep(seconds)

    return handler


def dripping(pieces: int) -> Handler:
    """Answer with a chunked body of `pieces` one-digit pieces, 50 ms apart."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(pieces):
            writer.write(b"1\r\n%d\r\n" % (i % 10))
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await asyncio.sleep(1)

    return handler


async def get(pool: HttpPool, target: str = "/v1/chat/completions", body: bytes = b"{}") -> tuple[int, bytes]:
    response = await pool.request("POST", target, [("content-type", "application/json")], body)
    try:
        return response.status, await response.read()
    finally:
        response.close()


# ---------------------------------------------------------------- framings


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


GZ = gzip.compress(b'{"zipped":true}')
DEFLATED = zlib.compress(b'{"deflated":true}')

FRAMINGS = [
    ("content-length", answer(b'{"a":1}'), b'{"a":1}', True),
    ("chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(b'{"a"', b":1", b"}"), b'{"a":1}',
     True),
    ("empty content-length", answer(b""), b"", True),
    ("until close", b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + b'{"a":2}', b'{"a":2}', False),
    ("gzip", answer(GZ, extra=b"content-encoding: gzip\r\n"), b'{"zipped":true}', True),
    ("deflate", answer(DEFLATED, extra=b"content-encoding: deflate\r\n"), b'{"deflated":true}', True),
    ("gzip chunked", b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"
     + chunked(GZ[:7], GZ[7:]), b'{"zipped":true}', True),
    ("204", b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
    ("4xx with body", answer(b'{"error":{}}', status=b"400 Bad Request"), b'{"error":{}}', True),
    ("5xx with body", answer(b"oops", status=b"503 Service Unavailable"), b"oops", True),
    ("connection: close header", answer(b"x", extra=b"connection: close\r\n"), b"x", False),
    # interim answers are skipped: the final one is the answer (a final empty 100 once leaked out)
    ("100 continue first", b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b'{"a":3}'), b'{"a":3}', True),
    ("103 early hints first", b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + answer(b'{"a":4}'),
     b'{"a":4}', True),
    ("two interim answers", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
     + answer(b'{"a":5}', status=b"201 Created"), b'{"a":5}', True),
]


@pytest.mark.parametrize("raw, body, reusable", [f[1:] for f in FRAMINGS], ids=[f[0] for f in FRAMINGS])
async def test_framings(raw: bytes, body: bytes, reusable: bool) -> None:
    until_close = b"content-length" not in raw and b"chunked" not in raw and not raw.startswith(b"HTTP/1.1 204")
    async with Server(serving(raw, close_after=until_close)) as server:
        pool = HttpPool(server.url())
        for _ in range(2):
            status, got = await get(pool)
            assert got == body
            assert status == int(raw.rsplit(b"HTTP/1.1 ", 1)[1].split(b" ", 1)[0])
        # a connection is kept only when the answer allows it
        assert server.connections == (1 if reusable else 2)
        await pool.aclose()


async def test_one_connection_reads_every_keep_alive_framing_in_turn() -> None:
    # the connection keeps its parser from one answer to the next: each framing must leave
    # it ready for whatever comes after (a chunked answer after a 204, gzip after interim answers)
    sequence = [f for f in FRAMINGS if f[3]] * 2
    async with Server(serving(lambda n: sequence[n - 1][1])) as server:
        pool = HttpPool(server.url())
        for name, raw, body, _ in sequence:
            status, got = await get(pool)
            assert (got, status) == (body, int(raw.rsplit(b"HTTP/1.1 ", 1)[1].split(b" ", 1)[0])), name
        assert server.connections == 1 and len(server.requests) == len(sequence)
        await pool.aclose()


async def test_request_bytes() -> None:
    async with Server(serving(answer())) as server:
        pool = HttpPool(server.url())
        response = await pool.request("POST", "/v1/embeddings?x=1", [("authorization", "Bearer k"), ("x-a", "b")],
                                      b'{"input":"hi"}')
        await response.read()
        head, body = server.requests[0]
        assert head.startswith(b"POST /v1/embeddings?x=1 HTTP/1.1\r\n")
        assert f"host: 127.0.0.1:{server.port}\r\n".encode() in head
        assert b"authorization: Bearer k\r\n" in head and b"x-a: b\r\n" in head
        assert b"content-length: 14\r\n" in head
        assert body == b'{"input":"hi"}'
        await pool.aclose()


@pytest.mark.parametrize(
    "base, host",
    [
        ("https://api.openai.com/v1", b"api.openai.com"),
        ("http://api.example.com/", b"api.example.com"),
        ("http://127.0.0.1:8080/v1", b"127.0.0.1:8080"),
        ("https://example.com:443", b"example.com"),
        ("https://example.com:8443/x", b"example.com:8443"),
        ("http://[::1]:9000/v1", b"[::1]:9000"),
        ("http://[::1]/v1", b"[::1]"),
        ("https://bücher.example/v1", b"xn--bcher-kva.example"),
    ],
)
def test_host_header(base: str, host: bytes) -> None:
    assert HttpPool(base)._host_header == host


@pytest.mark.parametrize("bad", ["ftp://x/", "localhost:8080", "http:///v1", ""])
def test_only_http_urls(bad: str) -> None:
    with pytest.raises(ValueError):
        HttpPool(bad)


@pytest.mark.parametrize(
    "name, value", [("x-a", "b\r\nx-injected: 1"), ("x-a", "b\nc"), ("x-a\r\nx-b", "c"), ("x:a", "b")]
)
async def test_header_injection_is_refused(name: str, value: str) -> None:
    async with Server(serving(answer())) as server:
        pool = HttpPool(server.url())
        with pytest.raises(ValueError):
            await pool.request("POST", "/v1/x", [(name, value)], b"")
        assert server.requests == []
        await pool.aclose()


# ---------------------------------------------------------------- the pool


async def test_keep_alive_reuses_one_connection() -> None:
    async with Server(serving(answer())) as server:
        pool = HttpPool(server.url())
        for _ in range(5):
            assert (await get(pool))[0] == 200
        assert server.connections == 1 and len(server.requests) == 5
        assert pool.open_connections == 1
        await pool.aclose()
        assert pool.open_connections == 0


async def test_max_keepalive_zero_opens_a_connection_per_request() -> None:
    async with Server(serving(answer())) as server:
        pool = HttpPool(server.url(), max_keepalive=0)
        for _ in range(3):
            await get(pool)
        assert server.connections == 3
        assert pool.open_connections == 0
        await pool.aclose()


@pytest.mark.parametrize("max_keepalive, opened", [(None, 8), (8, 8), (3, 13), (0, 16)])
async def test_a_burst_keeps_what_max_keepalive_allows(max_keepalive: int | None, opened: int) -> None:
    # two bursts of 8 concurrent requests: the second reuses what the first left idle
    async with Server(serving(answer(), delay_s=0.05)) as server:
        pool = HttpPool(server.url(), max_connections=8, max_keepalive=max_keepalive)
        for _ in range(2):
            assert [s for s, _ in await asyncio.gather(*(get(pool) for _ in range(8)))] == [200] * 8
        assert server.connections == opened
        await pool.aclose()


async def test_requests_sent_while_others_are_under_way_each_get_their_answer() -> None:
    """With other requests under way on the pool, a request is written at the end of the
    loop's turn (with the others sent in it); one whose connection dies before then fails
    as a closed connection, never as an error on the event loop."""
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))

    async def every_third_dropped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        if server.connections % 3 == 0:
            writer.transport.abort()  # before the request was even written
            return
        await serving(answer(), delay_s=0.01)(reader, writer, server)

    try:
        async with Server(every_third_dropped) as server:
            pool = HttpPool(server.url(), max_connections=12)
            results = await asyncio.gather(*(get(pool) for _ in range(12)), return_exceptions=True)
            answered = [r for r in results if not isinstance(r, BaseException)]
            assert answered and all(r == (200, b'{"ok":true}') for r in answered)
            assert all(isinstance(r, ConnectionClosed) for r in results if isinstance(r, BaseException))
            # cancelled in the turn it was sent in: its connection closes before the write was due
            busy = asyncio.ensure_future(get(pool))
            await asyncio.sleep(0)
            dropped = asyncio.ensure_future(get(pool))
            for _ in range(3):  # into the request: past the pool's checkout
                await asyncio.sleep(0)
            dropped.cancel()
            assert await busy == (200, b'{"ok":true}')
            with pytest.raises(asyncio.CancelledError):
                await dropped
            assert [await get(pool) for _ in range(3)] == [(200, b'{"ok":true}')] * 3  # and it goes on serving
            await pool.aclose()
    finally:
        loop.set_exception_handler(None)
    assert errors == []


async def test_idle_connections_expire() -> None:
    async with Server(serving(answer())) as server:
        pool = HttpPool(server.url(), keepalive_s=0.05)
        await get(pool)
        await asyncio.sleep(0.1)
        await get(pool)
        assert server.connections == 2
        await pool.aclose()


async def test_max_connections_bounds_concurrency() -> None:
    async with Server(serving(answer(), delay_s=0.05)) as server:
        pool = HttpPool(server.url(), max_connections=2, max_keepalive=2)
        results = await asyncio.gather(*(get(pool) for _ in range(8)))
        assert [status for status, _ in results] == [200] * 8
        assert server.most_open <= 2
        assert pool.open_connections <= 2
        await pool.aclose()


async def test_a_full_pool_serves_waiters_in_order() -> None:
    # new arrivals queue behind waiters instead of taking a connection handed back: no
    # request starves however busy the pool
    async with Server(serving(answer(), delay_s=0.02)) as server:
        pool = HttpPool(server.url(), max_connections=2)
        tasks = []
        for i in range(8):
            tasks.append(asyncio.ensure_future(get(pool, body=b'{"n":%d}' % i)))
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
        order = [int(body[5:-1]) for _, body in server.requests]
        assert order == list(range(8))
        assert server.connections == 2
        await pool.aclose()


async def test_a_waiter_that_gives_up_passes_its_turn_on() -> None:
    gate = asyncio.Event()

    async def gated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader):
            await gate.wait()
            writer.write(answer())

    async with Server(gated) as server:
        pool = HttpPool(server.url(), max_connections=1)
        holder = asyncio.ensure_future(get(pool))
        await eventually(lambda: len(server.requests) == 1, what="the holder's request to arrive")
        quitter = asyncio.ensure_future(get(pool))
        patient = asyncio.ensure_future(get(pool))
        await eventually(lambda: len(pool._waiting) == 2, what="both to wait in line")
        quitter.cancel()
        gate.set()
        assert (await holder)[0] == 200
        assert (await asyncio.wait_for(patient, 2))[0] == 200
        assert quitter.cancelled()
        assert pool.open_connections == 1 and server.connections == 1
        await pool.aclose()


async def test_waiting_for_a_free_connection_times_out() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")  # and the body never comes
        await asyncio.sleep(5)

    async with Server(stall) as server:
        pool = HttpPool(server.url(), max_connections=1, read_timeout_s=0.2)
        busy = await pool.request("POST", "/v1/x", [], b"")  # holds the only connection, body unread
        with pytest.raises(PoolTimeout):
            await get(pool)
        busy.close()  # gives the room back ...
        assert pool.open_connections == 0
        with pytest.raises(ReadTimeout):  # ... and the next request gets a connection
            await get(pool)
        assert server.connections == 2
        await pool.aclose()


@pytest.mark.parametrize(("pool_timeout_s", "deadline_s", "error", "words"), [
    (0.1, None, PoolTimeout, "0.1 s"),  # its own timeout, not the 30 s read timeout
    (30, 0.1, DeadlineExceeded, "free connection"),  # not a PoolTimeout: the caller's deadline ended it
])
async def test_the_wait_for_a_free_connection_ends_at_its_own_timeout_or_the_deadline(
    pool_timeout_s: float, deadline_s: float | None, error: type[Exception], words: str
) -> None:
    async with Server(silent(30)) as server:
        pool = HttpPool(server.url(), max_connections=1, read_timeout_s=30, pool_timeout_s=pool_timeout_s)
        first = asyncio.ensure_future(get(pool))  # takes the only connection and waits on it
        await eventually(lambda: pool.open_connections == 1, what="the first request to take the connection")
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        with pytest.raises(error, match=words):
            await asyncio.wait_for(pool.request("POST", "/v1/x", [], b"", deadline), 5)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await pool.aclose()


async def test_a_connection_the_server_dropped_while_idle_leaves_the_pool() -> None:
    # answers one request per connection, then closes it without saying so
    async with Server(serving(answer(), close_after=True)) as server:
        pool = HttpPool(server.url())
        await get(pool)
        # the pool notices the close while the connection is idle
        await eventually(lambda: pool.open_connections == 0, what="the pool to drop the closed connection")
        assert pool.open_connections == 0
        assert (await get(pool))[0] == 200
        assert server.connections == 2 and len(server.requests) == 2
        await pool.aclose()


async def test_a_reused_connection_closed_as_the_request_arrives_is_retried_once() -> None:
    # the race the retry exists for: the request is written, then the server closes
    # the (idle-looking) connection without reading it
    async def drop_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(answer())
        await reader.readuntil(b"\r\n\r\n")  # the second request: dropped unanswered

    handlers = [drop_second]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await (handlers.pop(0) if handlers else serving(answer()))(reader, writer, server)

    async with Server(handler) as server:
        pool = HttpPool(server.url())
        await get(pool)
        assert (await get(pool))[0] == 200
        assert server.connections == 2
        await pool.aclose()


async def test_a_fresh_connection_closed_before_the_answer_is_an_error_not_a_retry_loop() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)

    async with Server(drop) as server:
        pool = HttpPool(server.url())
        with pytest.raises(ConnectionClosed):
            await get(pool)
        assert server.connections == 1
        assert pool.open_connections == 0
        await pool.aclose()


async def test_a_closed_pool_refuses_requests() -> None:
    async with Server(serving(answer())) as server:
        pool = HttpPool(server.url())
        await pool.aclose()
        assert pool.closed
        with pytest.raises(ConnectionClosed):
            await get(pool)


# ---------------------------------------------------------------- faults


async def test_connection_refused() -> None:
    pool = HttpPool(f"http://127.0.0.1:{dead_port()}/v1")
    with pytest.raises(ConnectError) as info:
        await get(pool)
    assert "refused" in str(info.value).lower()
    assert "127.0.0.1" not in str(info.value)
    assert pool.open_connections == 0


async def test_connect_timeout() -> None:
    with UnansweredPort() as port:
        pool = HttpPool(f"http://127.0.0.1:{port}/v1", connect_timeout_s=0.2)
        with pytest.raises(ConnectTimeout):
            await get(pool)
        assert pool.open_connections == 0


async def test_read_timeout_waiting_for_the_head() -> None:
    async with Server(silent(5)) as server:
        pool = HttpPool(server.url(), read_timeout_s=0.2)
        with pytest.raises(ReadTimeout):
            await get(pool)
        assert pool.open_connections == 0
        await pool.aclose()


async def test_read_timeout_is_per_wait_not_for_the_whole_body() -> None:
    async with Server(dripping(10)) as server:  # 0.5 s in all, never 0.2 s of silence
        pool = HttpPool(server.url(), read_timeout_s=0.2)
        assert await get(pool) == (200, b"0123456789")
        await pool.aclose()


async def test_read_timeout_mid_body() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await asyncio.sleep(5)

    async with Server(stall) as server:
        pool = HttpPool(server.url(), read_timeout_s=0.2)
        response = await pool.request("POST", "/v1/x", [], b"")
        pieces = []
        with pytest.raises(ReadTimeout):
            async for piece in response.chunks():
                pieces.append(piece)
        assert pieces == [b"partial"]
        assert pool.open_connections == 0
        await pool.aclose()


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this",  # cut mid-body
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",  # cut between chunks
        b"HTTP/1.1 200 OK\r\ncontent-len",  # cut mid-head
        b"NOT HTTP AT ALL\r\n\r\n",  # malformed
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",  # fine, but then ...
    ],
    ids=["mid-body", "mid-chunks", "mid-head", "malformed", "complete"],
)
async def test_broken_answers_raise_connection_closed(raw: bytes) -> None:
    async with Server(serving(raw, close_after=True)) as server:
        pool = HttpPool(server.url())
        if raw.endswith(b"hello"):
            assert await get(pool) == (200, b"hello")  # ... a complete answer is not broken by a close after it
        else:
            with pytest.raises(ConnectionClosed):
                await get(pool)
        await eventually(lambda: pool.open_connections == 0, what="the pool to drop the connection")
        assert pool.open_connections == 0  # nothing broken is pooled; the healthy one was dropped on close
        await pool.aclose()


async def test_undecodable_gzip_is_an_error() -> None:
    async with Server(serving(answer(b"not gzip at all", extra=b"content-encoding: gzip\r\n"))) as server:
        pool = HttpPool(server.url())
        with pytest.raises(ConnectionClosed):
            await get(pool)
        await pool.aclose()


# ---------------------------------------------------------------- streams


async def test_pieces_arrive_as_they_are_sent() -> None:
    release = asyncio.Event()

    async def two_parts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await release.wait()
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")

    async with Server(two_parts) as server:
        pool = HttpPool(server.url())
        response = await pool.request("POST", "/v1/x", [], b"")
        assert response.header("Content-Type") == "text/event-stream"
        stream = response.chunks()
        assert await asyncio.wait_for(stream.__anext__(), 1) == b"data: 1"  # before the rest exists
        release.set()
        assert [piece async for piece in stream] == [b"data: 2"]
        assert response.at_eof
        assert pool.open_connections == 1  # read to the end: pooled
        await pool.aclose()


async def test_chunks_parsed_from_one_read_come_as_one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    events = [b"data: %d\n\n" % i for i in range(20)]
    fed: list[bytes] = []
    feed = HttpResponse.feed
    monkeypatch.setattr(HttpResponse, "feed", lambda self, data: (fed.append(data), feed(self, data))[1])

    async def all_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(*events))

    async with Server(all_at_once) as server:
        pool = HttpPool(server.url())
        response = await pool.request("POST", "/v1/x", [], b"")
        pieces = [piece async for piece in response.chunks()]
        assert b"".join(pieces) == b"".join(events)  # in order, nothing lost
        assert len(fed) < len(events)  # httptools' 20 on_body calls are one hand-over per read
        assert pool.open_connections == 1
        await pool.aclose()


async def test_a_malformed_chunk_after_good_ones_keeps_what_came_before() -> None:
    async def then_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"7\r\ndata: 1\r\n7\r\ndata: 2\r\nZZ not a size\r\n")

    async with Server(then_garbage) as server:
        pool = HttpPool(server.url())
        response = await pool.request("POST", "/v1/x", [], b"")
        got = b""
        with pytest.raises(ConnectionClosed, match="malformed"):
            async for piece in response.chunks():
                got += piece
        assert got == b"data: 1data: 2"
        await eventually(lambda: pool.open_connections == 0, what="the broken connection to go")
        await pool.aclose()


async def test_closing_a_stream_early_drops_its_connection() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async with Server(endless) as server:
        pool = HttpPool(server.url())
        response = await pool.request("POST", "/v1/x", [], b"")
        async for _ in response.chunks():
            break
        response.close()
        response.close()  # idempotent
        assert pool.open_connections == 0
        await eventually(lambda: server.open == 0, what="the server to see the connection go")
        assert server.open == 0  # the server saw the connection go: it stops generating
        await pool.aclose()


async def test_a_slow_reader_pauses_the_server() -> None:
    body = b"x" * (2 * 1024 * 1024)

    async with Server(serving(answer(body))) as server:
        pool = HttpPool(server.url())
        response = await pool.request("POST", "/v1/x", [], b"")
        # not reading: the client must stop reading from the socket
        await eventually(lambda: response._paused, what="the client to pause reading")
        assert response._paused
        assert response._buffered < len(body)
        assert await response.read() == body
        response.close()
        await pool.aclose()


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.mark.integration  # openssl makes the certificate, in a process of its own
async def test_tls(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    async with Server(serving(answer(b'{"secure":true}')), ssl_context=server_context) as server:
        trusting = ssl.create_default_context(cafile=str(cert))
        pool = HttpPool(server.url("https", "localhost"), ssl_context=trusting)
        assert await get(pool) == (200, b'{"secure":true}')
        assert await get(pool) == (200, b'{"secure":true}')
        assert server.connections == 1
        await pool.aclose()

        # the system's CAs do not know this certificate: refused, and said so
        untrusting = HttpPool(server.url("https", "localhost"))
        with pytest.raises(ConnectError) as info:
            await get(untrusting)
        assert "certificate" in str(info.value).lower() or "tls" in str(info.value).lower()
        await untrusting.aclose()


async def test_a_reused_connection_closed_late_is_an_error_not_a_resend() -> None:
    # the server read the second request, worked on it for a while, then closed: it may
    # have acted on it, so the client must not send it again by itself
    async def slow_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(answer())
        await server.read_request(reader)
        await asyncio.sleep(0.4)

    async with Server(slow_drop) as server:
        pool = HttpPool(server.url())
        await get(pool)
        with pytest.raises(ConnectionClosed):
            await get(pool)
        assert len(server.requests) == 2 and server.connections == 1
        await pool.aclose()


async def test_an_address_that_never_answers_does_not_hold_up_the_next() -> None:
    # a name with two addresses, the first a black hole (think IPv6 without a route):
    # the second is tried 250 ms later, long before the connect timeout
    async with Server(serving(answer())) as server:
        with UnansweredPort() as dead:
            loop = asyncio.get_running_loop()

            async def two_addresses(host: str, port: int, **kwargs: object) -> list:
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p)) for p in (dead, server.port)]

            original, loop.getaddrinfo = loop.getaddrinfo, two_addresses  # type: ignore[method-assign]
            try:
                # the connect timeout is far beyond the hang guard: an answer at all means the second
                # address was tried while the first still hung
                pool = HttpPool("http://api.example.test/v1", connect_timeout_s=60)
                assert (await asyncio.wait_for(get(pool), 10))[0] == 200
            finally:
                loop.getaddrinfo = original  # type: ignore[method-assign]
            await pool.aclose()


def answers_then_silence(answered: int) -> Handler:
    """Answer the first `answered` requests on a connection at once, then read the next and
    say nothing."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        for _ in range(answered):
            if not await server.read_request(reader):
                return
            writer.write(answer())
            await writer.drain()
        await server.read_request(reader)
        await asyncio.sleep(5)

    return handler


async def test_a_read_timeout_after_many_quick_answers_on_one_connection_still_fires() -> None:
    # the connection's one timer is moved by every wait, not remade: after 30 answers it must
    # still end the 31st wait at its own read timeout
    async with Server(answers_then_silence(30)) as server:
        pool = HttpPool(server.url(), read_timeout_s=0.3)
        for _ in range(30):
            assert await get(pool) == (200, b'{"ok":true}')
        started = time.monotonic()
        with pytest.raises(ReadTimeout, match="waiting for the answer"):
            await get(pool)
        assert 0.25 < time.monotonic() - started < 2
        assert server.connections == 1 and pool.open_connections == 0
        await pool.aclose()


async def test_a_short_wait_after_a_long_one_on_the_same_connection_ends_at_its_own_time() -> None:
    # the first wait set the timer 30 s out; the second, bounded by a 0.2 s deadline, must
    # bring it forward rather than wait for it
    async with Server(answers_then_silence(1)) as server:
        pool = HttpPool(server.url(), read_timeout_s=30)
        assert await get(pool) == (200, b'{"ok":true}')
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await pool.request("POST", "/v1/x", [], b"", deadline=started + 0.2)
        assert 0.15 < time.monotonic() - started < 2
        assert server.connections == 1
        await pool.aclose()


async def test_a_closed_connection_is_not_held_by_its_timer() -> None:
    import gc
    import weakref

    async with Server(serving(answer())) as server:
        pool = HttpPool(server.url(), read_timeout_s=600)
        assert await get(pool) == (200, b'{"ok":true}')
        held = weakref.ref(pool._idle[0])  # its timer is set 600 s out
        await pool.aclose()
        await asyncio.sleep(0.05)
        gc.collect()
        assert held() is None  # the loop's timer would keep it for ten minutes


# ---------------------------------------------------------------- a caller's deadline


async def test_a_deadline_shorter_than_the_read_timeout_ends_the_wait_for_the_head() -> None:
    async with Server(silent(5)) as server:
        pool = HttpPool(server.url(), read_timeout_s=30)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="waiting for the answer"):
            await pool.request("POST", "/v1/x", [], b"", deadline=started + 0.2)
        assert 0.15 < time.monotonic() - started < 2
        assert pool.open_connections == 0
        await pool.aclose()


async def test_a_read_timeout_shorter_than_the_deadline_is_still_a_read_timeout() -> None:
    async with Server(silent(5)) as server:
        pool = HttpPool(server.url(), read_timeout_s=0.2)
        with pytest.raises(ReadTimeout):
            await pool.request("POST", "/v1/x", [], b"", deadline=time.monotonic() + 30)
        await pool.aclose()


async def test_a_deadline_bounds_the_whole_body_when_the_caller_sets_it() -> None:
    # a piece every 50 ms never trips the per-wait read timeout, but the body takes 1 s
    async with Server(dripping(20)) as server:
        pool = HttpPool(server.url(), read_timeout_s=0.2)
        started = time.monotonic()
        response = await pool.request("POST", "/v1/x", [], b"", deadline=started + 0.3)
        response.deadline = started + 0.3
        with pytest.raises(DeadlineExceeded, match="waiting for data"):
            await response.read()
        assert time.monotonic() - started < 0.9
        assert pool.open_connections == 0  # the half-read connection is not pooled
        await pool.aclose()


async def test_a_deadline_ends_the_wait_for_a_connection() -> None:
    with UnansweredPort() as port:
        pool = HttpPool(f"http://127.0.0.1:{port}/v1", connect_timeout_s=30)
        with pytest.raises(DeadlineExceeded, match="connecting"):
            await asyncio.wait_for(pool.request("POST", "/v1/x", [], b"", deadline=time.monotonic() + 0.2), 5)
        assert pool.open_connections == 0


# ---------------------------------------------------------------- the request head

HEAD_CASES = [
    ("no headers", [], b"POST /v1/x HTTP/1.1\r\nhost: up\r\ncontent-length: 2\r\n\r\n"),
    ("two", [("content-type", "application/json"), ("authorization", "Bearer k")],
     b"POST /v1/x HTTP/1.1\r\nhost: up\r\ncontent-type: application/json\r\nauthorization: Bearer k\r\n"
     b"content-length: 2\r\n\r\n"),
    ("a value with colons", [("user-agent", "a:b:c")],
     b"POST /v1/x HTTP/1.1\r\nhost: up\r\nuser-agent: a:b:c\r\ncontent-length: 2\r\n\r\n"),
    ("not latin-1: replaced", [("x-title", "caf\u00e9 \u2603")],
     b"POST /v1/x HTTP/1.1\r\nhost: up\r\nx-title: caf\xe9 ?\r\ncontent-length: 2\r\n\r\n"),
]


@pytest.mark.parametrize(("headers", "head"), [pytest.param(h, b, id=i) for i, h, b in HEAD_CASES])
def test_request_head(headers: list[tuple[str, str]], head: bytes) -> None:
    assert _request_head("POST", "/v1/x", b"host: up\r\n", headers, 2) == head
    assert _request_head("POST", "/v1/x", b"host: up\r\n", iter(headers), 2) == head  # any iterable
    assert _request_head("POST", "/v1/x", b"host: up\r\n", dict(headers), 2) == head  # the adapters' dict


@pytest.mark.parametrize(("headers", "named"), [
    ([("x-a", "1\r\nx-injected: yes")], "x-a"),
    ([("ok", "1"), ("x-b", "1\nx-injected: yes")], "x-b"),
    ([("x-c", "carriage\rreturn")], "x-c"),
    ([("x-d", "1"), ("x-e", "2\r\n")], "x-e"),  # as many line breaks as headers, in the wrong places
    ([("x-f: injected", "1")], "x-f: injected"),
    ([("x-g\r\nx-injected", "1")], "x-g\\r\\nx-injected"),
])
def test_request_head_refuses_a_header_that_would_write_another(headers: list[tuple[str, str]], named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"header '{named}'")):
        _request_head("POST", "/v1/x", b"host: up\r\n", headers, 2)
    with pytest.raises(ValueError, match=re.escape(f"header '{named}'")):
        _request_head("POST", "/v1/x", b"host: up\r\n", dict(headers), 2)
