"""Python bytecode instructions per proxied request, by function: a measure of the
gateway's own work that does not move with the machine's load.

CPU µs per request on a shared VM moves by a fifth between runs, so a change of 2% cannot
be seen in `make bench`; the number of bytecode instructions the interpreter runs per
request does not move at all. This feeds requests to the server's HTTP protocol as `switchyard
serve` runs it (one keep-alive connection, the client's socket in memory; the upstream is
the real mock over HTTP, so the client pool is counted too), warms up, then counts every
instruction with `sys.settrace` opcode events. C code (orjson, httptools, uvloop, the
kernel) is not counted: pair it with `make bench`.

    python loadtest/opcount.py --scenario non-stream --top 30
    python loadtest/opcount.py --scenario cache-hit
    python loadtest/opcount.py --scenario limits --requests 500

Scenarios: non-stream, stream (the mock's 20-chunk SSE), cache-hit (memory backend),
redis-hit (the Redis backend on 127.0.0.1:6379, database 14),
limits (cache hits with a budget and rate limits: the accounting's own cost).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
import uvloop
from uvicorn.server import ServerState

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from proxy.app import create_app  # noqa: E402
from proxy.server import GuardedHttpToolsProtocol  # noqa: E402

CONFIG = """
server: {{host: 127.0.0.1, port: 18080, watch: false}}
ledger: {{path: {ledger}}}
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{port}/v1", api_key: sk-up}}
pricing:
  up/mock-gpt: {{input: 2.5, output: 10}}
{cache}
teams:
  bench: {{keys: [sk-bench]{limits}}}
routes:
  - {{name: bench, match: {{model: "*"}}, to: "up/{{model}}"}}
"""
LIMITS = (", budget: {daily_usd: 100000, monthly_usd: 1000000}, "
          "limits: {rpm: 100000000, tpm: 100000000000, user_rpm: 100000000}")
SCENARIOS = {  # name: (cache section, team limits, stream)
    "non-stream": ("", "", False),
    "stream": ("", "", True),
    "cache-hit": ("cache: {backend: memory}", "", False),
    # the machine's Redis (database 14, a prefix of its own); every build serving it hits the same entry
    "redis-hit": ('cache: {backend: redis, url: "redis://127.0.0.1:6379/14", key_prefix: "sybench:"}', "", False),
    "limits": ("cache: {backend: memory}", LIMITS, False),
}
# the wrk script's request (loadtest/chat.lua)
BODY = (b'{"model":"mock-gpt","messages":[{"role":"system","content":"You are a helpful assistant."},'
        b'{"role":"user","content":"Say hello and tell me a short fact about the ocean."}],'
        b'"max_tokens":64,"temperature":0.2%s}')


class _Socket:
    """The client's connection as the server's protocol sees it: what is written is kept
    until the response is whole."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.answered: asyncio.Future[None] | None = None
        self.expected = -1  # the response's length, once its head is in

    def write(self, data: bytes) -> None:
        self.data += data
        if self.expected < 0:
            head, sep, _ = bytes(self.data).partition(b"\r\n\r\n")
            if not sep:
                return
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            chunked = length is None
            self.expected = len(head) + 4 + (length or 0) if not chunked else 0
        if (self.expected and len(self.data) >= self.expected) or (
                not self.expected and self.data.endswith(b"0\r\n\r\n")):
            if self.answered is not None and not self.answered.done():
                self.answered.set_result(None)

    def next_response(self) -> asyncio.Future[None]:
        self.data.clear()
        self.expected = -1
        self.answered = asyncio.get_running_loop().create_future()
        return self.answered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 18080), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass


class Counter:
    """Opcode events per (file, function) while installed as the trace function."""

    def __init__(self) -> None:
        self.total = 0
        self.by_function: dict[tuple[str, str], int] = {}

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            self.total += 1
            code = frame.f_code
            key = (Path(code.co_filename).name, code.co_qualname)
            self.by_function[key] = self.by_function.get(key, 0) + 1
        return self


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mock(port: int) -> subprocess.Popen[bytes]:
    mock = subprocess.Popen([sys.executable, str(HERE / "mock_upstream.py"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return mock
        except OSError:
            time.sleep(0.1)
    mock.kill()
    raise SystemExit("the mock upstream did not start")


async def through_protocol(app: Any, stream: bool, requests: int, start: Callable[[], None],
                           stop: Callable[[], None]) -> None:
    """Requests through the server's HTTP protocol as `switchyard serve` runs it (its parsing, the
    ASGI cycle, the head guards, the joined writes), over one keep-alive connection: 300 to
    warm, then `start()`, `requests` measured, `stop()`."""
    lifespan = app.app.router.lifespan_context(app.app)
    state = await lifespan.__aenter__() or {}
    body = BODY % (b',"stream":true' if stream else b"")
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n"
               b"Authorization: Bearer sk-bench\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    config = uvicorn.Config(app, http=GuardedHttpToolsProtocol, access_log=False, proxy_headers=False,
                            log_config=None, lifespan="off")
    config.load()
    protocol = GuardedHttpToolsProtocol(config=config, server_state=ServerState(), app_state=state)
    client = _Socket()
    protocol.connection_made(client)  # type: ignore[arg-type]

    async def one() -> bytes:
        answered = client.next_response()
        protocol.data_received(request)
        await answered
        return bytes(client.data)

    await asyncio.sleep(0.3)  # the accounting's start (today's spend read back)
    for _ in range(300):  # warm: memos filled, connections pooled, the cache entry stored
        answer = await one()
    if not answer.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"the gateway answered {answer[:200]!r}")
    start()
    for _ in range(requests):
        await one()
    stop()
    protocol.connection_lost(None)
    await lifespan.__aexit__(None, None, None)


def run_scenario(scenario: str, requests: int, start: Callable[[], None], stop: Callable[[], None]) -> None:
    """`through_protocol` with the scenario's config, against the mock upstream."""
    cache, limits, stream = SCENARIOS[scenario]
    os.environ.setdefault("SWITCHYARD_MANAGE_LOGGING", "1")  # the served process's buffered access log
    port = free_port()
    mock = start_mock(port)
    try:
        with tempfile.TemporaryDirectory() as directory:
            config = Path(directory) / "proxy.yaml"
            config.write_text(CONFIG.format(ledger=Path(directory) / "ledger.db", port=port, cache=cache,
                                            limits=limits))
            stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115
            try:  # the access log's lines (the logging set up here writes to this stderr) go nowhere
                app = create_app(str(config), watch=False)
            finally:
                sys.stderr = stderr
            uvloop.run(through_protocol(app, stream, requests, start, stop))
    finally:
        mock.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="non-stream")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--top", type=int, default=25, help="functions to list, most instructions first")
    args = parser.parse_args()
    counter = Counter()
    run_scenario(args.scenario, args.requests, lambda: sys.settrace(counter), lambda: sys.settrace(None))
    n = args.requests
    print(f"{args.scenario}: {counter.total / n:,.0f} bytecode instructions per request")
    for (file, function), ops in sorted(counter.by_function.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{ops / n:8.1f}  {file}:{function}")


if __name__ == "__main__":
    main()
