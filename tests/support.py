"""Test doubles that are real network peers: a scriptable upstream and a proxy subprocess.

`FakeUpstream` is an aiohttp server on a free loopback port. Tests script each path
with a respx-like API (`upstream.post("/chat/completions").respond(...)`) and read back
what the proxy sent (`route.calls.last.request`). Run it inside the test's event loop
(`async with FakeUpstream() as up`) or in a thread of its own (`FakeUpstream.threaded()`)
for a proxy started as a subprocess.

`ServerProcess` runs `python -m proxy serve` on a free port and waits until /healthz
answers; its log goes to a file the test can read. `AppClient` is the in-process app
behind an httpx client (conftest.py's `app_client` fixture makes them).

`eventually(predicate)` is the one way a test waits for something to happen (never a
fixed sleep); `chat_body()` is the one chat request body builder.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import redis
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

REPO = Path(__file__).resolve().parent.parent

# The shared Redis the tests use: a database of their own (15, not the 0 a deployment
# uses), and a key prefix of this run's own in every config and key they write, so two
# runs never meet and conftest.py deletes exactly what this run left.
REDIS_URL = os.environ.get("SWITCHYARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REDIS_PREFIX = f"sytest{os.getpid()}:"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_HELD_PORTS: list[socket.socket] = []


def dead_port() -> int:
    """A port where nothing listens, for as long as the tests run: it stays bound (not listening) so
    connections are refused. A merely free port is not enough: Linux may pick it as the ephemeral
    source port of a connect to it, and that connection then talks to itself and "answers"."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _HELD_PORTS.append(sock)
    return int(sock.getsockname()[1])


# ------------------------------------------------------------------ waiting, and request bodies


def eventually(
    predicate: Callable[[], Any],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str | Callable[[], str] | None = None,
    ignore: tuple[type[BaseException], ...] = (),
    blocking: bool | None = None,
) -> Any:
    """Poll `predicate` until it returns something truthy, and return that value.

    The one way a test waits for a condition: the wait ends as soon as it holds, and
    `timeout` only bounds a hang (past it: an AssertionError naming `what`, a string or a
    callable that describes the state). Exceptions of the `ignore` types count as "not yet".

    In a running event loop it is a coroutine (`await eventually(...)`) and the predicate
    may be async; outside one (sync tests, threads) it blocks. `blocking=True` blocks even
    in a loop: for sync helpers (starting a server) that async tests call too.
    """
    if blocking is None:
        try:
            asyncio.get_running_loop()
            blocking = False
        except RuntimeError:
            blocking = True
    if blocking:
        return _eventually_blocking(predicate, timeout, interval, what, ignore)
    return _eventually_async(predicate, timeout, interval, what, ignore)


def _timed_out(predicate: Callable[[], Any], timeout: float, what: str | Callable[[], str] | None,
               last_error: BaseException | None) -> AssertionError:
    described = what() if callable(what) else what
    name = described or getattr(predicate, "__qualname__", repr(predicate))
    note = f" (last error: {last_error!r})" if last_error is not None else ""
    return AssertionError(f"timed out after {timeout:g} s waiting for {name}{note}")


def _attempt(predicate: Callable[[], Any], ignore: tuple[type[BaseException], ...]) -> tuple[Any, BaseException | None]:
    try:
        return predicate(), None
    except ignore as exc:
        return None, exc


def _eventually_blocking(predicate: Callable[[], Any], timeout: float, interval: float,
                         what: str | Callable[[], str] | None, ignore: tuple[type[BaseException], ...]) -> Any:
    deadline, last_error = time.monotonic() + timeout, None
    while True:
        value, last_error = _attempt(predicate, ignore)
        if inspect.iscoroutine(value):
            value.close()
            raise TypeError("an async predicate needs `await eventually(...)` in a running loop")
        if value or time.monotonic() >= deadline:
            return _settled(value, predicate, timeout, what, last_error)
        time.sleep(interval)


