"""A lean HTTP/1.1 client for upstream calls: one keep-alive connection pool per provider.

Why not aiohttp (which this replaced): measured on this machine, one sequential
request to a local mock cost aiohttp ~210 µs of CPU and this client ~90 µs, and the
upstream call is on every request's critical path — it was a third of the proxy's CPU at
load and 0.3 ms of its added time to the first streamed event (README, Performance).
The protocol work is done by httptools (llhttp, the parser uvicorn uses): status line,
headers, content-length, chunked and read-until-close bodies. What is left here is the
connection handling a gateway needs and nothing else:

- a pool per (scheme, host, port): newest idle connection first, at most
  `max_connections` open and `max_keepalive` idle, idle ones dropped after
  `keepalive_s` or as soon as the server closes them;
- connecting to every address a name has, IPv6 and IPv4 raced 250 ms apart (RFC 8305,
  by aiohappyeyeballs), then TLS with the system's CAs for https;
- one write per request (head and body together);
- `connect_timeout_s` for connecting, `read_timeout_s` for each wait on the server (the
  head, then every piece of the body), so a stream can run as long as it keeps talking;
- a request whose reused connection closes right after it was written, with no byte of
  an answer (the server had dropped it as idle and never saw the request), is sent once
  more on a fresh connection; a connection that closes later is an error, not a resend,
  since the server may have worked on the request (the retry policy decides);
- back-pressure: reading from the server pauses while a slow client leaves more than
  `_HIGH_WATER` bytes unread;
- gzip/deflate answers are decompressed (we ask for none, but a server may insist);
- interim 1xx answers (100 Continue, 103 Early Hints) are skipped: the final one counts;
- `pool_timeout_s` bounds the wait for a free connection when all `max_connections`
  are busy: that is this gateway's saturation, which the caller must not blame on the
  provider (PoolTimeout).
No redirects, cookies, proxies or HTTP/2: an LLM API needs none of them.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterable
from urllib.parse import urlsplit

import aiohappyeyeballs
import httptools

_HIGH_WATER = 256 * 1024  # unread body bytes at which reading from the server pauses
_LOW_WATER = 64 * 1024  # ... and resumes
_NO_BODY = frozenset({204, 304})
_RESEND_WINDOW_S = 0.25  # a reused connection closing this soon after a request: resend it once


@functools.lru_cache(maxsize=1)
def _default_tls() -> ssl.SSLContext:
    """One context for every pool: loading the system's CAs takes ~10 ms on the event loop,
    too long to repeat for each provider pool a config reload creates."""
    return ssl.create_default_context()


class HttpError(Exception):
    """The server could not be reached or broke the exchange; `str()` says how."""


class ConnectError(HttpError):
    pass


class ConnectTimeout(HttpError):
    pass


class ReadTimeout(HttpError):
    pass


class PoolTimeout(HttpError):
    pass


class ConnectionClosed(HttpError):
    """The connection closed (or sent something unparseable) before the answer was complete."""


class HttpPool:
    """Connections to one origin (`base_url`'s scheme, host and port)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 100,
        max_keepalive: int | None = None,  # idle connections kept; None: max_connections
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        pool_timeout_s: float | None = None,  # waiting for a free connection; None: read_timeout_s
        keepalive_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        host = host if default_port else f"{host}:{self.port}"
        self._host_header = host.encode("idna") if not host.isascii() else host.encode()
        self._ssl = (ssl_context or _default_tls()) if parts.scheme == "https" else None
        self.max_connections = max_connections
        self.max_keepalive = max_connections if max_keepalive is None else max_keepalive
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.pool_timeout_s = read_timeout_s if pool_timeout_s is None else pool_timeout_s
        self.keepalive_s = keepalive_s
        self._idle: list[_Connection] = []
        self._open = 0  # connections open or being opened
        self._waiting: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def closed(self) -> bool:
        return self._closed

    async def request(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> HttpResponse:
        """Send one request; return once the answer's head is in (the body follows)."""
        head = _request_head(method, target, self._host_header, headers, len(body))
        payload = head + body
        while True:
            connection, reused = await self._acquire()
            try:
                return await connection.exchange(payload, self.read_timeout_s)
            except _StaleConnection:
                self._discard(connection)
                if not reused:  # a fresh connection closed on us: that is the server's answer
                    raise ConnectionClosed("connection closed before the answer began") from None
            except BaseException:
                self._discard(connection)
                raise

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.counted = False
            connection.close()
            self._open -= 1
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionClosed("the connection pool was closed"))

    # --- the pool: first come, first served once it is full

    async def _acquire(self) -> tuple[_Connection, bool]:
        if self._closed:
            raise ConnectionClosed("the connection pool was closed")
        if not self._waiting:  # nobody queued before us
            connection = self._take_idle()
            if connection is not None:
                return connection, True
            if self._open < self.max_connections:
                self._open += 1
                return await self._open_new(), False
        handed = await self._wait_in_line()
        if handed is not None:
            return handed, True
        return await self._open_new(), False  # our place was counted when it was handed over

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the newest: the likeliest to be alive
            if connection.usable and now - connection.idle_since < self.keepalive_s:
                return connection
            connection.counted = False
            connection.close()
            self._open -= 1
        return None

    async def _open_new(self) -> _Connection:
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._pass_room()
            raise

    async def _wait_in_line(self) -> _Connection | None:
        """Wait to be handed a connection, or (None) room to open one."""
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await asyncio.wait_for(waiter, self.pool_timeout_s)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())  # handed over, but we are leaving (cancelled)
            if isinstance(exc, asyncio.TimeoutError):
                raise PoolTimeout(f"no free connection within {self.pool_timeout_s:g} s") from None
            raise
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)

    def _give_back(self, handed: _Connection | None) -> None:
        if handed is None:
            self._open -= 1
            self._pass_room()
        else:
            self._release(handed)

    def _hand_over(self, handed: _Connection | None) -> bool:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(handed)
                return True
        return False

    def _pass_room(self) -> None:
        """A connection closed: the first in line may open one (its place counted now)."""
        if self._waiting and self._open < self.max_connections:
            self._open += 1
            if not self._hand_over(None):
                self._open -= 1

    async def _connect(self) -> _Connection:
        try:
            return await asyncio.wait_for(self._open_connection(), self.connect_timeout_s)
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {self.connect_timeout_s:g} s") from None
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS handshake failed: {exc.reason or exc}") from None
        except OSError as exc:  # the reason only: addresses and ports stay out of client-facing messages
            raise ConnectError(os.strerror(exc.errno) if exc.errno else "could not connect") from None

    async def _open_connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        addresses = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        # every address the name has, IPv6 and IPv4 raced 250 ms apart (RFC 8305): a host
        # whose IPv6 route is a black hole still connects at once over IPv4
        sock = await aiohappyeyeballs.start_connection(addresses, happy_eyeballs_delay=0.25, interleave=1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self), sock=sock, ssl=self._ssl,
                server_hostname=self.host if self._ssl else None,
            )
        except BaseException:
            sock.close()
            raise
        return connection

    def _release(self, connection: _Connection) -> None:
        """An answer was read to its end: the next in line gets the connection, or it waits
        idle for the next request (within max_keepalive), or it closes."""
        if not self._closed and connection.usable:
            if self._hand_over(connection):
                return
            if len(self._idle) < self.max_keepalive:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
                return
        self._discard(connection)

    def _discard(self, connection: _Connection) -> None:
        if connection.counted:
            connection.counted = False
            connection.close()
            self._open -= 1
            self._pass_room()

    def _forget_idle(self, connection: _Connection) -> None:
        """The server closed a connection that was waiting in the pool."""
        if connection in self._idle:
            self._idle.remove(connection)
            self._discard(connection)


