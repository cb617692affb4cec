"""The HTTP server's guard rails below the ASGI app: request heads bounded in size and
in time, and connections that send nothing closed.

uvicorn's httptools protocol has neither bound: a client may trickle one header line
every few seconds, send a 1 MiB header, or open a connection and say nothing, and hold
its socket (and memory) indefinitely without ever showing a key. This subclass adds:

- `server.max_header_kb`: a request head (request line and headers) larger than this
  gets 431 and the connection is closed, checked as bytes arrive, so at most one read
  past the limit is ever buffered;
- `server.header_timeout_s`: a head that has begun but is not complete this long after
  its first byte gets 408 and a close (the timer is armed only for a head that did not
  arrive whole in its first read, so an ordinary request costs nothing);
- a new connection that sends nothing is closed after `server.keepalive_timeout_s`, as
  an idle keep-alive connection already is.

It also writes the gateway's responses itself (`JoinedWrites`): the bytes uvicorn's sends
would write, without their per-header checks, which cost a cache hit more than its
routing does. Its per-request callbacks are compiled here, and each request runs in a
compiled `RequestCycle` (proxy/cycle.py) with uvicorn's semantics: interpreted, uvicorn's
callbacks and cycle were a tenth of the gateway's CPU per request.

The limits are read from the serving config when a head begins, so reloads apply. The
refusals are JSON in the OpenAI error shape (Anthropic's on `/v1/messages`), like every
other error of the gateway.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httptools
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, service_unavailable
from uvicorn.protocols.http.httptools_impl import STATUS_LINE as UVICORN_STATUS_LINES
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from proxy.cycle import Flow, RequestCycle
from proxy.errors import error_body

LIMITS_KEY = "switchyard.head_limits"  # in the lifespan state: a LimitsRef
DISCONNECT_KEY: Final = "switchyard.disconnect"  # in a request scope's extensions: its DisconnectHook
JOIN_KEY: Final = "switchyard.join"  # ... and its connection's JoinedWrites


@dataclass(frozen=True, slots=True)
class HeadLimits:
    max_bytes: int = 64 * 1024
    timeout_s: float = 10.0


DEFAULT_LIMITS = HeadLimits()
TASK_NAME = "switchyard-request"  # each request's task: named, Python 3.11 formats "Task-<n>" for every one
_STATUS_LINES: Final[dict[int, bytes]] = UVICORN_STATUS_LINES  # (a name of this module: compiled, a static)
_SLASH: Final = ord("/")
_QUERY: Final = ord("?")  # (`int in bytes` is a plain memchr)
_FRAGMENT: Final = ord("#")
_BLANK_BYTES: Final = b" \t"
_CONTROL: Final = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])  # what no header may hold (but the joins' CR LF)
# header names a response head is rendered knowing about
_LENGTH: Final = 1
_ENCODING: Final = 2
_CONNECTION: Final = 4
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class DisconnectHook:
    """Tells a request the moment its connection is lost, without a task per request
    waiting on `receive()` for `http.disconnect` (the ASGI way, and ~20 µs a request)."""

    __slots__ = ("callback", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.callback: Callable[[], None] | None = None
        # the connection's loop, for asyncio.current_task(loop): without it, Python 3.11
        # looks the running loop up with a getpid() system call
        self.loop = loop

    def fire(self) -> None:
        callback, self.callback = self.callback, None
        if callback is not None:
            callback()


class JoinedWrites:
    """The connection's transport as the request cycle sees it, and the gateway's own
    way to answer on it. A complete response is written by `respond` (head and body in one
    write, the head rendered and checked once), a stream by `begin_stream`, `stream_chunk`
    and `end_stream`; what those leave to uvicorn's ASGI sends (HEAD, odd statuses, unsafe
    headers) calls `join_next()` before its head, which then waits for the body so both
    leave in one write: uvicorn writes them apart, a second syscall and a second wake-up of
    the client.

    A stream's head, and what the stream writes after it in the same turn of the event
    loop, leave as one write at the end of that turn (`flush`): a stream whose upstream
    answered in one read costs one write, not three (head, events, last chunk). While
    other requests are being answered, every write waits for the turn's end, so the
    writes of all connections answered in a turn go out together: each write to a socket
    whose reader sleeps (the client's, on another CPU) wakes it, and on a VM that wake-up
    costs the writer more than the write; written together, the first wakes the reader
    and the rest find it awake (at 50 connections, a third less kernel time per request).
    With no other request under way nothing would join a write, and it leaves at once
    rather than after the request's own accounting. Nothing waits for more than the rest
    of the turn."""

    __slots__ = ("_transport", "_loop", "_tasks", "_joining", "_head", "_batch", "_framing", "cycle")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop | None = None,
                 tasks: set[asyncio.Task[None]] | None = None) -> None:
        self._transport = transport
        self._loop = loop
        self._tasks = tasks  # the server's requests under way (its writes wait for the turn's end while others are)
        self._joining = False
        self._head: bytes | None = None
        self._batch: list[bytes] | None = None  # a stream's writes of this turn of the loop
        self._framing = 0  # what the last head rendered names: _LENGTH | _ENCODING | _CONNECTION
        # the cycle whose app runs now (one at a time per connection, pipelined or not);
        # kept here, not in the scope: the cycle holds the scope, and a reference cycle would
        # leave every request's objects to the garbage collector
        self.cycle: RequestCycle | None = None

    def join_next(self) -> None:
        self._joining = True

    def write(self, data: bytes) -> None:
        if self._batch is not None:
            self._batch.append(data)
            return
        if self._joining:
            self._joining = False
            self._head = data
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    async def respond(self, scope: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """Write a whole response (head, then `body` of the content-length in `headers`) for
        the request of `scope` in one write, and leave its cycle as two sends would: uvicorn checks
        every header against two regular expressions (about 50 instructions a header, a
        dozen headers); this checks the rendered head once. False, with nothing written,
        when the response must go through the ASGI sends instead: a HEAD request, a status
        uvicorn has no line for, a head with a control character (uvicorn refuses it)."""
        cycle = self.cycle
        head = self._head_lines(cycle, scope, status, headers)
        if cycle is None or head is None or self._framing & _ENCODING:
            return False
        if (cycle.flow.write_paused or cycle.disconnected) and not await self._writable(cycle):
            return True  # as uvicorn's send: nobody to write to
        cycle.waiting_for_100_continue = False
        cycle.response_started = cycle.response_complete = True
        cycle.chunked_encoding, cycle.expected_content_length = False, 0
        self._hold_when_busy()
        self.write(b"%s\r\n%s" % (head, body))
        self._complete(cycle)
        return True

    def _complete(self, cycle: RequestCycle) -> None:
        """The response is all written: leave the cycle as its last send would."""
        cycle.signal()
        if not cycle.keep_alive:
            self.close()
        self.cycle = None
        cycle.on_response()  # (which may start the next pipelined request's cycle)

    async def begin_stream(self, scope: Any, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """Write a stream's head (chunked: its length is not known) as uvicorn's start message
        would; the body goes on through the ASGI sends. False when it must go through them
        too (as for `respond`, and a head that names a length or an encoding itself)."""
        cycle = self.cycle
        head = self._head_lines(cycle, scope, status, headers)
        if cycle is None or head is None or self._framing & (_LENGTH | _ENCODING) or status in (204, 304):
            return False
        if (cycle.flow.write_paused or cycle.disconnected) and not await self._writable(cycle):
            return True
        cycle.waiting_for_100_continue = False
        cycle.response_started = True
        cycle.chunked_encoding, cycle.expected_content_length = True, 0
        self._hold()
        self.write(b"%stransfer-encoding: chunked\r\n\r\n" % head)
        return True

    async def stream_chunk(self, body: bytes) -> None:
        """A piece of the stream begun by `begin_stream` (not empty), as uvicorn's send
        would write it, once the socket's buffer has room; nothing once the client is gone."""
        if not self.stream_chunk_now(body) and self.cycle is not None and await self._writable(self.cycle):
            self._hold_when_busy()
            self.write(b"%x\r\n%s\r\n" % (len(body), body))

    def stream_chunk_now(self, body: bytes) -> bool:
        """`stream_chunk` without a coroutine when nothing needs waiting for (the socket's
        buffer has room, the client is there): True when written; False means await
        `stream_chunk` (a coroutine made and run for each event otherwise)."""
        cycle = self.cycle
        if cycle is None or cycle.flow.write_paused or cycle.disconnected:
            return False
        self._hold_when_busy()
        self.write(b"%x\r\n%s\r\n" % (len(body), body))
        return True

    def end_stream(self) -> None:
        """The last chunk of the stream begun by `begin_stream`."""
        cycle = self.cycle
        if cycle is None or cycle.disconnected:
            return
        cycle.response_complete = True
        self._hold_when_busy()
        self.write(b"0\r\n\r\n")
        self._complete(cycle)

    def _hold(self) -> None:
        if self._batch is None and self._loop is not None:
            self._batch = []
            self._loop.call_soon(self.flush)

    def _hold_when_busy(self) -> None:
        if self._tasks is not None and len(self._tasks) > 1:
            self._hold()

    def flush(self) -> None:
        """What this turn held, written now."""
        batch, self._batch = self._batch, None
        if batch and not self._transport.is_closing():
            self._transport.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def _head_lines(self, cycle: RequestCycle | None, scope: Any, status: int,
                    headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """The status line and header lines (without the blank line ending them), as uvicorn
        renders them, or None when uvicorn's own sends must answer. `_framing` says which of
        content-length, transfer-encoding and connection the headers name (compared name by
        name as the lines are joined: a search of the rendered head cost a method call with
        parsed arguments, about 3,000 instructions, for each of up to three names)."""
        if (cycle is None or cycle.scope is not scope or cycle.response_started or status not in _STATUS_LINES
                or scope["method"] == "HEAD"):
            return None
        defaults = cycle.default_headers
        count = len(defaults) + len(headers)
        if not count:
            return None
        # one join of every piece: a join per header line made a dozen short-lived objects
        parts = [_STATUS_LINES[status], _DEFAULT_LINES.of(defaults)]
        framing = 0
        for name, value in headers:
            if name == b"content-length":
                framing |= _LENGTH
            elif name == b"transfer-encoding":
                framing |= _ENCODING
            elif name == b"connection":
                framing |= _CONNECTION
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
        head = b"".join(parts)
        # one pass: the status line and each header line end in the CR LF put there, and any
        # other CR, LF or control character is in a name or value
        if len(head) - len(head.translate(None, _CONTROL)) != 2 * (count + 1):
            return None
        self._framing = framing
        if framing & _CONNECTION and _asks_close(headers):  # an error that ends the connection (413)
            cycle.keep_alive = False
        elif not cycle.keep_alive:  # the client asked it closed, or spoke HTTP/1.0
            head += b"connection: close\r\n"
        return head

    @staticmethod
    async def _writable(cycle: RequestCycle) -> bool:
        """uvicorn's send's first steps: wait while the socket's buffer is full; False when
        the client is gone."""
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        return not cycle.disconnected

    def close(self) -> None:
        self.flush()
        self._joining = False
        if self._head is not None:  # a body that never came: the head goes out as before
            head, self._head = self._head, None
            self._transport.write(head)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _DefaultLines:
    """uvicorn's default headers (date, and server unless turned off) as header lines,
    rendered once per list: uvicorn makes a new list when the date changes, once a second."""

    __slots__ = ("source", "lines")

    def __init__(self) -> None:
        self.source: list[tuple[bytes, bytes]] | None = None
        self.lines = b""

    def of(self, defaults: list[tuple[bytes, bytes]]) -> bytes:
        if defaults is not self.source:
            self.lines = b"".join([b"%s: %s\r\n" % (name, value) for name, value in defaults])
            self.source = defaults
        return self.lines


_DEFAULT_LINES: Final = _DefaultLines()


def _asks_close(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"connection" and b"close" in [t.strip().lower() for t in value.split(b",")]
               for name, value in headers)


_LOWERED: Final[dict[bytes, bytes]] = {}  # header names as they came -> lowercased: names repeat
_MAX_LOWERED: Final = 512  # (names a client makes up are lowercased each time once this is full)
_MAX_LOWERED_NAME: Final = 64  # bytes: longer names are not kept (512 of them could hold 30 MiB)


def _lowered(name: bytes) -> bytes:
    """A header name lowercased; remembered when short (compiled, `bytes.lower()` is a
    generic method call, about 350 instructions, for each of an SDK's fifteen header lines)."""
    found = _LOWERED.get(name)
    if found is None:
        found = name.lower()
        if len(_LOWERED) < _MAX_LOWERED and len(name) <= _MAX_LOWERED_NAME:
            _LOWERED[name] = found
    return found


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a head that is refused."""


class GuardedHttpToolsProtocol:
    """uvicorn's httptools protocol (`HttpToolsProtocol`: the same callbacks, scope, pipelining,
    flow control, WebSocket upgrades and shutdown) with the guard rails above, as a compiled
    class of its own: a subclass of uvicorn's keeps its attributes in an instance dict, and
    its callbacks read about eighty of them a request (a generic lookup each, through the
    class's bases first). Each request runs in a compiled `RequestCycle` (proxy/cycle.py)."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app: Any = config.loaded_app
        self.loop: asyncio.AbstractEventLoop = _loop or asyncio.get_event_loop()
        # a refusal is not "Invalid HTTP request"; the duck-typed logger stands in for uvicorn's
        self.logger: Any = _QuietOnRefusal(logging.getLogger("uvicorn.error"), self)
        self.access_logger = logging.getLogger("uvicorn.access")
        self.access_log = self.access_logger.hasHandlers()
        self.parser: Any = httptools.HttpRequestParser(self)
        try:  # as uvicorn: answer a pipelined request that came after a "connection: close"
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        except AttributeError:  # httptools < 0.6.3
            pass
        self.ws_protocol_class: Any = config.ws_protocol_class
        self.root_path: str = config.root_path
        self.asgi_version: str = config.asgi_version
        self.limit_concurrency: int | None = config.limit_concurrency
        self.app_state = app_state
        self.timeout_keep_alive_task: asyncio.TimerHandle | None = None
        self.timeout_keep_alive: float = config.timeout_keep_alive
        self.server_state = server_state
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self._fresh_context = bool(getattr(config, "reset_contextvars", False))
        # the connection's
        self.transport: Any = None
        self.flow = Flow(None)  # (the connection's, once made)
        self.server: Any = None
        self.client: Any = None
        self.scheme = "http"
        self._scope_base: dict[str, Any] = {}  # a request's scope but its headers and state
        self.pipeline: deque[tuple[RequestCycle, Any]] = deque()
        self._joined: JoinedWrites | None = None  # the transport the request cycles write to
        self._idle_deadline: float | None = None  # loop time past which an idle connection closes
        # the request's
        self.scope: dict[str, Any] = {}
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.expect_100_continue = False
        self._upgrade_named = False  # an Upgrade header came: a WebSocket handshake may follow
        self.cycle: RequestCycle | None = None
        self._hook: DisconnectHook | None = None
        # its head's guard
        self._in_head = True  # the bytes arriving belong to a request head
        self._head_bytes = 0  # received since this head began (a bound on its size)
        self._head_began = 0.0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str, str] | None = None
        self._limits = DEFAULT_LIMITS

    # --- connection

    def connection_made(self, transport: Any) -> None:
        self.connections.add(self)
        self.transport = transport
        self.flow = Flow(transport)
        self.server = get_local_addr(transport)
        self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        # copied for each request (a dict's copy costs a third of building it key by key)
        self._scope_base = {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
        }
        if self.logger.level <= TRACE_LOG_LEVEL:
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", self._peer())
        self._joined = JoinedWrites(transport, self.loop, self.tasks)
        # uvicorn arms its idle timer only after a response; a connection that never
        # speaks would otherwise stay open for ever
        self._idle_from_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self.connections.discard(self)
        if self.logger.level <= TRACE_LOG_LEVEL:
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection lost", self._peer())
        cycle = self.cycle
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.signal()
        self.flow.resume_writing()
        if exc is None:
            self.transport.close()
        self.parser = None
        timer, self.timeout_keep_alive_task = self.timeout_keep_alive_task, None
        if timer is not None:
            timer.cancel()
        if self._joined is not None:
            self._joined.cycle = None
        hook, self._hook = self._hook, None
        if hook is not None and cycle is not None and not cycle.response_complete:
            hook.fire()

    def eof_received(self) -> None:
        return None  # the transport closes its side

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def shutdown(self) -> None:
        """uvicorn's server calls this on a graceful shutdown: an idle connection closes, a
        busy one after its response."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self._out().close()  # after the response it may still hold
        else:
            cycle.keep_alive = False

    def _out(self) -> Any:
        """Where the protocol's own bytes go: through the joined writes, after what they
        hold for this turn (the raw transport only before the connection is made)."""
        return self._joined if self._joined is not None else self.transport

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]} - " if self.client else ""

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # answered and closing: what else arrives is not read
        if self._in_head:
            if self._head_bytes == 0:
                self._limits = self._current_limits()
                self._head_began = self.loop.time()
            self._head_bytes += len(data)
        self._idle_deadline = None  # uvicorn's _unset_keepalive_if_required
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and self._head_bytes and self._refusal is None:
            # a head has begun and is still arriving (a normal one is complete in its first read;
            # when the request ended in this read, nothing of the next has been counted)
            if self._head_bytes > self._limits.max_bytes:
                self._refuse(431, self._too_large(), "request_header_fields_too_large")
            elif self._head_timer is None:
                remaining = self._limits.timeout_s - (self.loop.time() - self._head_began)
                self._head_timer = self.loop.call_later(max(remaining, 0.0), self._head_timed_out)

    # --- WebSocket upgrades: uvicorn's

    def _upgrading(self) -> bool:
        """The request asks for a WebSocket this server can take: only asked of the parser
        when an Upgrade header came (without one, `_should_upgrade` is False anyway)."""
        return self._upgrade_named and self.parser.should_upgrade() and self._should_upgrade()

    def _should_upgrade(self) -> bool:
        if self.ws_protocol_class is None:
            return False
        connection: list[bytes] = []
        upgrade = None
        for name, value in self.headers:
            if name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
            if name == b"upgrade":
                upgrade = value.lower()
        return b"upgrade" in connection and upgrade == b"websocket"

    def _unsupported_upgrade_warning(self) -> None:
        self.logger.warning("Unsupported upgrade request.")
        if self.ws_protocol_class is None:
            self.logger.warning("No supported WebSocket library detected. Please use \"pip install "
                                "'uvicorn[standard]'\", or install 'websockets' or 'wsproto' manually.")

    def handle_websocket_upgrade(self) -> None:
        """The connection handed to uvicorn's WebSocket protocol, which reads the head again."""
        if self.logger.level <= TRACE_LOG_LEVEL:
            self.logger.log(TRACE_LOG_LEVEL, "%sUpgrading to WebSocket", self._peer())
        self._cancel_head_timer()
        self._idle_deadline = None
        self.connections.discard(self)
        if self._joined is not None:
            self._joined.flush()  # what answered the requests before it goes first
        output = [self.scope["method"].encode(), b" ", self.url, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            output += [name, b": ", value, b"\r\n"]
        output.append(b"\r\n")
        protocol = self.ws_protocol_class(config=self.config, server_state=self.server_state,
                                          app_state=self.app_state)
        protocol.connection_made(self.transport)
        self.transport.set_protocol(protocol)
        protocol.data_received(b"".join(output))

    # --- keep-alive: a deadline per response, at most one timer per connection
    #
    # uvicorn makes a timer at the end of every response and cancels it when the next
    # request's bytes arrive: a timer made and cancelled per request (about 2% of one). Here
    # a response's end only moves the connection's idle deadline, and data arriving clears
    # it; the one timer, when it fires, closes the connection if the deadline has passed,
    # waits for the rest if it was moved, and lapses while a request is being answered.

    def on_response_complete(self) -> None:
        """The cycle's response is all written (uvicorn's callback): count it, then start the
        next pipelined request or begin the idle wait."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_deadline = None
        if self.flow.read_paused:
            self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_from_now()

    def _idle_from_now(self) -> None:
        self._idle_deadline = self.loop.time() + self.timeout_keep_alive
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _idle_check(self) -> None:
        self.timeout_keep_alive_task = None
        deadline = self._idle_deadline
        if deadline is None:
            return  # a request is under way: its response's end starts the wait again
        left = deadline - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._idle_check)
        else:
            self.timeout_keep_alive_handler()

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self._out().close()

    # --- parser callbacks: uvicorn's, compiled; the scope and the cycle as uvicorn makes them

    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_100_continue = self._upgrade_named = False
        self.headers = []
        scope = self._scope_base.copy()
        scope["headers"] = self.headers
        scope["state"] = self.app_state.copy()
        self.scope = scope

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """A header line as uvicorn's protocol keeps it, compiled here: it runs once per line,
        and an SDK's request has about fifteen. Names lowercased; the trailing blanks that
        llhttp leaves are not part of a value (RFC 9110, 5.5)."""
        name = _lowered(name)
        if value and value[-1] in _BLANK_BYTES:  # (rare: a method call only then)
            value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        elif name == b"upgrade":
            self._upgrade_named = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        # the head's exact size (what arrived may include body bytes): target and header lines;
        # never more than what arrived, so only counted when that passed the limit
        if self._head_bytes > self._limits.max_bytes and self._head_size() > self._limits.max_bytes:
            self._refusal = (431, self._too_large(), "request_header_fields_too_large")
            raise _Refused()  # the parser stops; uvicorn calls send_400_response, which answers 431
        hook = self._hook = DisconnectHook(self.loop)
        scope = self.scope
        # ASGI's extensions are "dict[str, dict]"; ours are objects
        scope["extensions"] = {DISCONNECT_KEY: hook, JOIN_KEY: self._joined}
        parser = self.parser
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if self._upgrading():
            return  # data_received hands the connection to the WebSocket protocol
        url = self.url
        raw_path: bytes
        query: bytes
        if url and url[0] == _SLASH and _QUERY not in url and _FRAGMENT not in url:
            raw_path, query = url, b""  # a plain path (what clients send): nothing to split
        else:
            parsed: Any = httptools.parse_url(url)  # (its stub says bytes where it may be None)
            raw_path, query = parsed.path, parsed.query or b""
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root: str = self.root_path
        scope["path"] = root + path if root else path
        scope["raw_path"] = root.encode("ascii") + raw_path if root else raw_path
        scope["query_string"] = query
        app = self.app
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        previous = self.cycle
        cycle = RequestCycle(
            scope, self._joined if self._joined is not None else self.transport, self.flow, self.logger,
            self.access_logger, self.access_log, self.server_state.default_headers, self.expect_100_continue,
            http_version != "1.0" and parser.should_keep_alive(), self.on_response_complete, self.loop)
        self.cycle = cycle
        if previous is None or previous.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined: it waits for the responses before it
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete or self._upgrading():
            return
        if cycle.add_body(body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.signal()

    def _start_asgi_task(self, cycle: RequestCycle, app: Any) -> None:
        """A request's app starts (at once, or after the pipelined ones before it), in a task
        named once rather than numbered (uvloop's create_task numbers it, then renames it)."""
        if self._joined is not None:
            self._joined.cycle = cycle
        loop = self.loop
        coro = cycle.run_asgi(app)
        if loop.get_task_factory() is not None:
            task = loop.create_task(coro, context=contextvars.Context() if self._fresh_context else None)
        elif self._fresh_context:  # uvicorn's opt-in workaround for CPython's context leak between tasks
            task = asyncio.Task(coro, loop=loop, name=TASK_NAME, context=contextvars.Context())
        else:
            task = asyncio.Task(coro, loop=loop, name=TASK_NAME)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not self._upgrading():
            cycle.more_body = False
            cycle.signal()
        self._in_head = True  # what comes next on this connection is the next request's head
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error, in JSON like every other error (its own is
        plain text); a refusal raised from a callback lands here too."""
        if self._refusal is None:
            self._refusal = (400, "the request could not be parsed as HTTP/1.1 (a malformed request line, "
                                  "or a control character in a header)", "invalid_http")
        self._write_refusal(*self._refusal)

    # --- limits

    def _current_limits(self) -> HeadLimits:
        ref = self.app_state.get(LIMITS_KEY)
        return ref.current if ref is not None else DEFAULT_LIMITS

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and self._head_bytes and self._refusal is None:
            message = (f"the request head did not arrive within {self._limits.timeout_s:g} s "
                       "(server.header_timeout_s)")
            self._refuse(408, message, "request_timeout")

    def _too_large(self) -> str:
        return (f"the request head is larger than the {self._limits.max_bytes // 1024} KiB this server accepts "
                "(server.max_header_kb)")

    def _refuse(self, status: int, message: str, code: str) -> None:
        self._refusal = (status, message, code)
        self._write_refusal(status, message, code)

    def _write_refusal(self, status: int, message: str, code: str) -> None:
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        body = refusal_body(message, code, _path_of(self.url))
        out = self._out()  # after a pipelined response it may still hold
        out.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, _REASONS[status], len(body), body)
        )
        out.close()


class _QuietOnRefusal:
    """uvicorn's logger for one connection, minus its parser-error warning when the
    "error" was our own refusal (raised from a callback to stop the parser)."""

    def __init__(self, logger: Any, protocol: GuardedHttpToolsProtocol) -> None:
        self._logger = logger
        self._protocol = protocol

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if self._protocol._refusal is None:
            self._logger.warning(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


def _path_of(url: bytes) -> str:
    return url.split(b"?", 1)[0].decode("latin-1")


def refusal_body(message: str, code: str, path: str) -> bytes:
    """The error body for a refused head, in the shape of the API the path belongs to."""
    if path.startswith("/v1/messages"):
        import orjson

        kind = {"request_header_fields_too_large": "request_too_large", "request_timeout": "timeout_error"}.get(
            code, "invalid_request_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return error_body(message, "invalid_request_error", code)


class LimitsRef:
    """What the lifespan puts in the state: the serving config's limits, replaced on reload
    and read when a head begins."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current = DEFAULT_LIMITS

    def update(self, server: Any) -> None:
        self.current = HeadLimits(int(server.max_header_kb * 1024), server.header_timeout_s)
