"""The cache's lookups on a Redis connection of their own: GETs pipelined on one TCP
connection, replies parsed by hiredis, each GET cut off by a timer.

A lookup is on every cached request's path. Through redis-py's asyncio client a GET costs
a pool checkout, a command packed in Python, an `asyncio.timeout` around its read and, for
our own time box, `asyncio.wait_for` (a task per call in Python 3.11): about four times
what its bytes on the wire cost. Here a GET is one write and one future. Redis answers in
order, so the GETs of many requests share the connection in flight; a GET that timed out
keeps its place in the line, and its reply, when it comes, is read and dropped, so the
replies after it stay matched. A lost connection fails what is in flight and the next GET
connects again.

Failures reach a GET as its future's result (an exception object it raises itself), never
through `set_exception`: code compiled by mypyc that awaits a future holding an exception
can leave that exception in the thread's handled-exception state, and a later `finally`
with an `await` in it, in any request, raises it again.

Only for `redis://` URLs (TCP, with the URL's AUTH and SELECT); `for_url` gives None for
TLS (`rediss://`) and Unix sockets, whose lookups go through redis-py as before.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

MAX_IN_FLIGHT = 10_000  # GETs waiting on one connection; past this a GET fails at once (Redis is stuck)


def command(*parts: bytes) -> bytes:
    """One command in RESP, Redis's wire format."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


class _Link(asyncio.Protocol):
    """One connection: commands written as they come, replies matched to them in order."""

    def __init__(self, on_lost: Callable[[_Link], None]) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport instances
        self.closed = False
        self._on_lost = on_lost

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader, waiting = self.reader, self.waiting
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError:
                self.abort()
                return
            if reply is False:
                return
            if not waiting:  # a reply nobody asked for: the connection is out of step
                self.abort()
                return
            future = waiting.popleft()
            if future.done():  # timed out or cancelled: its reply is dropped
                continue
            future.set_result(ResponseError(str(reply)) if isinstance(reply, hiredis.ReplyError) else reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = RedisConnectionError(f"the connection to Redis was lost: {exc}" if exc
                                     else "Redis closed the connection")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(error)
        self._on_lost(self)

    def send(self, loop: asyncio.AbstractEventLoop, request: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = loop.create_future()
        self.waiting.append(future)
        self.transport.write(request)
        return future

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class RedisReads:
    """GETs on one pipelined connection to the Redis a `redis://` URL names."""

    def __init__(self, host: str, port: int, db: int, username: str | None, password: str | None) -> None:
        self.host, self.port = host, port
        greeting: list[bytes] = []
        if password:
            greeting.append(command(b"AUTH", username.encode(), password.encode()) if username
                            else command(b"AUTH", password.encode()))
        if db:
            greeting.append(command(b"SELECT", str(db).encode()))
        self._greeting = greeting
        self._link: _Link | None = None
        self._connecting: asyncio.Task[_Link] | None = None

    @classmethod
    def for_url(cls, url: str) -> RedisReads | None:
        if not url.startswith("redis://"):
            return None
        options = parse_url(url)
        return cls(str(options.get("host") or "localhost"), int(options.get("port") or 6379),
                   int(options.get("db") or 0), options.get("username"), options.get("password"))

    async def get(self, key: str, timeout: float) -> bytes | None:
        """The value at `key` (None when there is none). TimeoutError past `timeout`
        seconds; redis-py's ConnectionError or ResponseError when Redis cannot answer."""
        link = self._link
        if link is None or link.closed:
            link = await self._connected(timeout)
        if len(link.waiting) >= MAX_IN_FLIGHT:
            raise RedisConnectionError(f"{MAX_IN_FLIGHT} reads are waiting for Redis")
        encoded = key.encode()
        loop = asyncio.get_running_loop()
        # command(b"GET", encoded), written out: one format instead of a join over a generator
        future = link.send(loop, b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(encoded), encoded))
        timer = loop.call_later(timeout, _expire, future)
        try:
            value = await future
        finally:
            timer.cancel()
        if isinstance(value, BaseException):
            raise value
        return value if value is None or isinstance(value, bytes) else None

    async def _connected(self, timeout: float) -> _Link:
        """The connection, made (once, whoever asks first) if there is none."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect(timeout))
            self._connecting.add_done_callback(self._connect_done)
        return await asyncio.wait_for(asyncio.shield(self._connecting), timeout)

    def _connect_done(self, task: asyncio.Task[_Link]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._link = task.result()

    async def _connect(self, timeout: float) -> _Link:
        loop = asyncio.get_running_loop()
        _, link = await asyncio.wait_for(loop.create_connection(lambda: _Link(self._lost), self.host, self.port),
                                         timeout)
        try:
            replies = [link.send(loop, greeting) for greeting in self._greeting]
            for reply in await asyncio.wait_for(asyncio.gather(*replies), timeout) if replies else []:
                if isinstance(reply, BaseException):
                    raise reply
        except BaseException:
            link.abort()
            raise
        return link

    def _lost(self, link: _Link) -> None:
        if self._link is link:
            self._link = None

    def close(self) -> None:
        link, self._link = self._link, None
        if link is not None and link.transport is not None:
            link.transport.close()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(TimeoutError())