class _StaleConnection(Exception):
    """A reused connection closed before any byte of the answer: safe to send again."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the answer it is currently receiving."""

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.counted = True  # holds one of the pool's max_connections
        self.idle_since = 0.0
        self.lost = False
        self.response: HttpResponse | None = None
        self._head_waiter: asyncio.Future[HttpResponse] | None = None
        self._headers: list[tuple[str, str]] = []
        self._received_any = False
        self._written_at = 0.0

    @property
    def usable(self) -> bool:
        return not self.lost and self.response is None and self.transport is not None

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionClosed(f"malformed answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        response = self.response
        if response is not None and not response.complete:
            if response.until_close and exc is None:
                response.finish()  # the body was "everything until the server closes"
            else:
                self._fail(ConnectionClosed("connection closed before the answer was complete"))
        elif self._head_waiter is not None and not self._head_waiter.done():
            # closed at once, unanswered: the server had dropped the connection as idle and
            # never saw the request. Later than that it may have worked on it: no resend.
            stale = not self._received_any and time.monotonic() - self._written_at < _RESEND_WINDOW_S
            error: Exception = _StaleConnection() if stale else ConnectionClosed(
                "connection closed before the answer was complete")
            self._head_waiter.set_exception(error)
        if self.response is None and self._head_waiter is None:
            self.pool._forget_idle(self)

    # --- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self._headers = []
            return
        response = HttpResponse(self, status, self._headers)
        self._headers = []
        if status in _NO_BODY:
            response.expects_body = False
        else:
            names = {name.lower() for name, _ in response.headers}
            response.until_close = "content-length" not in names and "transfer-encoding" not in names
        self.response = response
        waiter, self._head_waiter = self._head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response.feed(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response.keep_alive = self.parser.should_keep_alive()
            self.response.finish()

    # --- used by the pool and the response

    async def exchange(self, payload: bytes, read_timeout_s: float) -> HttpResponse:
        if self.lost or self.transport is None:
            raise _StaleConnection()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[HttpResponse] = loop.create_future()
        self._head_waiter = waiter
        self._received_any = False
        self._written_at = time.monotonic()
        self.transport.write(payload)
        timer = loop.call_later(read_timeout_s, _expire, waiter, "waiting for the answer")
        try:
            response = await waiter
        finally:
            timer.cancel()
            self._head_waiter = None
        response.read_timeout_s = read_timeout_s
        if not response.expects_body and not response.complete:
            response.finish()
        return response

    def finished(self, response: HttpResponse) -> None:
        """The consumer has all of `response`: pool the connection or close it."""
        if self.response is response:
            self.response = None
            self.parser = httptools.HttpResponseParser(self)
        if response.keep_alive and not self.lost:
            self.pool._release(self)
        else:
            self.pool._discard(self)

    def _fail(self, error: Exception) -> None:
        if self.response is not None:
            self.response.fail(error)
        elif self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(error)

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future, what: str) -> None:  # type: ignore[type-arg]
    if not waiter.done():
        waiter.set_exception(ReadTimeout(f"timed out {what}"))


class HttpResponse:
    """An answer whose head is in; the body is read with `read()` or `chunks()`, once.

    Reading it to the end returns the connection to the pool; `close()` (idempotent)
    drops the connection if the body was not read to the end, so the server stops sending.
    """

    def __init__(self, connection: _Connection, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.headers = headers
        self.keep_alive = False
        self.expects_body = True
        self.until_close = False
        self.complete = False
        self.read_timeout_s = 60.0
        self._connection: _Connection | None = connection
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder = _decoder(headers)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def at_eof(self) -> bool:
        return self.complete and not self._pieces

    # --- filled by the connection

    def feed(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as exc:
                self.fail(ConnectionClosed(f"undecodable body: {exc}"))
                return
            if not data:
                return
        self._pieces.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused and self._connection is not None:
            transport = self._connection.transport
            if transport is not None:
                transport.pause_reading()
                self._paused = True
        self._wake()

    def finish(self) -> None:
        if self._error is not None:
            return
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._pieces.append(tail)
        self.complete = True
        self._wake()

    def fail(self, error: Exception) -> None:
        if not self.complete and self._error is None:
            self._error = error
            self.keep_alive = False
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the consumer's side

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive (everything buffered at once)."""
        while True:
            if self._pieces:
                yield self._take()
                continue
            if self._error is not None:
                self.close()
                raise self._error
            if self.complete:
                self._done()
                return
            await self._wait()

    async def read(self) -> bytes:
        pieces = []
        async for piece in self.chunks():
            pieces.append(piece)
        return b"".join(pieces)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if not self.complete:
            self.keep_alive = False
            connection.close()
        connection.finished(self)

    def _take(self) -> bytes:
        data = self._pieces.popleft() if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces.clear()
        self._buffered = 0
        if self._paused and self._connection is not None and self._connection.transport is not None:
            self._paused = False
            self._connection.transport.resume_reading()
        return data

    def _done(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.finished(self)

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self.read_timeout_s, _expire, waiter, "waiting for data")
        try:
            await waiter
        except ReadTimeout as exc:
            self.fail(exc)
            self.close()
            raise
        finally:
            timer.cancel()
            self._waiter = None


def _decoder(headers: list[tuple[str, str]]) -> zlib._Decompress | None:
    for name, value in headers:
        if name.lower() == "content-encoding":
            encoding = value.strip().lower()
            if encoding in ("gzip", "x-gzip"):
                return zlib.decompressobj(16 + zlib.MAX_WBITS)
            if encoding == "deflate":
                return zlib.decompressobj()
    return None


def _request_head(method: str, target: str, host: bytes, headers: Iterable[tuple[str, str]], length: int) -> bytes:
    lines = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method.encode(), target.encode("latin-1"), host)]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} has a line break or colon in it")
        lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1", "replace")))
    lines.append(b"content-length: %d\r\n\r\n" % length)
    return b"".join(lines)