async def _eventually_async(predicate: Callable[[], Any], timeout: float, interval: float,
                            what: str | Callable[[], str] | None, ignore: tuple[type[BaseException], ...]) -> Any:
    loop = asyncio.get_running_loop()
    deadline, last_error = loop.time() + timeout, None
    while True:
        value, last_error = _attempt(predicate, ignore)
        if inspect.isawaitable(value):
            value, last_error = await _awaited(value, ignore)
        if value or loop.time() >= deadline:
            return _settled(value, predicate, timeout, what, last_error)
        await asyncio.sleep(interval)


async def _awaited(value: Any, ignore: tuple[type[BaseException], ...]) -> tuple[Any, BaseException | None]:
    try:
        return await value, None
    except ignore as exc:
        return None, exc


def _settled(value: Any, predicate: Callable[[], Any], timeout: float, what: str | Callable[[], str] | None,
             last_error: BaseException | None) -> Any:
    """The value when the condition held; the timeout's AssertionError when it never did."""
    if value:
        return value
    raise _timed_out(predicate, timeout, what, last_error)


def expire_redis_keys(pattern: str, seconds: float, url: str = REDIS_URL) -> list[bytes]:
    """Expire now the keys matching `pattern` whose TTL is at most `seconds`: Redis keeps its
    own time, so a test that lets a short TTL pass does it this way instead of waiting."""
    with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5) as client:
        short = [k for k in client.scan_iter(match=pattern, count=1000) if 0 <= client.pttl(k) <= seconds * 1000]
        assert short, f"no key matching {pattern} has a TTL of at most {seconds:g} s"
        for k in short:
            client.pexpire(k, 1)
        eventually(lambda: not any(client.exists(k) for k in short), what="the short-lived keys to expire",
                   blocking=True)
    return short


def chat_body(model: str = "fast", text: str = "hello", **fields: Any) -> dict[str, Any]:
    """A chat completions request body: one user message; `fields` are added (or replace `messages`)."""
    return {"model": model, "messages": [{"role": "user", "content": text}], **fields}


# ------------------------------------------------------------------ a private Redis


class LoadThreads:
    """Background load for a `with` block: `threads` daemon threads each run `self._run(index)`,
    which loops until `self._stop` is set (on leaving the block, which then joins them)."""

    def __init__(self, threads: int) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

