"""Relaying an upstream answer to the client, as plain ASGI responses.

Non-streaming answers go back as one body. Streams go back event by event as the
upstream produces them: every chunk is sent the moment it arrives, a client disconnect
cancels the pump (which closes the upstream connection), and an upstream failure in the
middle of a stream ends it with an OpenAI-shaped `error` event the SDKs understand.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Final

from proxy import sse
from proxy.errors import ProxyError, UpstreamError, UpstreamOverloaded, error_event, provider_message
from proxy.providers.base import UpstreamResponse
from proxy.providers.wire import ChunkSource, chunk_source
from proxy.server import DISCONNECT_KEY, JOIN_KEY, DisconnectHook, JoinedWrites

log = logging.getLogger("switchyard.relay")

Headers = list[tuple[bytes, bytes]]
# ASGI, as the servers and frameworks type it
Scope = dict[str, Any]  # what ASGI servers give (a dict: compiled code reads it without a generic call)
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# upstream response headers worth passing on; the rest describe the provider's account
# or connection (its own rate limits, cookies, framing) and stay here
_RELAYED: Final = frozenset({"openai-processing-ms", "openai-version", "retry-after"})


def upstream_headers(upstream: UpstreamResponse) -> Headers:
    out: Headers = []
    for name, value in upstream.headers:
        lower = name.lower()
        if lower in _RELAYED:
            out.append((lower.encode(), header_value(value)))
        elif lower in ("x-request-id", "request-id"):  # OpenAI's name, Anthropic's
            out.append((b"x-switchyard-upstream-request-id", header_value(value)))
    return out


_UNSAFE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_value(text: str, limit: int = 512) -> bytes:
    """Any text as a valid response header value: control characters dropped, cut to
    `limit`, non-Latin-1 characters as '?'. A value the server would refuse to send
    kills the connection and leaves the client with an empty reply."""
    if len(text) <= limit and text.isascii() and text.isprintable():
        return text.encode()  # nearly every value: no regex needed
    if _UNSAFE.search(text):
        text = _UNSAFE.sub("", text)
    return text[:limit].encode("latin-1", "replace")


def header_list(names: list[str], limit: int = 512) -> bytes:
    """Names as one comma-separated header value (`x-switchyard-dropped-fields`): each made
    safe as `header_value` makes text (one name longer than `limit` is cut to it), whole
    names up to `limit` bytes, then `+N more` for the names left out. The names may be a
    client's own field names, any text at all."""
    shown: list[bytes] = []
    size = 0
    for i, name in enumerate(names):
        safe = header_value(name, limit)
        if not safe:
            continue  # nothing of it can go in a header
        if size + len(safe) > limit:
            shown.append(b"+%d more" % (len(names) - i))
            break
        shown.append(safe)
        size += len(safe) + 2
    return b", ".join(shown)


