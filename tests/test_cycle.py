"""The compiled request cycle (proxy/cycle.py) against uvicorn's own: the same bytes on the
wire for the same ASGI app and request, and the same answers to apps that misbehave."""

from __future__ import annotations

import asyncio

import pytest
from test_server_writes import RecordingTransport, connected
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

POST = b"POST /v1/x?y=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"


def uvicorns(app) -> tuple[HttpToolsProtocol, RecordingTransport]:
    config = Config(app=app, log_level="warning", access_log=False, proxy_headers=False)
    config.load()
    protocol = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={},
                                 _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


async def settle(turns: int = 30) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def wire(make, app, *reads: bytes) -> tuple[bytes, bool]:
    """What `app` writes, served by the protocol `make` gives, for the request sent in `reads`;
    and whether the connection was closed."""
    protocol, transport = make(app)
    for data in reads:
        protocol.data_received(data)
        await settle()
    await settle()
    written, closed = b"".join(transport.writes), transport.closed
    protocol.connection_lost(None)
    await settle()
    return written, closed


def sends(*messages: dict):
    async def app(scope, receive, send):
        await receive()
        for message in messages:
            await send(message)
    return app


START = {"type": "http.response.start", "status": 200}
APPS = {
    "content-length": sends({**START, "headers": [(b"content-length", b"2"), (b"x-a", b"1")]},
                            {"type": "http.response.body", "body": b"ok"}),
    "chunked, no length": sends({**START, "headers": [(b"content-type", b"text/plain")]},
                                {"type": "http.response.body", "body": b"a", "more_body": True},
                                {"type": "http.response.body", "body": b"", "more_body": True},
                                {"type": "http.response.body", "body": b"bc"}),
    "connection close asked": sends({**START, "headers": [(b"connection", b"Close"), (b"content-length", b"0")]},
                                    {"type": "http.response.body"}),
    "204": sends({**START, "status": 204, "headers": []}, {"type": "http.response.body"}),
    "mixed-case names": sends({**START, "headers": [(b"Content-Length", b"1"), (b"X-Thing", b"v")]},
                              {"type": "http.response.body", "body": b"1"}),
    "app raises first": None,  # filled below
}


async def _raises(scope, receive, send):
    await receive()
    raise ValueError("boom")


async def _raises_after_start(scope, receive, send):
    await receive()
    await send({**START, "headers": [(b"content-length", b"5")]})
    raise ValueError("boom")


async def _never_answers(scope, receive, send):
    await receive()


async def _half_answers(scope, receive, send):
    await receive()
    await send({**START, "headers": [(b"content-length", b"5")]})


