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
  by aiohappyeyeballs), then TLS with the system's CAs for https (plus a provider's own
  CA, client certificate or no verification at all: `tls_context`);
- egress through an HTTP proxy (`Proxy`, chosen once per pool by `choose_proxy` from the
  provider's setting or HTTPS_PROXY/HTTP_PROXY/NO_PROXY): a CONNECT tunnel with TLS to
  the origin inside it for https, absolute-form requests for http;
- TLS failures that say why (untrusted CA, hostname mismatch, expired, client
  certificate refused) and what to set, and proxy failures that name the proxy (never
  its credentials): `TlsError` and `ProxyFailed`, both ConnectErrors;
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
  provider (PoolTimeout);
- a caller's `deadline` (time.monotonic()) shortens whichever of these waits would run
  past it, on the same timers, and then ends the wait with DeadlineExceeded: no timer
  or context manager of its own per request.
No redirects, cookies or HTTP/2: an LLM API needs none of them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import os
import socket
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import aiohappyeyeballs
import httptools

from proxy.providers.wire import ChunkSource

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


class DeadlineExceeded(HttpError):
    """The caller's deadline passed before the answer (or the wait for a connection) was done."""


class ConnectionClosed(HttpError):
    """The connection closed (or sent something unparseable) before the answer was complete."""


class TlsError(ConnectError):
    """The TLS handshake failed (or the server refused our client certificate right after it);
    `str()` says why in words and which setting would fix it."""


class ProxyFailed(ConnectError):
    """The proxy could not be reached, or refused (or failed) the tunnel; `str()` names the
    proxy and where it was set, never its credentials."""


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
        ssl_context: ssl.SSLContext | None = None,  # None: the system's CAs (tls_context() makes others)
        proxy: Proxy | None = None,  # None: direct (choose_proxy() picks one from settings and environment)
        provider: str = "",  # the provider's name, for the settings error messages point to
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        bracketed = f"[{self.host}]" if ":" in self.host else self.host
        host = bracketed if default_port else f"{bracketed}:{self.port}"
        self._host_header = _ascii(host)
        self._ssl = (ssl_context or _default_tls()) if parts.scheme == "https" else None
        self.provider = provider
        self.proxy = proxy
        # what every request head starts with after its request line; through a proxy to an
        # http origin, requests name the whole URL (absolute form) and carry the proxy's
        # credentials, both fixed here so a request pays nothing for them
        self._head_fields = b"host: %s\r\n" % self._host_header
        self._origin = ""
        if proxy is not None and self._ssl is None:
            self._origin = "http://" + self._host_header.decode()
            if proxy.authorization:
                self._head_fields += b"proxy-authorization: %s\r\n" % proxy.authorization.encode()
        self._authority = _ascii(f"{bracketed}:{self.port}")  # a CONNECT tunnel's target
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
        self, method: str, target: str, headers: dict[str, str] | Iterable[tuple[str, str]], body: bytes = b"",
        deadline: float | None = None,
    ) -> HttpResponse:
        """Send one request; return once the answer's head is in (the body follows). With a
        `deadline`, no wait runs past it (then DeadlineExceeded)."""
        if self._origin:  # an http origin through a proxy: the absolute-form target
            target = self._origin + target
        head = _request_head(method, target, self._head_fields, headers, len(body))
        payload = head + body
        while True:
            connection, reused = await self._acquire(deadline)
            try:
                # with other requests under way on this pool, the write waits for the turn's end
                busy = self._open - len(self._idle) > 1
                return await connection.exchange(payload, self.read_timeout_s, deadline, busy)
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

    async def _acquire(self, deadline: float | None = None) -> tuple[_Connection, bool]:
        if self._closed:
            raise ConnectionClosed("the connection pool was closed")
        if not self._waiting:  # nobody queued before us
            connection = self._take_idle()
            if connection is not None:
                return connection, True
            if self._open < self.max_connections:
                self._open += 1
                return await self._open_new(deadline), False
        handed = await self._wait_in_line(deadline)
        if handed is not None:
            return handed, True
        return await self._open_new(deadline), False  # our place was counted when it was handed over

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

    async def _open_new(self, deadline: float | None = None) -> _Connection:
        try:
            return await self._connect(deadline)
        except BaseException:
            self._open -= 1
            self._pass_room()
            raise

    async def _wait_in_line(self, deadline: float | None = None) -> _Connection | None:
        """Wait to be handed a connection, or (None) room to open one."""
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        wait_s, deadline_binds = _bounded(self.pool_timeout_s, deadline)
        try:
            return await asyncio.wait_for(waiter, wait_s)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())  # handed over, but we are leaving (cancelled)
            if isinstance(exc, asyncio.TimeoutError):
                if deadline_binds:
                    raise DeadlineExceeded("the deadline passed waiting for a free connection") from None
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

    async def _connect(self, deadline: float | None = None) -> _Connection:
        wait_s, deadline_binds = _bounded(self.connect_timeout_s, deadline)
        try:
            return await asyncio.wait_for(self._open_connection(), wait_s)
        except TimeoutError:
            if deadline_binds:
                raise DeadlineExceeded("the deadline passed while connecting") from None
            via = f" through the proxy {self.proxy}" if self.proxy is not None else ""
            raise ConnectTimeout(f"no connection within {self.connect_timeout_s:g} s{via}") from None
        except ssl.SSLError as exc:
            refused = exc
        except OSError as exc:  # the reason only: addresses and ports stay out of client-facing messages
            raise ConnectError(_reason(exc)) from None
        # awaited after the except block: compiled by mypyc, an await inside one can raise the
        # caught exception again
        names = await self._certificate_names() if _mismatch(refused) else ()
        raise tls_failure(refused, self.host, self.provider, names) from None

    async def _open_connection(self) -> _Connection:
        sock = await self._open_socket()
        try:
            _, connection = await asyncio.get_running_loop().create_connection(
                lambda: _Connection(self), sock=sock, ssl=self._ssl,
                server_hostname=self.host if self._ssl else None,
            )
        except BaseException:
            sock.close()
            raise
        return connection

    async def _open_socket(self) -> socket.socket:
        """A TCP connection to the origin; or to the proxy, tunnelled on to the origin for https."""
        proxy = self.proxy
        if proxy is None:
            return await _dial(self.host, self.port)
        try:
            sock = await _dial(proxy.host, proxy.port)
        except OSError as exc:
            raise ProxyFailed(f"could not connect to the proxy {proxy} ({proxy.source}): {_reason(exc)}") from None
        if self._ssl is not None:
            try:
                await _tunnel(sock, proxy, self._authority)
            except BaseException:
                sock.close()
                raise
        return sock

    async def _certificate_names(self) -> tuple[str, ...]:
        """The names the origin's certificate is for, to explain a hostname mismatch: a failed
        handshake keeps no certificate, so a second one checks the chain but not the name.
        Only on that failure; () when even this cannot tell."""
        assert self._ssl is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_default_certs()
        trusted = self._ssl.get_ca_certs(binary_form=True)  # the provider's ca_bundle among them
        if trusted:
            context.load_verify_locations(cadata=b"".join(trusted))
        loop = asyncio.get_running_loop()

        async def peer_certificate() -> dict[str, object]:
            sock = await self._open_socket()
            try:
                transport, _ = await loop.create_connection(
                    asyncio.Protocol, sock=sock, ssl=context, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
            certificate = transport.get_extra_info("peercert") or {}
            transport.abort()
            return certificate

        try:
            return _certificate_names(await asyncio.wait_for(peer_certificate(), self.connect_timeout_s))
        except (OSError, HttpError, TimeoutError):
            return ()

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
        # asked once: Python 3.11's get_running_loop() makes a getpid() system call each time
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.counted = True  # holds one of the pool's max_connections
        self.idle_since = 0.0
        self.lost = False
        self.response: HttpResponse | None = None
        # its result is the answer's head, or the error that ended the wait: carried as a
        # result, not set_exception, so compiled code awaiting it never unwinds through the future
        self._head_waiter: asyncio.Future[HttpResponse | Exception] | None = None
        self._headers: list[tuple[str, str]] = []
        # body pieces of the current read: httptools calls on_body once per chunk of a chunked
        # answer (20 for a 20-event stream in one read); the response is fed them once
        self._body: list[bytes] = []
        # httptools' on_body callback, looked up once when the parser is made: the list's own
        # append, so a piece costs no Python call at all
        self.on_body: Callable[[bytes], None] = self._body.append
        self.parser = httptools.HttpResponseParser(self)
        self._received_any = False
        self._written_at = 0.0
        self._tls_error: TlsError | None = None  # a TLS alert closed it (a client certificate refused)
        # read timeouts: one timer per connection, moved rather than made and cancelled for
        # every wait (a wait of the head, of each piece of a stream); see watch()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # loop time it fires at
        self._watched: asyncio.Future[Any] | None = None  # the wait it bounds, if any
        self._due = 0.0
        self._what = ""
        self._deadline_binds = False

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
            if self._body:
                self._deliver()  # what came before the malformed part is still the answer's
            self._fail(ConnectionClosed(f"malformed answer: {exc}"))
            self.close()
            return
        if self._body:
            self._deliver()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if isinstance(exc, ssl.SSLError):  # a TLS 1.3 server refuses a client certificate only after the handshake
            self._tls_error = tls_failure(exc, self.pool.host, self.pool.provider)
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
            self._head_waiter.set_result(self._tls_error or error)
        self._stop_timer()
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

    def on_message_complete(self) -> None:
        if self._body:
            self._deliver()
        if self.response is not None:
            self.response.keep_alive = self.parser.should_keep_alive()
            self.response.finish()

    # --- used by the pool and the response

    async def exchange(self, payload: bytes, read_timeout_s: float, deadline: float | None = None,
                       batched: bool = False) -> HttpResponse:
        if self.lost or self.transport is None:
            raise self._tls_error or _StaleConnection()
        waiter: asyncio.Future[HttpResponse | Exception] = self.loop.create_future()
        self._head_waiter = waiter
        self._received_any = False
        self._written_at = time.monotonic()
        if batched:  # at the turn's end, with the other requests sent in it: one wake-up of
            self.loop.call_soon(self._send, payload)  # the upstream's process (server.py's JoinedWrites)
        else:
            self.transport.write(payload)
        wait_s, deadline_binds = _bounded(read_timeout_s, deadline)
        self.watch(waiter, wait_s, "waiting for the answer", deadline_binds)
        try:
            answer = await waiter
        finally:
            self.unwatch(waiter)
            self._head_waiter = None
        if isinstance(answer, Exception):
            raise answer
        response = answer
        response.read_timeout_s = read_timeout_s
        if not response.expects_body and not response.complete:
            response.finish()
        return response

    def finished(self, response: HttpResponse) -> None:
        """The consumer has all of `response`: pool the connection or close it."""
        if self.response is response:
            # the parser is kept: a keep-alive answer read to its end leaves llhttp ready for the
            # next one (this client never sends HEAD, whose answer's length llhttp would misread)
            self.response = None
        if response.keep_alive and not self.lost:
            self.pool._release(self)
        else:
            self.pool._discard(self)

    def _send(self, payload: bytes) -> None:
        if not self.lost and self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload)

    def _deliver(self) -> None:
        """The body pieces parsed from one read (callers check there are some), to the
        response as one piece."""
        pieces = self._body
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        if self.response is not None:
            self.response.feed(data)

    def _fail(self, error: Exception) -> None:
        if self.response is not None:
            self.response.fail(error)
        elif self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_result(error)

    def close(self) -> None:
        self.lost = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    # --- read timeouts
    #
    # A wait (for the head, or the next piece of the body) is watched until `due`. The
    # connection's one timer fires at or before the earliest due: when it fires, it expires
    # the wait if its time has come, waits on if the due was moved later, and lapses when
    # nothing is watched. Waits end long before a read timeout, and the next one is due
    # later, so the timer is rarely remade: a request no longer makes and cancels one.

    def watch(self, waiter: asyncio.Future[Any], wait_s: float, what: str, deadline_binds: bool) -> None:
        """Expire `waiter` (its result: ReadTimeout, or DeadlineExceeded when `deadline_binds`)
        unless it is done within `wait_s`."""
        due = self.loop.time() + wait_s
        self._watched, self._due, self._what, self._deadline_binds = waiter, due, what, deadline_binds
        timer = self._timer
        if timer is None or self._timer_at > due:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(due, self._on_timer)
            self._timer_at = due

    def unwatch(self, waiter: asyncio.Future[Any]) -> None:
        if self._watched is waiter:
            self._watched = None

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._watched
        if waiter is None or waiter.done():
            return
        if self._due > self.loop.time():  # moved later since the timer was set
            self._timer = self.loop.call_at(self._due, self._on_timer)
            self._timer_at = self._due
            return
        self._watched = None
        _expire(waiter, self._what, self._deadline_binds)

    def _stop_timer(self) -> None:
        """Closed: the timer must not keep the connection (and its answer) alive until it fires."""
        timer, self._timer = self._timer, None
        self._watched = None
        if timer is not None:
            timer.cancel()