class BytesResponse:
    """A complete response body with the given status and headers."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes, headers: Headers, content_type: bytes = b"application/json") -> None:
        self.status = status
        self.body = body
        self.headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        joined = _joined(scope)
        if joined is not None:  # Switchyard's own HTTP protocol (proxy/server.py)
            if await joined.respond(scope, self.status, self.headers, self.body):
                return
            if scope.get("method") != "HEAD":  # uvicorn writes no body for HEAD
                joined.join_next()  # the server sends head and body in one write
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def error_response(error: ProxyError, headers: Headers) -> BytesResponse:
    return BytesResponse(error.status, error.body(), headers + error.headers if error.headers else headers)


def upstream_failure(provider: str, upstream: UpstreamResponse) -> ProxyError | None:
    """Map an upstream 5xx to our 502 (503 when it said it is overloaded: 503, or
    Anthropic's 529), keeping its retry-after; 4xx answers pass through as they are (None)."""
    if upstream.status < 500:
        return None
    detail = provider_message(upstream.body)[:300]
    suffix = f": {detail}" if detail else ""
    message = f"provider {provider} answered {upstream.status}{suffix}"
    error = UpstreamOverloaded(message) if upstream.status in (503, 529) else UpstreamError(message, kind="status_5xx")
    retry_after = next((v for k, v in upstream.headers if k.lower() == "retry-after"), None)
    if retry_after is not None:
        error.headers = [*error.headers, (b"retry-after", header_value(retry_after))]
    return error


class StreamRelay:
    """Sends an upstream SSE stream on to the client as it arrives.

    `on_done(outcome)` runs exactly once at the end with one of
    `complete`, `client_disconnected` or `upstream_failed`. Afterwards `outcome`,
    `error`, `started_at` and `first_chunk_at` (perf_counter times) say how it went.
    """

    __slots__ = (
        "upstream", "observe", "rewrite", "headers", "on_done", "outcome", "error", "started_at", "first_chunk_at",
        "disconnected", "stream_error",
    )

    def __init__(
        self,
        upstream: UpstreamResponse,
        headers: Headers,
        on_done: Callable[[str], None],
        observe: Callable[[bytes], None] | None = None,
        rewrite: Callable[[bytes], bytes] | None = None,
        disconnected: asyncio.Future[None] | None = None,
        stream_error: Callable[[ProxyError], bytes] | None = None,
    ) -> None:
        self.upstream = upstream
        self.observe = observe  # sees each upstream chunk as it came
        self.rewrite = rewrite  # what the client gets of it (b"": nothing yet)
        self.headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *headers,
        ]
        self.on_done = on_done
        self.outcome = "client_disconnected"
        self.error: ProxyError | None = None
        self.started_at: float | None = None
        self.first_chunk_at: float | None = None
        self.disconnected = disconnected  # the request's own disconnect watch, when it has one
        self.stream_error = stream_error or _chat_stream_error  # how the surface ends a broken stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hook = _hook(scope)
        if hook is not None:
            await self._relay_in_place(hook, scope, send)
            return
        pump: asyncio.Future[str] = asyncio.ensure_future(self._pump(scope, send))
        watch: asyncio.Future[None] = self.disconnected or asyncio.ensure_future(_wait_for_disconnect(receive))
        outcome = "client_disconnected"
        try:
            done, _ = await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
            if pump in done:
                outcome = pump.result()
        finally:
            for task in (pump, watch):
                if not task.done():
                    task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
            await self.upstream.close()
            self.outcome = outcome
            self.on_done(outcome)

    async def _relay_in_place(self, hook: DisconnectHook, scope: Scope, send: Send) -> None:
        """The pump in the request's own task; a lost connection cancels it (no extra tasks)."""
        if self.disconnected is not None:
            self.disconnected.cancel()
        task = asyncio.current_task(hook.loop)
        lost = False

        def on_lost() -> None:
            nonlocal lost
            lost = True
            if task is not None:
                task.cancel()

        hook.callback = on_lost
        outcome = "client_disconnected"
        try:
            outcome = await self._pump(scope, send)
        except asyncio.CancelledError:
            if not lost or task is None:
                raise
            task.uncancel()
        finally:
            hook.callback = None
            await self.upstream.close()
            self.outcome = outcome
            self.on_done(outcome)

    async def _pump(self, scope: Scope, send: Send) -> str:
        joined = _joined(scope)  # Switchyard's own HTTP protocol writes the stream itself
        if joined is None or not await joined.begin_stream(scope, self.upstream.status, self.headers):
            joined = None
            await send({"type": "http.response.start", "status": self.upstream.status, "headers": self.headers})
        write = joined.stream_chunk if joined is not None else _body_sender(send)
        self.started_at = time.perf_counter()
        assert self.upstream.chunks is not None
        chunks = chunk_source(self.upstream.chunks)
        outcome = "complete"
        broken: ProxyError | None = None
        try:
            observe, rewrite = self.observe, self.rewrite
            while (chunk := await chunks.next_chunk()) is not None:
                if observe is not None:
                    observe(chunk)
                if rewrite is not None:
                    chunk = rewrite(chunk)
                if chunk:
                    if joined is None or not joined.stream_chunk_now(chunk):
                        await write(chunk)
                    if self.first_chunk_at is None:
                        self.first_chunk_at = time.perf_counter()
        except ProxyError as exc:
            broken = exc
        except OSError:  # the client went away while we were writing
            return "client_disconnected"
        if broken is not None:  # written after the except block: compiled, an await in it can re-raise
            log.warning("stream broken: %s", broken.message)
            self.error = broken
            await write(self.stream_error(broken))
            outcome = "upstream_failed"
        if joined is not None:
            joined.end_stream()
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return outcome


