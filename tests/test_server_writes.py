"""The server protocol's joined writes (proxy/server.py): a complete response leaves in
one send, head and body together; streams and anything else are written as they come."""

from __future__ import annotations

import asyncio
import gc

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from proxy.providers.base import UpstreamResponse
from proxy.relay import BytesResponse, StreamRelay, iterate
from proxy.server import GuardedHttpToolsProtocol, JoinedWrites


class RecordingTransport:
    """What the socket would have been asked to send, write by write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.written_before_close: int | None = None

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        if not self.closed:
            self.written_before_close = len(self.writes)
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def set_protocol(self, protocol: object) -> None: ...


@pytest.mark.parametrize(("join", "writes", "expected"), [
    (True, [b"HEAD", b"BODY"], [b"HEADBODY"]),
    (False, [b"HEAD", b"BODY"], [b"HEAD", b"BODY"]),
    (True, [b"HEAD", b"BODY", b"MORE"], [b"HEADBODY", b"MORE"]),  # only the next write waits
    (True, [b"HEAD", b""], [b"HEAD"]),  # an empty body
])
def test_a_joined_head_waits_for_the_write_after_it(join, writes, expected):
    transport = RecordingTransport()
    joined = JoinedWrites(transport)  # type: ignore[arg-type]
    if join:
        joined.join_next()
    for data in writes:
        joined.write(data)
    assert transport.writes == expected


def test_closing_with_a_held_head_sends_it_first():
    transport = RecordingTransport()
    joined = JoinedWrites(transport)  # type: ignore[arg-type]
    joined.join_next()
    joined.write(b"HEAD")
    joined.close()
    assert transport.writes == [b"HEAD"] and transport.closed and joined.is_closing()


def test_other_attributes_are_the_transports():
    transport = RecordingTransport()
    assert JoinedWrites(transport).get_extra_info("peername") == ("127.0.0.1", 5555)  # type: ignore[arg-type]


def connected(app, state: ServerState | None = None,
              transport: RecordingTransport | None = None) -> tuple[GuardedHttpToolsProtocol, RecordingTransport]:
    """The server's protocol for `app`, with a connection made to it."""
    config = Config(app=app, log_level="warning", access_log=False, proxy_headers=False)
    config.load()
    protocol = GuardedHttpToolsProtocol(config=config, server_state=state or ServerState(), app_state={},
                                        _loop=asyncio.get_running_loop())
    transport = transport or RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


async def serve_one(app, request: bytes) -> RecordingTransport:
    protocol, transport = connected(app)
    protocol.data_received(request)
    for _ in range(50):
        await asyncio.sleep(0)
        if protocol.cycle is not None and protocol.cycle.response_complete:
            break
    await asyncio.sleep(0)  # a stream's writes leave at the end of the loop's turn
    protocol.connection_lost(None)
    return transport


REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"


async def test_a_complete_response_is_one_write_on_the_wire():
    async def app(scope, receive, send):
        await receive()
        await BytesResponse(200, b'{"ok":true}', [(b"x-request-id", b"req_1")])(scope, receive, send)

    transport = await serve_one(app, REQUEST)
    assert len(transport.writes) == 1
    head, body = transport.writes[0].split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 11" in head and b"x-request-id: req_1" in head
    assert body == b'{"ok":true}'


async def test_a_head_request_gets_its_head_though_no_body_is_written():
    async def app(scope, receive, send):
        await receive()
        await BytesResponse(200, b'{"ok":true}', [])(scope, receive, send)

    transport = await serve_one(app, b"HEAD /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\r\n")
    assert len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 200 OK")
    assert transport.writes[0].endswith(b"\r\n\r\n")
    assert transport.written_before_close == 1  # sent when answered, not held until the connection closed


async def test_a_stream_head_is_not_held_back():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    transport = await serve_one(app, REQUEST)
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK") and transport.writes[0].endswith(b"\r\n\r\n")
    assert b"data: 1" in transport.writes[1]


