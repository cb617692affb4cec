"""The cache's lookups on a pipelined Redis connection of their own (proxy/cache/redis_reads.py):
replies matched to their GETs in order, AUTH and SELECT from the URL, time boxes that leave
the connection in step, lost connections and a peer that does not speak RESP."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from proxy.cache.backends import MemoryBackend
from proxy.cache.redis_backend import RedisBackend
from proxy.cache.redis_reads import RedisReads, command
from proxy.providers.wire import UpstreamResponse
from proxy.relay import StreamRelay, iterate
from support import REDIS_PREFIX, REDIS_URL, PrivateRedis

pytestmark = pytest.mark.integration  # the machine's Redis, or a private redis-server


@pytest.fixture
def shared() -> Iterator[tuple[redis.Redis, str]]:
    """The machine's Redis (the tests' database) and a key prefix of this test's own."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:  # `make test` starts Redis: missing it is a failure, never a skip
        pytest.fail(f"Redis at {REDIS_URL} is required: {exc}")
    prefix = f"{REDIS_PREFIX}reads{uuid.uuid4().hex[:8]}:"
    try:
        yield client, prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


@pytest.fixture
async def reads() -> AsyncIterator[RedisReads]:
    made = RedisReads.for_url(REDIS_URL)
    assert made is not None
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def private() -> Iterator[PrivateRedis]:
    server = PrivateRedis(password="s3cret:with@odd/chars").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.parametrize(
    ("parts", "wire"),
    [
        ((b"GET", b"k"), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
        ((b"AUTH", b"pw"), b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"),
        ((b"AUTH", b"user", b"a b\r\n"), b"*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$5\r\na b\r\n\r\n"),
        ((b"SELECT", b"15"), b"*2\r\n$6\r\nSELECT\r\n$2\r\n15\r\n"),
        ((b"GET", b""), b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n"),
    ],
)
def test_commands_in_resp(parts, wire):
    assert command(*parts) == wire


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/15", ("127.0.0.1", 6379, [command(b"SELECT", b"15")])),
        ("redis://h", ("h", 6379, [])),
        ("redis://:pw@h:7000/0", ("h", 7000, [command(b"AUTH", b"pw")])),
        ("redis://app:pw@h:7000/2", ("h", 7000, [command(b"AUTH", b"app", b"pw"), command(b"SELECT", b"2")])),
        ("redis://:p%40ss@h/1", ("h", 6379, [command(b"AUTH", b"p@ss"), command(b"SELECT", b"1")])),
        ("rediss://h:6380/0", None),  # TLS: redis-py's client reads
        ("unix:///run/redis.sock?db=1", None),
    ],
)
def test_for_url(url, expected):
    made = RedisReads.for_url(url)
    if expected is None:
        assert made is None
        return
    assert made is not None
    assert (made.host, made.port, made._greeting) == expected


async def test_values_and_misses(shared, reads):
    client, prefix = shared
    client.set(f"{prefix}a", b"\x00binary\r\nvalue")
    client.set(f"{prefix}empty", b"")
    client.set(f"{prefix}ключ", b"unicode key")
    assert await reads.get(f"{prefix}a", 1.0) == b"\x00binary\r\nvalue"
    assert await reads.get(f"{prefix}empty", 1.0) == b""
    assert await reads.get(f"{prefix}ключ", 1.0) == b"unicode key"
    assert await reads.get(f"{prefix}missing", 1.0) is None
    big = random.randbytes(300_000)  # several reads of the socket for one reply
    client.set(f"{prefix}big", big)
    assert await reads.get(f"{prefix}big", 2.0) == big


async def test_concurrent_gets_share_the_connection_and_each_gets_its_own_reply(shared, reads):
    client, prefix = shared
    for n in range(0, 300, 2):  # odd keys stay missing
        client.set(f"{prefix}{n}", str(n).encode() * (n % 7 + 1))
    replies = await asyncio.gather(*(reads.get(f"{prefix}{n}", 2.0) for n in range(300)))
    assert replies == [str(n).encode() * (n % 7 + 1) if n % 2 == 0 else None for n in range(300)]
    assert reads._link is not None and not reads._link.waiting  # one connection, nothing left waiting


def test_on_uvloop_as_served(shared):
    """`switchyard serve` runs on uvloop, whose transports differ from asyncio's."""
    client, prefix = shared
    client.set(f"{prefix}u", b"on uvloop")

    async def scenario() -> list[bytes | None]:
        reads = RedisReads.for_url(REDIS_URL)
        assert reads is not None
        try:
            return await asyncio.gather(*(reads.get(f"{prefix}{key}", 2.0) for key in ("u", "none", "u")))
        finally:
            reads.close()

    assert uvloop.run(scenario()) == [b"on uvloop", None, b"on uvloop"]


async def test_an_error_reply_fails_its_get_and_the_connection_goes_on(shared, reads):
    client, prefix = shared
    client.hset(f"{prefix}hash", "f", "v")
    client.set(f"{prefix}plain", b"ok")
    wrong, right = await asyncio.gather(reads.get(f"{prefix}hash", 1.0), reads.get(f"{prefix}plain", 1.0),
                                        return_exceptions=True)
    assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)
    assert right == b"ok"