def _expire(waiter: asyncio.Future, what: str, deadline: bool = False) -> None:  # type: ignore[type-arg]
    """End a wait with its timeout, as the waiter's result (the waiting code raises it)."""
    if not waiter.done():
        waiter.set_result(DeadlineExceeded(f"the deadline passed {what}") if deadline
                          else ReadTimeout(f"timed out {what}"))


def _bounded(timeout_s: float, deadline: float | None) -> tuple[float, bool]:
    """How long a wait may last, and whether the deadline (rather than `timeout_s`) ends it."""
    if deadline is None:
        return timeout_s, False
    left = deadline - time.monotonic()
    return (max(left, 0.0), True) if left < timeout_s else (timeout_s, False)


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
        self.deadline: float | None = None  # set by a caller that bounds the whole body (time.monotonic())
        self._connection: _Connection | None = connection
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[Exception | None] | None = None  # its result: None, or the timeout
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

    def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive (everything buffered at once)."""
        return _Pieces(self)

    async def read(self) -> bytes:
        pieces: list[bytes] = []
        while True:  # not `async for`: each StopAsyncIteration costs a traceback in compiled code
            piece = await self.next_piece()
            if piece is None:
                return pieces[0] if len(pieces) == 1 else b"".join(pieces)
            pieces.append(piece)

    async def next_piece(self) -> bytes | None:
        """What arrived of the body since the last call, waiting for it; None at its end."""
        while True:
            if self._pieces:
                return self._take()
            if self._error is not None:
                self.close()
                raise self._error
            if self.complete:
                self._done()
                return None
            await self._wait()

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
        connection = self._connection
        loop = connection.loop if connection is not None else asyncio.get_running_loop()
        waiter: asyncio.Future[Exception | None] = loop.create_future()
        self._waiter = waiter
        wait_s, deadline_binds = _bounded(self.read_timeout_s, self.deadline)
        timer = None
        if connection is not None:
            connection.watch(waiter, wait_s, "waiting for data", deadline_binds)
        else:
            timer = loop.call_later(wait_s, _expire, waiter, "waiting for data", deadline_binds)
        try:
            timed_out = await waiter
        finally:
            if timer is not None:
                timer.cancel()
            elif connection is not None:
                connection.unwatch(waiter)
            self._waiter = None
        if timed_out is not None:
            self.fail(timed_out)
            self.close()
            raise timed_out


class _Pieces(ChunkSource):
    """`HttpResponse.chunks()`: a class rather than an async generator, which mypyc cannot
    compile (`make native`); its async iteration is ChunkSource's."""

    def __init__(self, response: HttpResponse) -> None:
        self._response = response

    async def next_chunk(self) -> bytes | None:
        return await self._response.next_piece()


