"""The floor for `make bench`: a pass-through proxy on Switchyard's own stack and nothing else.

uvicorn (httptools, uvloop) serving a raw ASGI app, no starlette, that sends every POST
under /v1/ to the upstream with Switchyard's upstream pool (proxy/providers/http.py) and
relays the answer: a stream piece by piece as it arrives, anything else whole. No auth,
routing, accounting, validation or translation: what the stack itself costs per request.
The client's Authorization header is passed on as it is.

    python loadtest/featureless.py --port 18082 --upstream http://127.0.0.1:18000/v1

`--slow-upstream URL` sends POSTs under /slow/v1/ there instead (the harness's
time-to-first-event probe streams from a mock that waits between chunks). GET /healthz
answers 200 once it serves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxy.providers.http import HttpError, HttpPool  # noqa: E402

Scope = dict[str, Any]
FORWARDED = (b"content-type", b"authorization")  # the client headers the upstream gets


class Upstream:
    def __init__(self, base_url: str) -> None:
        # sized and timed like a Switchyard provider's pool with the default settings
        self.pool = HttpPool(base_url, max_connections=200, read_timeout_s=600, pool_timeout_s=10)
        self.path = urlsplit(base_url).path.rstrip("/")  # "/v1": requests name what follows it


class App:
    def __init__(self, upstream: str, slow: str | None) -> None:
        self.upstream = Upstream(upstream)
        self.slow = Upstream(slow) if slow else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/healthz":
            await answer(send, 200, b"ok\n", b"text/plain")
            return
        upstream = self.upstream
        if self.slow is not None and path.startswith("/slow/"):
            upstream, path = self.slow, path[5:]
        if method != "POST" or not path.startswith("/v1/"):
            await answer(send, 404, b'{"error":{"message":"not found"}}')
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k in FORWARDED]
        try:
            response = await upstream.pool.request("POST", upstream.path + path[3:], headers, body)
        except HttpError as exc:
            await answer(send, 502, json.dumps({"error": {"message": f"upstream: {exc}"}}).encode())
            return
        try:
            kind = (response.header("content-type") or "application/json").encode("latin-1")
            if kind.startswith(b"text/event-stream"):
                await send({"type": "http.response.start", "status": response.status,
                            "headers": [(b"content-type", kind), (b"cache-control", b"no-cache")]})
                async for piece in response.chunks():  # relayed as it arrives
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                await answer(send, response.status, await response.read(), kind)
        except HttpError:
            pass  # the upstream broke off after the head: uvicorn closes the client's connection
        finally:
            response.close()

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for upstream in (self.upstream, self.slow):
                    if upstream is not None:
                        await upstream.pool.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def answer(send: Any, status: int, body: bytes, kind: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18082)
    parser.add_argument("--upstream", default="http://127.0.0.1:18000/v1", help="the base URL, /v1 included")
    parser.add_argument("--slow-upstream", default=None, help="where POSTs under /slow/v1/ go")
    args = parser.parse_args()
    uvicorn.run(App(args.upstream, args.slow_upstream), host=args.host, port=args.port, loop="uvloop",
                http="httptools", lifespan="on", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