async def test_auth_and_select_from_the_url(private):
    with redis.Redis(port=private.port, password=private.password, db=3) as client:
        client.set("k", b"in db 3")
    quoted = "s3cret%3Awith%40odd%2Fchars"
    for url in (f"redis://:{quoted}@127.0.0.1:{private.port}/3",
                f"redis://default:{quoted}@127.0.0.1:{private.port}/3"):
        reads = RedisReads.for_url(url)
        assert reads is not None
        try:
            assert await reads.get("k", 2.0) == b"in db 3"
        finally:
            reads.close()
    for url in (f"redis://:wrong@127.0.0.1:{private.port}/3", f"redis://127.0.0.1:{private.port}/3"):
        reads = RedisReads.for_url(url)
        assert reads is not None
        try:
            with pytest.raises(ResponseError):  # WRONGPASS; NOAUTH for the SELECT without AUTH
                await reads.get("k", 2.0)
        finally:
            reads.close()


async def test_a_frozen_redis_times_out_and_late_replies_are_dropped_in_order(private):
    with private.client() as client:
        client.set("a", b"A")
        client.set("b", b"B")
    reads = RedisReads.for_url(private.url)
    assert reads is not None
    try:
        assert await reads.get("a", 2.0) == b"A"  # connected
        private.freeze()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await reads.get("a", 0.05)
        assert loop.time() - started < 1.0
        with pytest.raises(TimeoutError):
            await reads.get("a", 0.05)
        private.thaw()
        # the two late replies ("A", "A") arrive first and are dropped: "b" gets its own
        assert await reads.get("b", 5.0) == b"B"
        assert await reads.get("a", 5.0) == b"A"
    finally:
        private.thaw()
        reads.close()


async def test_a_lost_connection_fails_what_waits_and_the_next_get_connects_again(private):
    with private.client() as client:
        client.set("k", b"v")
    reads = RedisReads.for_url(private.url)
    assert reads is not None
    try:
        assert await reads.get("k", 2.0) == b"v"
        private.freeze()
        waiting = asyncio.ensure_future(reads.get("k", 10.0))
        await asyncio.sleep(0.05)
        private.kill()
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises((RedisConnectionError, OSError, TimeoutError)):
            await reads.get("k", 0.5)  # nobody listens on the port now
        private.start()
        with private.client() as client:
            client.set("k", b"again")
        assert await reads.get("k", 2.0) == b"again"
    finally:
        reads.close()


async def peer(answer: bytes) -> tuple[asyncio.Server, int]:
    """A TCP server that answers every connection's first bytes with `answer`."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(100)
            writer.write(answer)
            while await reader.read(100):  # until the client closes its end
                pass
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_peer_not_speaking_resp_fails_the_get_and_loses_the_connection():
    server, port = await peer(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    reads = RedisReads.for_url(f"redis://127.0.0.1:{port}/0")
    assert reads is not None
    try:
        with pytest.raises(RedisConnectionError):
            await reads.get("k", 2.0)
        assert reads._link is None
    finally:
        reads.close()
        server.close()
        await server.wait_closed()


async def test_a_reply_nobody_asked_for_closes_the_connection():
    server, port = await peer(b"$3\r\nabc\r\n$3\r\nxyz\r\n")  # two replies to one GET
    reads = RedisReads.for_url(f"redis://127.0.0.1:{port}/0")
    assert reads is not None
    try:
        assert await reads.get("k", 2.0) == b"abc"
        link = reads._link
        assert link is not None and link.closed  # out of step: never used again
        assert await reads.get("k", 2.0) == b"abc"  # a new connection
        assert reads._link is not link
    finally:
        reads.close()
        server.close()
        await server.wait_closed()


async def test_the_backend_reads_through_it_and_falls_back_when_redis_is_frozen(private):
    backend = RedisBackend(private.url, timeout_ms=50, failures=2, cooldown_s=60, fallback=MemoryBackend(10))
    try:
        assert backend._reads is not None
        await backend.set("k", b"stored", 60)
        assert await backend.get("k") == b"stored"
        await backend.fallback.set("k", b"local", 60)
        private.freeze()
        assert await asyncio.wait_for(backend.get("k"), 2) == b"local"  # a miss in Redis: the fallback answers
        assert await asyncio.wait_for(backend.get("k"), 2) == b"local"
        assert backend.errors == 2 and not backend.available  # the guard skips Redis now
    finally:
        private.thaw()
        await backend.aclose()


async def test_timed_out_lookups_leave_no_exception_behind(private):
    """Fifty lookups cut off at once against a frozen Redis are fifty misses, and leave nothing
    behind. Compiled by mypyc, an `await` inside an except block can raise the caught exception
    again, and an exception set on an awaited future can stay in the thread's handled-exception
    state, for a later `finally` holding an `await` (the stream relay's) to raise."""
    backend = RedisBackend(private.url, timeout_ms=50, failures=1000, cooldown_s=5, fallback=MemoryBackend(10))
    try:
        await backend.set("k", b"v", 60)
        private.freeze()
        assert await asyncio.gather(*(backend.get(f"k{n}") for n in range(50))) == [None] * 50
    finally:
        private.thaw()
        await backend.aclose()
    sent: list[dict] = []
    outcomes: list[str] = []

    async def send(message):
        sent.append(message)

    async def receive():
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    relay = StreamRelay(UpstreamResponse(200, [], chunks=iterate([b"data: 1\n\n"])), [], outcomes.append)
    await relay({"type": "http", "method": "POST"}, receive, send)  # compiled: awaits in its finally
    assert outcomes == ["complete"] and sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