def _decoder(headers: list[tuple[str, str]]) -> zlib._Decompress | None:
    for name, value in headers:
        if name.lower() == "content-encoding":
            encoding = value.strip().lower()
            if encoding in ("gzip", "x-gzip"):
                return zlib.decompressobj(16 + zlib.MAX_WBITS)
            if encoding == "deflate":
                return zlib.decompressobj()
    return None


_CLEAN_NAMES: Final[set[str]] = set()  # header names seen to hold no colon or line break
MAX_CLEAN_NAMES: Final = 4096


def _request_head(method: str, target: str, fields: bytes, headers: dict[str, str] | Iterable[tuple[str, str]],
                  length: int) -> bytes:
    """The request line and header lines. A line break in a header (or a colon in its name)
    would write headers of its own into the request: ValueError naming it. The lines are
    made as one text and checked once (an SDK's request forwards a dozen headers); a dict
    (what the adapters send) is read as it is, with no list made of it."""
    if isinstance(headers, dict):
        text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        if not _clean(text, len(headers), headers):
            _check_headers(list(headers.items()))
    else:
        pairs = headers if isinstance(headers, list) else list(headers)
        text = "".join([f"{name}: {value}\r\n" for name, value in pairs])
        if not _clean(text, len(pairs), [name for name, _ in pairs]):
            _check_headers(pairs)
    return b"%s %s HTTP/1.1\r\n%s%scontent-length: %d\r\n\r\n" % (
        method.encode(), target.encode("latin-1"), fields, text.encode("latin-1", "replace"), length)


