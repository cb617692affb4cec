"""The server protocol's joined writes (proxy/server.py): a complete response leaves in
one send, head and body together; streams and anything else are written as they come."""

from __future__ import annotations

import asyncio

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from proxy.relay import BytesResponse
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


async def serve_one(app, request: bytes) -> RecordingTransport:
    config = Config(app=app, log_level="warning", access_log=False, proxy_headers=False)
    config.load()
    protocol = GuardedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={},
                                        _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(request)
    for _ in range(50):
        await asyncio.sleep(0)
        if protocol.cycle is not None and protocol.cycle.response_complete:
            break
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