async def _returns_a_value(scope, receive, send):
    await receive()
    await send({**START, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body"})
    return "oops"


async def _body_before_start(scope, receive, send):
    await receive()
    await send({"type": "http.response.body", "body": b"x"})


async def _bad_header_value(scope, receive, send):
    await receive()
    await send({**START, "headers": [(b"x-bad", b"a\nb")]})


async def _too_long(scope, receive, send):
    await receive()
    await send({**START, "headers": [(b"content-length", b"1")]})
    await send({"type": "http.response.body", "body": b"12"})


APPS["app raises first"] = _raises
APPS.update({
    "app raises after the head": _raises_after_start,
    "app never answers": _never_answers,
    "app stops after the head": _half_answers,
    "app returns a value": _returns_a_value,
    "body before the head": _body_before_start,
    "control character in a header": _bad_header_value,
    "body longer than its length": _too_long,
})

REQUESTS = {
    "post": (POST,),
    "head": (b"HEAD /v1/x HTTP/1.1\r\nhost: x\r\n\r\n",),
    "http/1.0": (b"POST /v1/x HTTP/1.0\r\ncontent-length: 2\r\n\r\n{}",),
    "client asks close": (b"POST /v1/x HTTP/1.1\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",),
    "body in three reads": (b"POST /v1/x HTTP/1.1\r\ncontent-length: 6\r\n\r\nab", b"cd", b"ef"),
    "expect 100-continue": (b"POST /v1/x HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n", b"{}"),
    "chunked request": (b"POST /v1/x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n", b"0\r\n\r\n"),
}


@pytest.mark.parametrize("request_name", list(REQUESTS))
@pytest.mark.parametrize("app_name", list(APPS))
async def test_the_same_bytes_as_uvicorns_cycle(app_name, request_name):
    app, reads = APPS[app_name], REQUESTS[request_name]
    ours = await wire(connected, app, *reads)
    theirs = await wire(uvicorns, app, *reads)
    assert ours == theirs


async def test_the_body_arrives_as_uvicorn_delivers_it():
    seen = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            seen.append((message["body"], message["more_body"]))
            if not message["more_body"]:
                break
        await send({**START, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body"})

    await wire(connected, app, b"POST /v1/x HTTP/1.1\r\ncontent-length: 6\r\n\r\nab", b"cd", b"ef")
    assert b"".join(body for body, _ in seen) == b"abcdef"
    assert seen[-1][1] is False and all(more for _, more in seen[:-1])


async def test_waiting_receivers_all_hear_the_disconnect():
    heard = []

    async def app(scope, receive, send):
        await receive()  # the body
        waiters = [asyncio.ensure_future(receive()) for _ in range(3)]
        heard.extend(await asyncio.gather(*waiters))

    protocol, transport = connected(app)
    protocol.data_received(POST)
    await settle()
    protocol.connection_lost(None)
    await settle()
    assert heard == [{"type": "http.disconnect"}] * 3


async def test_pipelined_requests_are_answered_in_order():
    async def app(scope, receive, send):
        await receive()
        body = scope["path"].encode()
        await send({**START, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    reads = (b"POST /a HTTP/1.1\r\ncontent-length: 0\r\n\r\nPOST /bb HTTP/1.1\r\ncontent-length: 0\r\n\r\n",)
    ours, theirs = await wire(connected, app, *reads), await wire(uvicorns, app, *reads)
    assert ours == theirs and ours[0].index(b"\r\n\r\n/a") < ours[0].index(b"\r\n\r\n/bb")


TARGETS = ["/v1/a%20b?q=1&r=%20", "/v1/chat/completions", "/", "//twice//slashes", "/v1/x?", "/v1/x#frag",
           "/v1/x?q=1#frag", "/a%2Fb%3F?c", "http://example.com/v1/x?y=2", "/%C3%A9t%C3%A9", "/v1/x?q=/a?b"]
HEAD_LINES = {
    "mixed case, trailing blanks": b"host: x\r\nX-Up: A \r\nAuthorization: Bearer k\t\r\nX-Two:  a  b  \r\n",
    "an upgrade that is not a WebSocket": b"host: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n",
    "empty values": b"host: x\r\nx-empty:\r\nX-BLANK:   \r\n",
}


@pytest.mark.parametrize("lines", list(HEAD_LINES))
@pytest.mark.parametrize("target", TARGETS)
async def test_the_scope_is_uvicorns(target, lines):
    """Path, query and headers as uvicorn's protocol gives them, whichever way they are found
    (a plain path is taken as it is; anything else goes through httptools' URL parser)."""
    scopes = []

    async def app(scope, receive, send):
        scopes.append({k: v for k, v in scope.items() if k not in ("extensions", "state")})
        await receive()
        await send({**START, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body"})

    request = b"POST %s HTTP/1.1\r\n%scontent-length: 0\r\n\r\n" % (target.encode(), HEAD_LINES[lines])
    ours = await wire(connected, app, request)
    theirs = await wire(uvicorns, app, request)
    assert ours == theirs
    assert len(scopes) == 2 and scopes[0] == scopes[1]


def names_heard(names: list[bytes]):
    """An app that notes the request's header names and answers with an empty body."""
    async def app(scope, receive, send):
        names.extend(name for name, _ in scope["headers"])
        await receive()
        await send({**START, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body"})
    return app


async def test_header_names_past_the_remembered_ones_are_still_lowercased():
    names: list[bytes] = []
    for batch in range(8):  # 800 made-up names: more than the protocol remembers
        lines = b"".join(b"X-Made-Up-%d-%d: v\r\n" % (batch, i) for i in range(100))
        await wire(connected, names_heard(names), b"POST /v1/x HTTP/1.1\r\n%scontent-length: 0\r\n\r\n" % lines)
    assert len(names) == 800 + 8 and all(name == name.lower() for name in names)
    assert b"x-made-up-7-99" in names


async def test_long_header_names_are_not_remembered():
    """A client's made-up names fill the memo at most with short ones: 512 names of 60 KB
    each would otherwise stay in memory for the process's life."""
    from proxy import server

    names: list[bytes] = []
    long_name = b"X-" + b"Long" * 2000
    await wire(connected, names_heard(names), b"POST /v1/x HTTP/1.1\r\n%s: v\r\ncontent-length: 0\r\n\r\n" % long_name)
    assert long_name.lower() in names
    assert all(len(name) <= 64 for name in server._LOWERED)