def _clean(text: str, count: int, names: Iterable[str]) -> bool:
    """Each of the `count` header lines in `text` ends in the one CR LF put there, and every
    name is one seen clean before."""
    return text.count("\n") == count and text.count("\r") == count and _CLEAN_NAMES.issuperset(names)


def _check_headers(pairs: list[tuple[str, str]]) -> None:
    for name, value in pairs:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} has a line break or colon in it")
    if len(_CLEAN_NAMES) < MAX_CLEAN_NAMES:
        _CLEAN_NAMES.update(name for name, _ in pairs)


# ---------------------------------------------------------------- egress: proxies


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy a pool's connections go through. `str()` is its address without the
    credentials: the only form of it that messages and logs ever show."""

    host: str
    port: int
    authorization: str | None = field(repr=False)  # the Proxy-Authorization value (Basic, from user:password)
    source: str = "proxy"  # where it was set, for messages: HTTPS_PROXY, providers.NAME.proxy

    @classmethod
    def from_url(cls, url: str, source: str = "proxy") -> Proxy:
        """`http://[user:password@]host[:port]` (a bare `host:port` reads as http, as curl
        does). ValueError, never naming the credentials, for anything else."""
        url = url.strip()
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme.lower() != "http":
            raise ValueError(f"only http:// proxies are supported, not {parts.scheme}:// (an https upstream is "
                             "still TLS from end to end, inside a CONNECT tunnel)")
        try:
            port = parts.port or 80
        except ValueError:
            raise ValueError("the port is not a number from 1 to 65535") from None
        if not parts.hostname:
            raise ValueError("the proxy URL names no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("a proxy URL is http://[user:password@]host[:port], with no path")
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return cls(parts.hostname, port, authorization, source)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def choose_proxy(base_url: str, setting: str | None, env: Mapping[str, str] | None = None,
                 provider: str = "") -> Proxy | None:
    """The proxy for a pool to `base_url`, decided once when the pool is made (a request
    never reads the environment):

    1. the provider's `proxy` setting: a URL, or "none" to go direct whatever the
       environment says (NO_PROXY does not apply to a proxy a provider names itself);
    2. else `https_proxy`/`HTTPS_PROXY` for an https origin, `http_proxy`/`HTTP_PROXY`
       for an http one (lower case first, as curl and urllib read them), unless NO_PROXY
       lists the origin (`bypasses_proxy`) or it is this machine (localhost, a loopback
       address: never sent to a proxy from the environment, as Go's clients do);
    3. else direct.
    An unusable proxy in the environment is a ConnectError naming the variable.
    """
    if setting == "none":
        return None
    if setting is not None:
        return Proxy.from_url(setting, f"providers.{provider}.proxy" if provider else "proxy")
    env = os.environ if env is None else env
    parts = urlsplit(base_url)
    scheme = parts.scheme.lower()
    name, value = next(((n, env[n].strip()) for n in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY")
                        if env.get(n, "").strip()), ("", ""))
    host = parts.hostname or ""
    if not value or _is_loopback(host):
        return None
    port = parts.port or (443 if scheme == "https" else 80)
    if bypasses_proxy(host, port, env.get("no_proxy") or env.get("NO_PROXY") or ""):
        return None
    try:
        return Proxy.from_url(value, name)
    except ValueError as exc:
        raise ProxyFailed(f"{name} is not a usable proxy: {exc}") from None


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether NO_PROXY sends `host` direct, read as curl and httpx read it: entries split
    by commas (or spaces), case-insensitive; `*` is every host; `example.com`,
    `.example.com` and `*.example.com` all mean that domain and every name under it (not
    `notexample.com`); an IP address matches that address (IPv6 in any spelling, with or
    without brackets), a CIDR block (`10.0.0.0/8`) every address in it; `host:port`
    (`[::1]:8080`) only that port. Matched against the host as written in the base URL:
    no name is looked up."""
    host = host.lower().strip("[]").rstrip(".")
    address = _ip(host)
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, entry_port = _split_host_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if "/" in name:
            if address is not None and _in_network(address, name):
                return True
            continue
        entry_address = _ip(name)
        if entry_address is not None or address is not None:
            if entry_address == address:
                return True
            continue
        domain = name.removeprefix("*").strip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _split_host_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6] or [v6]:port
        inside, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return inside, int(port) if port.isdigit() else None
    name, colon, port = entry.rpartition(":")
    if colon and ":" not in name and port.isdigit():  # one colon: host:port; more: a bare IPv6 address
        return name, int(port)
    return entry, None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _in_network(address: ipaddress.IPv4Address | ipaddress.IPv6Address, block: str) -> bool:
    try:
        return address in ipaddress.ip_network(block.strip("[]"), strict=False)
    except ValueError:
        return False


