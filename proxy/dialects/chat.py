"""OpenAI Chat Completions: the shapes of its answers and stream events.

`chat.completion.chunk` events are built here and nowhere else: the mock provider, the
Anthropic translator and the cache's replay of a stored answer all stream through these
two functions, so every stream the gateway makes has one shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def chunk_meta(id_: str, created: int, model: str, system_fingerprint: str | None = None) -> dict[str, Any]:
    """The fields every chunk of one stream repeats."""
    meta: dict[str, Any] = {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model}
    if system_fingerprint:
        meta["system_fingerprint"] = system_fingerprint
    return meta


def chunk(meta: Mapping[str, Any], delta: Mapping[str, Any], *, index: int = 0,
          finish_reason: str | None = None) -> dict[str, Any]:
    """One choice's delta (role, content, tool-call fragments) or its finish."""
    return {**meta, "choices": [{"index": index, "delta": dict(delta), "finish_reason": finish_reason,
                                 "logprobs": None}]}


def usage_chunk(meta: Mapping[str, Any], usage: Mapping[str, Any]) -> dict[str, Any]:
    """The closing chunk `stream_options.include_usage` asks for: no choices, the usage."""
    return {**meta, "choices": [], "usage": dict(usage)}