def _body_sender(send: Send) -> Callable[[bytes], Awaitable[None]]:
    """A stream's pieces through the ASGI send (under another server)."""
    async def write(body: bytes) -> None:
        await send({"type": "http.response.body", "body": body, "more_body": True})
    return write


def iterate(chunks: list[bytes]) -> AsyncIterator[bytes]:
    """`chunks` as a stream's pieces (a cached answer replayed)."""
    return _Replay(chunks)


class _Replay(ChunkSource):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = iter(chunks)

    async def next_chunk(self) -> bytes | None:
        for chunk in self._chunks:
            return chunk
        return None


class DisconnectWatch:
    """Cancels the request's task the moment its client goes away while the answer is being
    prepared, so a non-stream request (or a stream before its first byte) stops its upstream
    attempt at once: no wait for the read timeout, no retry, no fallback, no paid generation
    for nobody. Start it once the body has been read (until then `receive` carries the body).

    Served by Switchyard's own HTTP protocol, the connection says when it is lost
    (proxy/server.py's DisconnectHook); under another server a task waits on `receive()`."""

    __slots__ = ("gone", "_task", "_watcher", "_hook")

    def __init__(self) -> None:
        self.gone = False
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Future[None] | None = None
        self._hook: DisconnectHook | None = None

    def start(self, receive: Receive, scope: Scope) -> None:
        hook = _hook(scope)
        self._task = asyncio.current_task(hook.loop if hook is not None else None)
        if hook is not None:
            self._hook = hook
            hook.callback = self._lost
            return
        self._watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        self._watcher.add_done_callback(self._left)

    def _lost(self) -> None:
        if self._task is not None:
            self.gone = True
            self._task.cancel()

    def _left(self, watcher: asyncio.Future[None]) -> None:
        if watcher.cancelled() or watcher.exception() is not None or self._task is None:
            return
        self.gone = True
        self._task.cancel()

    def hand_over(self) -> asyncio.Future[None] | None:
        """The watcher, for a stream relay to use as its own; it no longer cancels anything."""
        if self._hook is not None:
            self._hook.callback = None
            self._hook = None
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.remove_done_callback(self._left)
        return watcher

    def stop(self) -> None:
        watcher = self.hand_over()
        if watcher is not None:
            watcher.cancel()

    def absorb(self) -> bool:
        """After a CancelledError: True (and the cancellation undone) when it was this watch's."""
        if not self.gone:
            return False
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True


def _chat_stream_error(exc: ProxyError) -> bytes:
    return sse.encode(error_event(exc))


def _extension(scope: Scope, key: str) -> Any:
    """What Switchyard's own HTTP protocol (proxy/server.py) put in the scope; None under
    another server."""
    extensions = scope.get("extensions")
    return extensions.get(key) if extensions else None


# typed, so that compiled code calls their methods and sets their attributes directly (as Any,
# each was a generic lookup: a stream's every chunk is written through `stream_chunk_now`)

def _joined(scope: Scope) -> JoinedWrites | None:
    found = _extension(scope, JOIN_KEY)
    return found if isinstance(found, JoinedWrites) else None


def _hook(scope: Scope) -> DisconnectHook | None:
    found = _extension(scope, DISCONNECT_KEY)
    return found if isinstance(found, DisconnectHook) else None


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