def _is_loopback(host: str) -> bool:
    host = host.lower().strip("[]").rstrip(".")
    address = _ip(host)
    return address.is_loopback if address is not None else host == "localhost" or host.endswith(".localhost")


async def _tunnel(sock: socket.socket, proxy: Proxy, authority: bytes) -> None:
    """CONNECT through the proxy to `authority` (host:port) on a fresh socket; returns once
    the proxy said 2xx, with nothing read past its answer (the origin's TLS begins next)."""
    loop = asyncio.get_running_loop()
    request = b"CONNECT %s HTTP/1.1\r\nhost: %s\r\n" % (authority, authority)
    if proxy.authorization:
        request += b"proxy-authorization: %s\r\n" % proxy.authorization.encode()
    where = f"the proxy {proxy} ({proxy.source})"
    head = b""
    try:
        await loop.sock_sendall(sock, request + b"\r\n")
        while b"\r\n\r\n" not in head:
            if len(head) > _MAX_PROXY_HEAD:
                raise ProxyFailed(f"{where} answered CONNECT with a head of over {_MAX_PROXY_HEAD} bytes")
            # a byte at a time would be exact but slow; a proxy sends nothing after its 2xx
            # head until we speak, so reading ahead can only ever take in an error's body
            data = await loop.sock_recv(sock, 4096)
            if not data:
                raise ProxyFailed(f"{where} closed the connection instead of answering CONNECT")
            head += data
    except OSError as exc:
        raise ProxyFailed(f"{where} broke off the CONNECT: {_reason(exc)}") from None
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code, _, phrase = rest.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit():
        raise ProxyFailed(f"{where} answered CONNECT with something that is not HTTP")
    status = int(code)
    if not 200 <= status < 300:
        phrase = "".join(c for c in phrase if c.isprintable())[:60]
        target = authority.decode()
        raise ProxyFailed(f"{where} refused the tunnel to {target}: {status} {phrase}".rstrip()
                          + _refusal_hint(status, proxy, target))
    if not head.endswith(b"\r\n\r\n"):
        raise ProxyFailed(f"{where} sent data after its answer to CONNECT, before TLS began")