# ---------------------------------------------------------------- a whole response written by the protocol itself

HEADERS = [(b"x-request-id", b"req_1"), (b"x-switchyard-route", b"default"), (b"retry-after", b"3")]


def _undated(data: bytes) -> bytes:
    """The response without uvicorn's date header (it may turn over between two answers)."""
    return b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(b"date: "))


async def _through_sends(scope, receive, send, status: int, headers, body: bytes) -> None:
    """The same response as uvicorn's own sends render it."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("request_bytes", [
    REQUEST,
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
    b"POST /v1/chat/completions HTTP/1.0\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
], ids=["keep-alive", "connection-close", "http-1.0"])
@pytest.mark.parametrize(("status", "body", "headers"), [
    (200, b'{"ok":true}', HEADERS),
    (429, b'{"error":{}}', HEADERS),
    (200, b"", HEADERS),
    (413, b'{"error":{}}', [*HEADERS, (b"connection", b"close")]),  # an error that ends the connection
    (400, b"{}", [(b"connection", b"keep-alive, Close")]),
    (200, b"{}", [(b"x-note", b"connection: close")]),  # only a value that looks like it
])
async def test_the_protocols_own_write_is_what_uvicorns_sends_would_write(request_bytes, status, body, headers):
    async def fast(scope, receive, send):
        await receive()
        await BytesResponse(status, body, headers)(scope, receive, send)

    async def uvicorns(scope, receive, send):
        await receive()
        await _through_sends(scope, receive, send, status, headers, body)

    ours, theirs = await serve_one(fast, request_bytes), await serve_one(uvicorns, request_bytes)
    assert len(ours.writes) == 1
    assert _undated(ours.writes[0]) == _undated(b"".join(theirs.writes))
    assert ours.closed == theirs.closed
    if request_bytes != REQUEST or b"connection" in dict(headers):  # asked closed: it is, once the answer is out
        assert ours.written_before_close == 1 and b"connection: " in ours.writes[0]


async def test_each_response_carries_the_default_headers_of_its_moment():
    """uvicorn replaces its default headers (the date) with a new list every second; the
    protocol renders each list once, and never writes one that was replaced."""
    state = ServerState()

    async def app(scope, receive, send):
        await receive()
        await BytesResponse(200, b"{}", [(b"x-request-id", b"req_1")])(scope, receive, send)

    for second in ("10:00:00", "10:00:00", "10:00:01"):
        state.default_headers = [(b"date", f"Thu, 03 Dec 2026 {second} GMT".encode()), (b"server", b"edge")]
        protocol, transport = connected(app, state)
        protocol.data_received(REQUEST)
        for _ in range(50):
            await asyncio.sleep(0)
        head = transport.writes[0].split(b"\r\n\r\n", 1)[0]
        assert head.split(b"\r\n") == [b"HTTP/1.1 200 OK", f"date: Thu, 03 Dec 2026 {second} GMT".encode(),
                                        b"server: edge", b"content-type: application/json",
                                        b"content-length: 2", b"x-request-id: req_1"]
        protocol.connection_lost(None)


async def test_pipelined_requests_are_each_answered_in_turn():
    answered = []

    async def app(scope, receive, send):
        body = (await receive())["body"]
        await asyncio.sleep(0.01 if body == b"{}" else 0)  # the first answers last unless the cycles wait in line
        answered.append(body)
        await BytesResponse(200, body, [])(scope, receive, send)

    state = ServerState()
    protocol, transport = connected(app, state)
    second = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\n[1 ]"
    protocol.data_received(REQUEST + second)
    for _ in range(100):
        await asyncio.sleep(0.005)
        if state.total_requests == 2:
            break
    protocol.connection_lost(None)
    assert answered == [b"{}", b"[1 ]"]
    assert [w.rsplit(b"\r\n\r\n", 1)[1] for w in transport.writes] == [b"{}", b"[1 ]"]
    assert state.total_requests == 2


@pytest.mark.parametrize(("status", "headers"), [
    (200, [(b"x-bad", b"a\x01b")]),  # a control character: uvicorn's send refuses it
    (200, [(b"x-bad", b"a\x7f")]),
    (200, [(b"x-bad\x00", b"a")]),
    (200, [(b"x-bad", b"a\rb")]),
    (200, [(b"x-bad", b"a\r\nx-injected: 1")]),
    (200, [(b"x-bad", b"a\nb")]),
    (200, [(b"x-bad", b"a\n\rb"), (b"x-fine", b"c")]),
    (999, []),  # no status line uvicorn knows
])
async def test_what_the_protocol_will_not_write_goes_through_uvicorns_sends(status, headers):
    async def app(scope, receive, send):
        await receive()
        joined = scope["extensions"]["switchyard.join"]
        assert not await joined.respond(scope, status, [(b"content-length", b"0"), *headers], b"")
        assert not joined.cycle.response_started  # untouched: the sends may still answer
        await BytesResponse(200, b"{}", [])(scope, receive, send)

    transport = await serve_one(app, REQUEST)
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK")


async def test_a_tab_in_a_value_is_written_by_the_protocol_as_uvicorn_would():
    async def app(scope, receive, send):
        await receive()
        assert await scope["extensions"]["switchyard.join"].respond(
            scope, 200, [(b"content-length", b"2"), (b"x-tabbed", b"a\tb")], b"{}")

    transport = await serve_one(app, REQUEST)
    assert len(transport.writes) == 1 and b"\r\nx-tabbed: a\tb\r\n" in transport.writes[0]


async def test_a_response_for_a_client_that_left_is_not_written():
    gone = asyncio.Event()
    finished = asyncio.Event()

    async def app(scope, receive, send):
        await receive()
        await gone.wait()
        await BytesResponse(200, b"{}", [])(scope, receive, send)  # as uvicorn's send: quietly nothing
        finished.set()

    protocol, transport = connected(app)
    protocol.data_received(REQUEST)
    await asyncio.sleep(0)
    protocol.connection_lost(None)
    gone.set()
    await asyncio.wait_for(finished.wait(), 1)
    assert transport.writes == []


@pytest.mark.parametrize("request_bytes", [
    REQUEST,
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
], ids=["keep-alive", "connection-close"])
async def test_a_streams_head_written_by_the_protocol_is_what_uvicorns_start_would_write(request_bytes):
    events = [b"data: 1\n\n", b"data: [DONE]\n\n"]
    relay = StreamRelay(UpstreamResponse(200, [], chunks=iterate(events)), HEADERS, lambda outcome: None)

    async def fast(scope, receive, send):
        await receive()
        await relay(scope, receive, send)

    async def uvicorns(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": relay.headers})
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    ours, theirs = await serve_one(fast, request_bytes), await serve_one(uvicorns, request_bytes)
    assert _undated(b"".join(ours.writes)) == _undated(b"".join(theirs.writes))
    assert b"transfer-encoding: chunked\r\n" in ours.writes[0] and ours.writes[0].endswith(b"0\r\n\r\n")
    assert len(ours.writes) == 1  # head, events and last chunk: all there at once, so one write
    assert ours.closed == theirs.closed
    assert ours.written_before_close in (None, 1)  # a connection that closes does so after the write


async def test_the_responses_of_one_turn_leave_at_its_end_together():
    """Every connection answered in a turn of the loop writes at its end: one wake-up of a
    client process for them all, not one per response."""
    order = []

    class Watched(RecordingTransport):
        def write(self, data: bytes) -> None:
            order.append("write")
            super().write(data)

    async def app(scope, receive, send):
        await receive()
        await BytesResponse(200, b"{}", [])(scope, receive, send)
        order.append("answered")

    state = ServerState()
    pairs = [connected(app, state, Watched()) for _ in range(3)]
    for protocol, _ in pairs:
        protocol.data_received(REQUEST)
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == ["answered"] * 3 + ["write"] * 3
    for protocol, _ in pairs:
        protocol.connection_lost(None)


async def test_with_no_other_request_under_way_a_response_leaves_before_its_accounting():
    """Nothing could join the write of the only request being answered: it leaves at once,
    not after the work the request does once answered."""
    seen = []

    async def app(scope, receive, send):
        await receive()
        await BytesResponse(200, b"{}", [])(scope, receive, send)
        seen.append(len(transport.writes))  # the accounting's moment

    protocol, transport = connected(app)
    protocol.data_received(REQUEST)
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == [1]
    protocol.connection_lost(None)


@pytest.mark.parametrize("after", ["refused head", "shutdown"])
async def test_what_the_protocol_writes_or_closes_after_a_held_response_comes_after_it(after):
    """A response waits for the end of its turn; a refusal of the next (pipelined) request's
    head, or a shutdown, in that turn goes out after it, never instead of it or before."""
    protocol: GuardedHttpToolsProtocol | None = None

    async def app(scope, receive, send):
        await receive()
        await BytesResponse(200, b'{"first":1}', [])(scope, receive, send)
        assert protocol is not None
        if after == "shutdown":
            protocol.shutdown()
        else:  # the next request's head, far past the 64 KiB limit
            protocol.data_received(b"POST /v1/chat/completions HTTP/1.1\r\nx-big: " + b"a" * 70_000 + b"\r\n")

    state = ServerState()
    other = asyncio.get_running_loop().create_future()
    state.tasks.add(asyncio.ensure_future(other))  # another request under way: writes wait for the turn's end
    protocol, transport = connected(app, state)
    protocol.data_received(REQUEST)
    for _ in range(10):
        await asyncio.sleep(0)
    other.cancel()
    answer = b"".join(transport.writes)
    assert answer.startswith(b"HTTP/1.1 200 OK") and b'{"first":1}' in answer
    if after == "refused head":
        assert answer.index(b'{"first":1}') < answer.index(b"HTTP/1.1 431")
    assert transport.closed and transport.written_before_close == len(transport.writes)
    protocol.connection_lost(None)


def two_event_stream(more: asyncio.Event, outcomes: list[str]):
    """An app relaying a stream whose second event comes once `more` is set."""
    async def slow_upstream():
        yield b"data: 1\n\n"
        await more.wait()
        yield b"data: 2\n\n"

    relay = StreamRelay(UpstreamResponse(200, [], chunks=slow_upstream()), HEADERS, outcomes.append)

    async def app(scope, receive, send):
        await receive()
        await relay(scope, receive, send)

    return app


async def test_a_streams_head_and_events_leave_by_the_end_of_the_turn_they_were_written_in():
    """Gathering a stream's writes never holds one back for the next event: the head goes out
    while the upstream has nothing more, and each event as it comes."""
    more = asyncio.Event()
    protocol, transport = connected(two_event_stream(more, []))
    protocol.data_received(REQUEST)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(transport.writes) == 1  # head and first event, while the second is not there yet
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK") and transport.writes[0].endswith(b"data: 1\n\n\r\n")
    more.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport.writes[1:] == [b"9\r\ndata: 2\n\n\r\n", b"0\r\n\r\n"]  # later events: as they come
    assert protocol.cycle is None or protocol.cycle.response_complete
    protocol.connection_lost(None)


async def test_a_stream_whose_client_left_writes_nothing_more():
    more = asyncio.Event()
    outcomes: list[str] = []
    protocol, transport = connected(two_event_stream(more, outcomes))
    protocol.data_received(REQUEST)
    for _ in range(20):
        await asyncio.sleep(0)
    written = list(transport.writes)
    protocol.connection_lost(None)  # the client hung up between two events
    more.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport.writes == written and outcomes == ["client_disconnected"]


async def test_an_answered_requests_objects_are_freed_without_the_garbage_collector():
    """Nothing the request's scope holds may point back at its cycle: a reference cycle would
    leave every request's objects (scope, cycle, body, headers) to the collector."""
    cycles: list[int] = []

    async def app(scope, receive, send):
        await receive()
        await BytesResponse(200, b"{}", [])(scope, receive, send)

    def live_cycles() -> set[int]:
        return {id(o) for o in gc.get_objects() if type(o).__name__ == "RequestCycle"}

    protocol, transport = connected(app)
    gc.collect()
    before = live_cycles()  # other tests' cycles still held
    gc.disable()
    try:
        for _ in range(2):
            protocol.data_received(REQUEST)
            cycles.append(id(protocol.cycle))
            for _ in range(20):
                await asyncio.sleep(0)
        assert len(transport.writes) == 2
        # freed when the next request replaced it (the compiled cycle takes no weak reference;
        # with the collector off, an object in a reference cycle stays among gc's objects)
        assert live_cycles() - before == {cycles[1]}
    finally:
        gc.enable()
        protocol.connection_lost(None)