class PrivateRedis:
    """`redis-server --port <free> --save '' --appendonly no` of the test's own, to freeze
    (SIGSTOP), thaw, kill and start again on the same port: the machine's shared Redis is
    never stopped by a test."""

    def __init__(self, port: int | None = None, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is needed for these tests (apt-get install redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self.password = password  # --requirepass: clients AUTH first
        auth = f":{quote(password, safe='')}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        auth = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *auth],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            with redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2) as probe:
                return bool(probe.ping())

        try:  # blocking: async tests restart it too
            eventually(answers, timeout=10, interval=0.02, ignore=(redis.RedisError,), blocking=True)
        except AssertionError:
            raise RuntimeError("the private redis-server did not start") from None
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_connect_timeout=1, socket_timeout=2)

    def keys(self) -> int:
        with self.client() as c:
            return int(c.dbsize())

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def freeze(self) -> None:
        self.send(signal.SIGSTOP)

    def thaw(self) -> None:
        self.send(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL ends a frozen one too
            self.proc.wait(5)
            self.proc = None


# ------------------------------------------------------------------ PostgreSQL

# The PostgreSQL the tests use (`make test` starts a private one when none answers). Tests
# never touch its databases: each run creates one of its own (`PgDatabase`) and drops it.
PG_URL = os.environ.get("SWITCHYARD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_MISSING = (f"no PostgreSQL answers at {PG_URL}: the ledger tests need one. `make test` starts a private "
              "server when none answers and pg_ctl/initdb are installed (apt-get install postgresql); "
              "or point SWITCHYARD_TEST_PG_URL at one (a user that may CREATE DATABASE)")


def pg_url(database: str, base: str = PG_URL) -> str:
    """`base` with its database replaced."""
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(base)._replace(path="/" + database))


class PgDatabase:
    """A database of this run's own, `switchyard_test_<pid>_<random>`, on the test server;
    `drop()` removes it. Fails the test (never skips it) when PostgreSQL does not answer."""

    def __init__(self, base: str = PG_URL) -> None:
        self.base = base
        self.name = f"switchyard_test_{os.getpid()}_{os.urandom(4).hex()}"
        self.url = pg_url(self.name, base)

    async def _admin(self, sql: str) -> None:
        import asyncpg

        try:
            conn = await asyncpg.connect(self.base, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            pytest.fail(f"{PG_MISSING} ({exc!r})")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create(self) -> PgDatabase:
        await self._admin(f'CREATE DATABASE "{self.name}"')
        return self

    async def drop(self) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class TcpRelay:
    """A TCP relay on a free loopback port in front of `target` (host, port), in threads of
    its own (it serves in-process tests and subprocesses alike). `cut()` closes every
    connection and refuses new ones (they are accepted and closed at once: a database
    that went away); `restore()` lets them through again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._cut = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stopped = False
        self.accepted = 0
        threading.Thread(target=self._accept, name="tcp-relay", daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self._cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source)
            self._close(sink)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def url(self, base: str) -> str:
        """`base` (a postgresql:// URL) through this relay."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(base)
        auth = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=(auth + "@" if auth else "") + f"127.0.0.1:{self.port}"))

    def cut(self) -> None:
        self._cut = True
        with self._lock:
            doomed = list(self._open)
        for sock in doomed:
            self._close(sock)

    def restore(self) -> None:
        self._cut = False

    def close(self) -> None:
        self._stopped = True
        self.cut()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self._listener.close()


# ------------------------------------------------------------------ fake upstream


class UnansweredPort:
    """A port whose connects hang (SYNs dropped): a listener with a full accept queue.
    The only way to stage a connect timeout on loopback."""

    def __enter__(self) -> int:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        port = self._listener.getsockname()[1]
        self._filler = socket.create_connection(("127.0.0.1", port))  # the queue's one place
        return port

    def __exit__(self, *exc: object) -> None:
        self._filler.close()
        self._listener.close()


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    url: str
    path: str
    headers: CIMultiDictProxy[str]
    content: bytes

    def json(self) -> Any:
        return orjson.loads(self.content)


@dataclass
class Calls:
    items: list[RecordedRequest] = field(default_factory=list)

    @property
    def last(self) -> Call:
        return Call(self.items[-1])

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class Call:
    request: RecordedRequest


Behaviour = Callable[[web.Request], Any]  # an aiohttp handler


class FakeRoute:
    """What one path answers. The last `respond`/`stream`/`fault`/`handler` call wins."""

    def __init__(self) -> None:
        self.calls = Calls()
        self._handler: Behaviour = _not_scripted

    @property
    def call_count(self) -> int:
        return len(self.calls)

    @property
    def called(self) -> bool:
        return bool(self.calls.items)

    def respond(
        self,
        status: int = 200,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> FakeRoute:
        if json is not None:
            body = orjson.dumps(json)
            base = {"content-type": "application/json"}
        else:
            body = content.encode() if isinstance(content, str) else (content or b"")
            base = {}
        all_headers = {**base, **(headers or {})}

        async def handler(request: web.Request) -> web.StreamResponse:
            if delay_s:
                await asyncio.sleep(delay_s)
            return web.Response(status=status, body=body, headers=all_headers)

        self._handler = handler
        return self

    def stream(
        self,
        events: Iterable[bytes],
        *,
        status: int = 200,
        interval_s: float = 0.0,
        pause_after: int | None = None,
        pause_s: float = 0.0,
        cut_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> FakeRoute:
        """Send `events` one write each. `pause_after=N` sleeps `pause_s` after the N-th;
        `cut_after=N` drops the connection after N events (no terminating chunk)."""
        events = list(events)

        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(
                status=status, headers={"content-type": "text/event-stream", **(headers or {})}
            )
            await response.prepare(request)
            for n, event in enumerate(events, start=1):
                await response.write(event)
                if cut_after is not None and n >= cut_after:
                    await asyncio.sleep(0.05)  # let what was written leave: abort() drops unsent bytes
                    _cut(request)
                    return response
                if pause_after is not None and n == pause_after:
                    await asyncio.sleep(pause_s)
                elif interval_s:
                    await asyncio.sleep(interval_s)
            await response.write_eof()
            return response

        self._handler = handler
        return self

    def fault(self, kind: str, *, seconds: float = 30.0) -> FakeRoute:
        """`hang`: never answer (for `seconds`); `close`: drop the connection with no answer."""

        async def handler(request: web.Request) -> web.StreamResponse:
            if kind == "hang":
                await asyncio.sleep(seconds)
                return web.Response(status=504)
            if kind == "close":
                _cut(request)
                return web.Response(status=500)  # never sent: the socket is gone
            raise AssertionError(f"unknown fault {kind!r}")

        self._handler = handler
        return self

    def handler(self, fn: Behaviour) -> FakeRoute:
        self._handler = fn
        return self

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.calls.items.append(
            RecordedRequest(
                request.method, str(request.url), request.path,
                CIMultiDictProxy(CIMultiDict(request.headers)), body,
            )
        )
        return await self._handler(request)


def _cut(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _not_scripted(request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": {"message": f"fake upstream: {request.path} not scripted"}}, status=599)


class FakeUpstream:
    """A scriptable OpenAI-compatible upstream on 127.0.0.1; `base_url` ends in /v1."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.routes: dict[tuple[str, str], FakeRoute] = {}
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def post(self, path: str) -> FakeRoute:
        return self._route("POST", path)

    def get(self, path: str) -> FakeRoute:
        return self._route("GET", path)

    def _route(self, method: str, path: str) -> FakeRoute:
        return self.at(method, "/v1" + path)

    def at(self, method: str, full_path: str) -> FakeRoute:
        """A route by its whole path (for APIs not under /v1, like Azure's or Anthropic's)."""
        return self.routes.setdefault((method, full_path), FakeRoute())

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        route = self.routes.get((request.method, request.path))
        if route is None:
            return web.json_response({"error": {"message": f"no route {request.path}"}}, status=404)
        return await route._serve(request)

    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- in a thread, for a proxy in another process

    def start_threaded(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    def stop_threaded(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


# ------------------------------------------------------------------ the app in process


class AppClient(httpx.AsyncClient):
    """An httpx client over ASGITransport to an app `create_app` built; `aclose()` closes the
    app's runtime too (provider pools, cache, ledger, telemetry). Made by conftest.py's
    `app_client` fixture, which closes any a test left open."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(transport=httpx.ASGITransport(app=app), base_url="http://t", **kwargs)
        self.app = app
        self._runtime_closed = False

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    async def aclose(self) -> None:
        await super().aclose()
        if not self._runtime_closed:
            self._runtime_closed = True
            await self.app.state.runtime.aclose()


# ------------------------------------------------------------------ SSE helpers


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chunk_events(words: list[str], *, model: str = "up-model", usage: dict | None = None) -> list[bytes]:
    """A well-formed OpenAI chat stream of `words`, with an optional usage chunk, then [DONE]."""
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model}
    opening = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    events = [sse({**base, "choices": [opening]})]
    events += [sse({**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}) for w in words]
    events.append(sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if usage is not None:
        events.append(sse({**base, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def completion(content: str = "hi there", *, model: str = "up-model", usage: dict | None = None) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": usage or {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


# ------------------------------------------------------------------ proxy subprocess


class ServerProcess:
    """`python -m proxy serve --config PATH` on a free port; `stop()` sends SIGTERM."""

    def __init__(
        self, config: Path, *, env: dict[str, str] | None = None, log: Path | None = None, args: list[str] | None = None
    ) -> None:
        self.config = config
        self.args = args or []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log or config.with_suffix(".log")
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> ServerProcess:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(self.config),
             "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            cwd=REPO, env=self._env, stdout=self._log, stderr=subprocess.STDOUT,
        )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"proxy exited with {self.proc.returncode}:\n{self.log()}")
            return httpx.get(self.base_url + "/healthz", timeout=0.5).status_code == 200

        try:
            eventually(healthy, timeout=timeout_s, interval=0.05, ignore=(httpx.HTTPError,), blocking=True)
        except AssertionError:
            self.stop()
            raise RuntimeError(f"proxy did not become healthy in {timeout_s}s:\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