_MAX_PROXY_HEAD = 16 * 1024


def _refusal_hint(status: int, proxy: Proxy, target: str) -> str:
    if status == 407:
        if proxy.authorization:
            return f" (it did not accept the user and password in {proxy.source})"
        return f" (it wants credentials: http://user:password@host:port in {proxy.source})"
    if status == 403:
        return " (its policy does not allow this destination)"
    if status in (502, 503, 504):
        return f" (it could not reach {target})"
    return ""


# ---------------------------------------------------------------- egress: TLS


def tls_context(*, ca_bundle: str | None = None, client_cert: str | None = None, client_key: str | None = None,
                verify: bool = True) -> ssl.SSLContext:
    """A provider's TLS settings as a context, to build once per provider (loading the
    system's CAs takes ~10 ms): `ca_bundle` is trusted in addition to the system's CAs,
    never instead; `client_cert` (with `client_key`, or a key in the same file) is
    presented when the server asks (mTLS); `verify=False` accepts any certificate.
    No setting: the shared default context. A file that cannot be loaded is a TlsError."""
    if ca_bundle is None and client_cert is None and verify:
        return _default_tls()
    context = ssl.create_default_context()
    loading = ""
    try:
        if ca_bundle is not None:
            loading = f"the CA bundle {ca_bundle}"
            context.load_verify_locations(cafile=ca_bundle)
        if client_cert is not None:
            loading = f"the client certificate {client_cert}" + (f" and key {client_key}" if client_key else "")
            context.load_cert_chain(client_cert, client_key, password=_no_password)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise TlsError(f"TLS: cannot load {loading}: {reason}") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _no_password() -> str:
    # an encrypted key would make OpenSSL prompt on the terminal, stalling the event loop
    raise ValueError("the key is encrypted; give an unencrypted PEM key")


