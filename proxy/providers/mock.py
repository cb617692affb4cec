"""`type: mock`: a built-in provider that answers offline, deterministically.

The answer depends only on the model and the messages, so the same request always gets
the same text; usage is estimated at about four characters a token, the way real
tokenizers average on English. Streams are real SSE, paced by `chunk_interval_ms`,
after `latency_ms` before the first byte. `max_tokens` truncates with
`finish_reason: length`; `n` repeats the choice; embeddings are stable unit vectors.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
import time
from typing import Any, AsyncIterator

import orjson

from proxy import sse
from proxy.providers.base import Adapter, UpstreamRequest, UpstreamResponse

_JSON = [("content-type", "application/json")]
_SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_tokens(messages: list[dict]) -> int:
    # 3 tokens of framing per message plus 3 to prime the answer, as OpenAI counts
    return 3 + sum(3 + estimate_tokens(_text_of(m.get("content"))) for m in messages)


def answer_text(model: str, messages: list[dict]) -> str:
    last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    snippet = " ".join(last_user.split())[:160] or "(nothing)"
    return f"This is a mock answer from {model}. You said: {snippet}"


def _limit(body: dict) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _answer(body: dict) -> tuple[str, str, dict[str, int]]:
    """The text, finish reason and usage for a chat request."""
    model = body.get("model", "mock")
    messages = body.get("messages") or []
    text = answer_text(model, messages)
    finish = "stop"
    limit = _limit(body)
    if limit is not None and estimate_tokens(text) > limit:
        text, finish = text[: limit * 4], "length"
    n = body.get("n") if isinstance(body.get("n"), int) and body.get("n", 1) > 0 else 1
    p = prompt_tokens(messages)
    c = estimate_tokens(text) * n
    return text, finish, {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _completion_id(body: dict) -> str:
    digest = hashlib.blake2b(orjson.dumps(body.get("messages"), option=orjson.OPT_SORT_KEYS), digest_size=12)
    return "chatcmpl-mock" + digest.hexdigest()


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p if i == len(parts) - 1 else p + " " for i, p in enumerate(parts)]


class MockAdapter(Adapter):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if self.spec.latency_ms:
            await asyncio.sleep(self.spec.latency_ms / 1000)
        if request.endpoint == "embeddings":
            return UpstreamResponse(200, list(_JSON), body=orjson.dumps(embeddings(request.body)))
        if request.stream:
            return UpstreamResponse(200, list(_SSE), chunks=self._stream(request.body))
        return UpstreamResponse(200, list(_JSON), body=orjson.dumps(completion(request.body)))

    async def _stream(self, body: dict) -> AsyncIterator[bytes]:
        interval = self.spec.chunk_interval_ms / 1000
        for i, event in enumerate(stream_events(body)):
            if i and interval:
                await asyncio.sleep(interval)
            yield event


def completion(body: dict) -> dict:
    text, finish, usage = _answer(body)
    n = body.get("n") if isinstance(body.get("n"), int) and body.get("n", 1) > 0 else 1
    return {
        "id": _completion_id(body),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "mock"),
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}
            for i in range(n)
        ],
        "usage": usage,
        "system_fingerprint": "fp_mock",
    }


def stream_events(body: dict) -> list[bytes]:
    text, finish, usage = _answer(body)
    base = {
        "id": _completion_id(body),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "mock"),
        "system_fingerprint": "fp_mock",
    }

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return sse.encode({**base, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    events.extend(chunk({"content": word}) for word in _words(text))
    events.append(chunk({}, finish))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        events.append(sse.encode({**base, "choices": [], "usage": usage}))
    events.append(sse.DONE)
    return events


def embeddings(body: dict) -> dict:
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)) else raw
    dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) and body["dimensions"] > 0 else 16
    data = []
    tokens = 0
    for i, item in enumerate(inputs or []):
        text = item if isinstance(item, str) else " ".join(map(str, item))
        tokens += estimate_tokens(text) if isinstance(item, str) else len(item)
        data.append({"object": "embedding", "index": i, "embedding": _vector(text, dims)})
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", "mock"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _vector(text: str, dims: int) -> list[float]:
    values: list[float] = []
    counter = 0
    while len(values) < dims:
        block = hashlib.sha256(f"{counter}\x00{text}".encode()).digest()
        values.extend(v / 2**31 for v in struct.unpack(">8i", block))
        counter += 1
    values = values[:dims]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