@pytest.mark.parametrize("kind", ["whole", "stream"])
async def test_a_client_that_does_not_read_holds_the_write_until_its_socket_drains(kind):
    """Back-pressure: with the socket's buffer full (uvicorn paused writing), the protocol's
    own write waits, as uvicorn's send would, and goes out once the client reads again."""
    async def app(scope, receive, send):
        await receive()
        if kind == "whole":
            await BytesResponse(200, b"{}", [])(scope, receive, send)
        else:
            await StreamRelay(UpstreamResponse(200, [], chunks=iterate([b"data: 1\n\n"])), [],
                              lambda outcome: None)(scope, receive, send)

    protocol, transport = connected(app)
    protocol.pause_writing()  # what the transport says when the client stops reading
    protocol.data_received(REQUEST)
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport.writes == []
    protocol.resume_writing()
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport.writes and transport.writes[0].startswith(b"HTTP/1.1 200 OK")
    protocol.connection_lost(None)


def keep_alive_for(app, seconds: int) -> tuple[GuardedHttpToolsProtocol, RecordingTransport, ServerState]:
    config = Config(app=app, log_level="warning", access_log=False, proxy_headers=False, timeout_keep_alive=seconds)
    config.load()
    state = ServerState()
    protocol = GuardedHttpToolsProtocol(config=config, server_state=state, app_state={},
                                        _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport, state


def _answer_once(release: asyncio.Event):
    """An app that answers once `release` is set."""
    async def slow(scope, receive, send):
        await receive()
        await release.wait()
        await BytesResponse(200, b"{}", [])(scope, receive, send)
    return slow


def _answer(app_body: bytes = b"{}"):
    async def app(scope, receive, send):
        await receive()
        await BytesResponse(200, app_body, [])(scope, receive, send)
    return app


async def _served(protocol: GuardedHttpToolsProtocol, state: ServerState, count: int) -> None:
    for _ in range(200):
        if state.total_requests >= count:
            return
        await asyncio.sleep(0.002)
    raise AssertionError("the request was not answered")


async def test_an_idle_connection_closes_when_its_keep_alive_runs_out_after_the_last_response():
    protocol, transport, state = keep_alive_for(_answer(), 1)  # uvicorn takes whole seconds
    protocol.data_received(REQUEST)
    await _served(protocol, state, 1)
    await asyncio.sleep(0.6)
    protocol.data_received(REQUEST)  # within the first response's keep-alive
    await _served(protocol, state, 2)
    await asyncio.sleep(0.6)  # past the first response's deadline, not the second's
    assert not transport.closed
    await asyncio.sleep(0.6)
    assert transport.closed
    protocol.connection_lost(None)


async def test_a_connection_is_not_closed_while_its_request_is_answered():
    release = asyncio.Event()
    slow = _answer_once(release)
    protocol, transport, state = keep_alive_for(slow, 1)
    protocol.data_received(REQUEST)
    await asyncio.sleep(1.5)  # past a keep-alive: the timer lapses, the connection stays
    assert not transport.closed and protocol.timeout_keep_alive_task is None
    release.set()
    await _served(protocol, state, 1)
    assert not transport.closed and protocol.timeout_keep_alive_task is not None
    await asyncio.sleep(1.3)
    assert transport.closed
    protocol.connection_lost(None)


async def test_requests_on_a_connection_make_no_new_keep_alive_timer_each():
    protocol, transport, state = keep_alive_for(_answer(), 5)
    first = protocol.timeout_keep_alive_task  # armed when the connection was made
    for n in range(1, 6):
        protocol.data_received(REQUEST)
        await _served(protocol, state, n)
    assert protocol.timeout_keep_alive_task is first and not transport.closed
    protocol.connection_lost(None)
    assert protocol.timeout_keep_alive_task is None and first.cancelled()


async def test_a_connection_that_never_speaks_is_closed_after_the_keep_alive():
    protocol, transport, _ = keep_alive_for(_answer(), 1)
    await asyncio.sleep(1.3)
    assert transport.closed
    protocol.connection_lost(None)


# --- what was uvicorn's protocol's and is this one's own: shutdown, concurrency limit, reads paused


async def test_a_shutdown_closes_an_idle_connection_at_once():
    protocol, transport, state = keep_alive_for(_answer(), 5)
    protocol.data_received(REQUEST)
    await _served(protocol, state, 1)
    protocol.shutdown()  # what uvicorn's server calls on every connection at SIGTERM
    assert transport.closed
    protocol.connection_lost(None)
    assert protocol not in state.connections


async def test_a_shutdown_lets_a_busy_connection_answer_then_close():
    release = asyncio.Event()
    slow = _answer_once(release)
    protocol, transport, state = keep_alive_for(slow, 5)
    protocol.data_received(REQUEST)
    await asyncio.sleep(0.01)
    protocol.shutdown()
    assert not transport.closed
    release.set()
    await _served(protocol, state, 1)
    answer = b"".join(transport.writes)
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"connection: close\r\n" in answer
    assert transport.closed
    protocol.connection_lost(None)


async def test_past_the_concurrency_limit_a_request_gets_503():
    config = Config(app=_answer(), log_level="critical", access_log=False, proxy_headers=False,
                    limit_concurrency=1)
    config.load()
    state = ServerState()
    protocol = GuardedHttpToolsProtocol(config=config, server_state=state, app_state={},
                                        _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)  # one connection: the limit is reached
    protocol.data_received(REQUEST)
    await _served(protocol, state, 1)
    answer = b"".join(transport.writes)
    assert answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(b"Service Unavailable")
    protocol.connection_lost(None)


async def test_a_body_past_the_high_water_mark_pauses_reading_until_the_app_takes_it():
    from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

    taken = asyncio.Event()
    go = asyncio.Event()
    sizes: list[int] = []

    async def app(scope, receive, send):
        await go.wait()
        message = await receive()
        sizes.append(len(message["body"]))
        taken.set()
        while message.get("more_body"):
            message = await receive()
            sizes.append(len(message["body"]))
        await BytesResponse(200, b"{}", [])(scope, receive, send)

    protocol, transport = connected(app)
    paused: list[str] = []
    transport.pause_reading = lambda: paused.append("pause")  # type: ignore[method-assign]
    transport.resume_reading = lambda: paused.append("resume")  # type: ignore[method-assign]
    size = HIGH_WATER_LIMIT + 10
    protocol.data_received(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (size + 5))
    protocol.data_received(b"a" * size)
    assert paused == ["pause"]  # the app has not read: no more is read from the socket
    go.set()
    await taken.wait()
    assert paused == ["pause", "resume"] and sizes == [size]
    protocol.data_received(b"b" * 5)
    for _ in range(20):
        await asyncio.sleep(0)
    assert sum(sizes) == size + 5
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 200 OK")
    protocol.connection_lost(None)