# X509_V_ERR_* codes (OpenSSL's x509_vfy.h) as ssl.SSLCertVerificationError.verify_code has them
_UNTRUSTED = {2, 18, 19, 20, 21}  # no issuer, self-signed, self-signed in the chain, no local issuer, leaf unverifiable
_NOT_YET_VALID, _EXPIRED, _REVOKED = 9, 10, 23
_NAME_MISMATCH = {62, 64}  # hostname, IP address

# alerts a server sends when it refuses our client certificate (or wants one and got none)
_CLIENT_CERT_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "it requires one and none was sent",
    "TLSV1_ALERT_UNKNOWN_CA": "it does not trust the CA that signed it",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate unknown",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "it has expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "it was revoked",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported certificate",
    "TLSV1_ALERT_ACCESS_DENIED": "access denied",
}


def tls_failure(exc: ssl.SSLError, host: str, provider: str = "", names: tuple[str, ...] = ()) -> TlsError:
    """Why a TLS handshake failed, in words, with the setting that would fix it: OpenSSL
    says CERTIFICATE_VERIFY_FAILED alike for an unknown CA and for a wrong name.
    `names`: what the certificate is for, when known (a hostname mismatch)."""
    setting = f"providers.{provider}." if provider else ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code, why = exc.verify_code, exc.verify_message or exc.reason or "verify failed"
        if code in _UNTRUSTED:
            return TlsError(f"TLS: the certificate of {host} is not trusted ({why}: its CA is not in the trust "
                            f"store; set {setting}ca_bundle to a PEM file with that CA)")
        if code in _NAME_MISMATCH:
            valid_for = ", ".join(names) if names else "other names"
            return TlsError(f"TLS: hostname mismatch: the certificate is for {valid_for}, not {host}")
        if code == _EXPIRED:
            return TlsError(f"TLS: the certificate of {host} has expired")
        if code == _NOT_YET_VALID:
            return TlsError(f"TLS: the certificate of {host} is not valid yet (is this machine's clock right?)")
        if code == _REVOKED:
            return TlsError(f"TLS: the certificate of {host} was revoked")
        return TlsError(f"TLS: the certificate of {host} was refused ({why})")
    reason = exc.reason or ""
    if reason in _CLIENT_CERT_ALERTS:
        return TlsError(f"TLS: the server {host} refused the client certificate ({_CLIENT_CERT_ALERTS[reason]}; "
                        f"set {setting}client_cert and {setting}client_key to one it accepts)")
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
        return TlsError(f"TLS: the server {host} ended the handshake (no protocol or cipher in common, or it "
                        f"wants a client certificate: {setting}client_cert)")
    if reason == "WRONG_VERSION_NUMBER":
        return TlsError(f"TLS: {host} did not answer in TLS (a plain-HTTP port behind an https:// base_url?)")
    return TlsError(f"TLS handshake with {host} failed: {reason or exc}")


def _mismatch(exc: ssl.SSLError) -> bool:
    return isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code in _NAME_MISMATCH


def _certificate_names(certificate: dict[str, object]) -> tuple[str, ...]:
    """The DNS names and addresses a certificate (as getpeercert() decodes it) is for."""
    names = [value for kind, value in certificate.get("subjectAltName", ())  # type: ignore[attr-defined]
             if kind in ("DNS", "IP Address")]
    if not names:
        names = [value for rdn in certificate.get("subject", ()) for key, value in rdn  # type: ignore[attr-defined]
                 if key == "commonName"]
    return tuple(str(name).strip() for name in names)


# ---------------------------------------------------------------- sockets


async def _dial(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # every address the name has, IPv6 and IPv4 raced 250 ms apart (RFC 8305): a host
    # whose IPv6 route is a black hole still connects at once over IPv4
    sock = await aiohappyeyeballs.start_connection(addresses, happy_eyeballs_delay=0.25, interleave=1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return exc.strerror  # "Name or service not known", where os.strerror has "Unknown error -2"
    return os.strerror(exc.errno) if exc.errno else "could not connect"


def _ascii(host: str) -> bytes:
    return host.encode("idna") if not host.isascii() else host.encode()
