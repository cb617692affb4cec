"""A fast mock OpenAI upstream for load tests: raw asyncio + httptools, keep-alive.

POST .../chat/completions answers JSON, or SSE when the body asks for `"stream":true`
(`--chunks` events, `--chunk-interval-ms` apart, then `[DONE]`); POST .../responses and
.../messages answer the same text in the Responses and Anthropic Messages shapes (the
gateway's native passthrough of those surfaces). Faults, each drawn
per request: `--error-rate` (HTTP 500), `--hang-rate` (never answers), `--cut-rate`
(closes the connection halfway through a stream). `--latency-ms` delays every answer.
POST /v1/traces accepts OTLP/HTTP span exports (a sink for the telemetry benchmark).

    python loadtest/mock_upstream.py --port 18000 --chunks 20
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import httptools
import orjson

ARGS: argparse.Namespace


def _completion() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-load",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "mock-gpt",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hello! The ocean covers 71% of Earth."},
                 "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37},
        }
    )


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-load", "object": "chat.completion.chunk", "created": 0, "model": "mock-gpt",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _events(chunks: int, usage: bool) -> list[bytes]:
    events = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": f"tok{i} "}) for i in range(max(chunks - 2, 1))]
    events.append(_chunk({}, "stop"))
    if usage:
        events.append(b'data: {"id":"chatcmpl-load","object":"chat.completion.chunk","choices":[],'
                      b'"usage":{"prompt_tokens":25,"completion_tokens":20,"total_tokens":45}}\n\n')
    events.append(b"data: [DONE]\n\n")
    return events


TEXT = "Hello! The ocean covers 71% of Earth."


def _named(kind: str, data: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def _response(status: str, output: list, usage: dict | None) -> dict:
    return {"id": "resp_load", "object": "response", "created_at": 0, "status": status, "model": "mock-gpt",
            "output": output, "usage": usage}


_RESPONSE_USAGE = {"input_tokens": 25, "output_tokens": 12, "total_tokens": 37}
_RESPONSE_MESSAGE = {"type": "message", "id": "msg_load", "status": "completed", "role": "assistant",
                     "content": [{"type": "output_text", "text": TEXT, "annotations": []}]}


def _responses_answer() -> bytes:
    return orjson.dumps(_response("completed", [_RESPONSE_MESSAGE], _RESPONSE_USAGE))


def _responses_events(chunks: int) -> list[bytes]:
    where = {"item_id": "msg_load", "output_index": 0, "content_index": 0}
    opened = {**_RESPONSE_MESSAGE, "status": "in_progress", "content": []}
    events = [_named("response.created", {"response": _response("in_progress", [], None)}),
              _named("response.output_item.added", {"output_index": 0, "item": opened}),
              _named("response.content_part.added", {**where, "part": {"type": "output_text", "text": ""}})]
    events += [_named("response.output_text.delta", {**where, "delta": f"tok{i} "}) for i in range(max(chunks - 5, 1))]
    events += [_named("response.output_text.done", {**where, "text": TEXT}),
               _named("response.output_item.done", {"output_index": 0, "item": _RESPONSE_MESSAGE}),
               _named("response.completed", {"response": _response("completed", [_RESPONSE_MESSAGE], _RESPONSE_USAGE)})]
    return events


def _message(content: list, stop: str | None, output_tokens: int) -> dict:
    return {"id": "msg_load", "type": "message", "role": "assistant", "model": "claude-mock", "content": content,
            "stop_reason": stop, "stop_sequence": None, "usage": {"input_tokens": 25, "output_tokens": output_tokens}}


def _messages_answer() -> bytes:
    return orjson.dumps(_message([{"type": "text", "text": TEXT}], "end_turn", 12))


def _messages_events(chunks: int) -> list[bytes]:
    events = [_named("message_start", {"message": _message([], None, 1)}),
              _named("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
    events += [_named("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f"tok{i} "}})
               for i in range(max(chunks - 4, 1))]
    events += [_named("content_block_stop", {"index": 0}),
               _named("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                        "usage": {"output_tokens": 20}}),
               _named("message_stop", {})]
    return events


def _head(status: int, content_type: bytes, length: int | None) -> bytes:
    reason = {200: b"OK", 500: b"Internal Server Error", 404: b"Not Found"}.get(status, b"OK")
    framing = b"transfer-encoding: chunked\r\n" if length is None else b"content-length: %d\r\n" % length
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n%s\r\n" % (status, reason, content_type, framing)


class Handler(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.body = bytearray()
        self.url = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        body, self.body = bytes(self.body), bytearray()
        asyncio.get_running_loop().create_task(self.answer(self.url, body))

    async def answer(self, url: bytes, body: bytes) -> None:
        t = self.transport
        assert t is not None
        if ARGS.latency_ms:
            await asyncio.sleep(ARGS.latency_ms / 1000)
        if ARGS.hang_rate and random.random() < ARGS.hang_rate:
            return
        if ARGS.error_rate and random.random() < ARGS.error_rate:
            payload = b'{"error":{"message":"injected failure","type":"server_error","param":null,"code":null}}'
            t.write(_head(500, b"application/json", len(payload)) + payload)
            return
        if url.endswith(b"/v1/traces"):  # OTLP/HTTP span export: accept and drop
            t.write(_head(200, b"application/x-protobuf", 0))
            return
        surface = next((s for s in (b"/chat/completions", b"/responses", b"/messages") if url.endswith(s)), None)
        if surface is None:
            t.write(_head(404, b"application/json", 2) + b"{}")
            return
        if b'"stream":true' not in body.replace(b" ", b""):
            payload = {b"/chat/completions": _completion, b"/responses": _responses_answer,
                       b"/messages": _messages_answer}[surface]()
            t.write(_head(200, b"application/json", len(payload)) + payload)
            return
        if surface == b"/responses":
            events = _responses_events(ARGS.chunks)
        elif surface == b"/messages":
            events = _messages_events(ARGS.chunks)
        else:
            events = _events(ARGS.chunks, b"include_usage" in body)
        cut = len(events) // 2 if ARGS.cut_rate and random.random() < ARGS.cut_rate else None
        t.write(_head(200, b"text/event-stream", None))
        if not ARGS.chunk_interval_ms and cut is None:  # nothing to wait for: one write, as a fast server would
            t.write(b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n")
            return
        for i, event in enumerate(events):
            if cut is not None and i == cut:
                t.close()
                return
            if t.is_closing():  # the client left mid-stream (a load generator stopping)
                return
            t.write(b"%x\r\n%s\r\n" % (len(event), event))
            if ARGS.chunk_interval_ms:
                await asyncio.sleep(ARGS.chunk_interval_ms / 1000)
        if not t.is_closing():
            t.write(b"0\r\n\r\n")


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Handler, "127.0.0.1", ARGS.port, backlog=1024)
    print(f"mock upstream on http://127.0.0.1:{ARGS.port}/v1 chunks={ARGS.chunks}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--chunk-interval-ms", type=float, default=0)
    parser.add_argument("--error-rate", type=float, default=0)
    parser.add_argument("--hang-rate", type=float, default=0)
    parser.add_argument("--cut-rate", type=float, default=0)
    ARGS = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
