"""One request's exchange on an HTTP/1.1 connection: what uvicorn's httptools
`RequestResponseCycle` does, compiled.

uvicorn runs every request through its cycle and its protocol's parser callbacks, all
interpreted: the scope, the cycle, an `asyncio.Event` for the body, `receive`, `run_asgi`
come to about 450 bytecode instructions a request, a tenth of the gateway's CPU per
request. This is the same cycle for the ASGI app (the same messages, the same checks and
errors on what it sends, the same 500 when it fails before answering), with the event
replaced by a flag and a future, and the body kept as the pieces that came. The protocol
in proxy/server.py makes one per request; its `JoinedWrites` answers the gateway's own
responses on it without the ASGI sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

App = Callable[[Any, Any, Any], Awaitable[Any]]


class RequestCycle:
    """The ASGI `receive` and `send` of one request, and the task body running its app."""

    def __init__(self, scope: dict[str, Any], transport: Any, flow: Flow, logger: Any, access_logger: Any,
                 access_log: bool, default_headers: list[tuple[bytes, bytes]], expect_100_continue: bool,
                 keep_alive: bool, on_response: Callable[[], None], loop: asyncio.AbstractEventLoop) -> None:
        self.scope = scope
        self.transport = transport
        self.flow = flow
        self.logger = logger
        self.access_logger = access_logger
        self.access_log = access_log
        self.default_headers = default_headers
        self.on_response = on_response
        self.loop = loop
        # connection state
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        # request state: the body's pieces not yet received by the app
        self.pieces: list[bytes] = []
        self.buffered = 0
        self.more_body = True
        # response state
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding: bool | None = None
        self.expected_content_length = 0
        # uvicorn's message_event: set when body arrives, the request ends or the connection is lost
        self._signalled = False
        self._waiters: list[asyncio.Future[None]] = []

    # --- from the protocol

    def add_body(self, body: bytes) -> int:
        """A piece of the request body; what is now buffered (the protocol pauses reading
        past its high-water mark)."""
        self.pieces.append(body)
        self.buffered += len(body)
        return self.buffered

    def signal(self) -> None:
        """Wake a `receive()` waiting for body, the request's end or the disconnect."""
        self._signalled = True
        waiters = self._waiters
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            waiters.clear()

    # --- the task

    async def run_asgi(self, app: App) -> None:
        failure: BaseException | None = None
        result: object = None
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:  # as uvicorn: logged, and a 500 if nothing was sent yet
            failure = exc
        # the answers below are awaited after the except block: compiled, an await inside it
        # can raise the caught exception again (README, compiled code)
        try:
            if failure is not None:
                self.logger.error("Exception in ASGI application\n", exc_info=failure)
                failure = None
                if not self.response_started:
                    await self.send_500_response()
                else:
                    self.transport.close()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
                self.transport.close()
            elif not self.response_started and not self.disconnected:
                self.logger.error("ASGI callable returned without starting response.")
                await self.send_500_response()
            elif not self.response_complete and not self.disconnected:
                self.logger.error("ASGI callable returned without completing response.")
                self.transport.close()
        finally:
            self.on_response = _nothing

    async def send_500_response(self) -> None:
        await self.send({"type": "http.response.start", "status": 500, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21"), (b"connection", b"close")]})
        await self.send({"type": "http.response.body", "body": b"Internal Server Error", "more_body": False})

    # --- ASGI

    async def receive(self) -> dict[str, Any]:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            flow = self.flow
            if flow.read_paused:
                flow.resume_reading()
            if not self._signalled:
                waiter: asyncio.Future[None] = self.loop.create_future()
                self._waiters.append(waiter)
                await waiter
            self._signalled = False
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}  # a new dict each time: an app may change what it is given
        pieces = self.pieces
        body = b"" if not pieces else pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.pieces = []
        self.buffered = 0
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: dict[str, Any]) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self._start(message)
        elif not self.response_complete:
            if kind != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
            self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")

    def _start(self, message: dict[str, Any]) -> None:
        """The status line and headers, checked as uvicorn checks them."""
        self.response_started = True
        self.waiting_for_100_continue = False
        status: int = message["status"]
        headers = self.default_headers + list(message.get("headers", []))
        if self.access_log:
            self.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(self.scope),  # type: ignore[arg-type]
                                    self.scope["method"], get_path_with_query_string(self.scope),  # type: ignore[arg-type]
                                    self.scope["http_version"], status)
        content = [STATUS_LINE[status]]
        asked_close = False
        for name, value in headers:
            if HEADER_RE.search(name):
                raise RuntimeError("Invalid HTTP header name.")
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
                self.keep_alive = False
                asked_close = True
            content.extend((name, b": ", value, b"\r\n"))
        if not self.keep_alive and not asked_close:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked_encoding = True  # neither a length nor an encoding given
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))

    def _body(self, body: bytes, more_body: bool) -> None:
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
        elif self.chunked_encoding:
            content = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
            if not more_body:
                content.append(b"0\r\n\r\n")
            self.transport.write(b"".join(content))
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            self.transport.write(body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.signal()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()


def _nothing() -> None:
    return None


class Flow:
    """uvicorn's `FlowControl` for one connection, compiled: its flags are read on every
    write of a response, as attributes of a native object rather than an instance dict."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._writable = asyncio.Event()
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self._transport.resume_reading()

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            self._writable.clear()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            self._writable.set()
