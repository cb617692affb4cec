"""Stored responses: the conversation behind each Responses API answer the gateway made
itself, so `previous_response_id` works on providers that do not serve the Responses API.

When a Responses request is translated (to chat, or on to Anthropic's Messages) and does
not say `store: false`, its answer is kept with the conversation that led to it: the
input items (earlier turns included) and the answer's output items. A later request
naming it in `previous_response_id` gets those items put before its own input, as
OpenAI's server does (instructions are not carried over). Answers a provider serving the
Responses API made natively are kept by that provider; their ids pass through untouched.

Entries belong to a team: no team can continue, read or delete another team's responses.
Kept in the cache's Redis when there is one (so every replica finds them), else in this
process's memory, bounded (`responses:` in proxy.yaml).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.cache.backends import Backend, MemoryBackend
from proxy.config import Config
from proxy.redis_guard import RedisGuards

_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # nothing that could reach into another key


@dataclass(frozen=True, slots=True)
class Stored:
    response: dict[str, Any]
    items: list[Any]  # the whole conversation: input items, earlier turns first, then this answer's output

    @property
    def input_items(self) -> list[Any]:
        return self.items[: len(self.items) - len(self.response.get("output") or ())]


class ResponseStore:
    def __init__(self, backend: Backend, prefix: str, ttl_s: int) -> None:
        self.backend = backend
        self._prefix = prefix
        self._ttl_s = ttl_s

    def _key(self, team: str, response_id: str) -> str:
        return f"{self._prefix}r:{len(team)}:{team}:{response_id}"

    async def load(self, team: str, response_id: str) -> Stored | None:
        if not _ID.fullmatch(response_id):
            return None
        raw = await self.backend.get(self._key(team, response_id))
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            return Stored(data["response"], data["items"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None  # not written by this version: as good as absent

    async def save(self, team: str, response: dict[str, Any], items: list[Any]) -> None:
        response_id = response.get("id")
        if isinstance(response_id, str) and _ID.fullmatch(response_id):
            value = orjson.dumps({"response": response, "items": items})
            await self.backend.set(self._key(team, response_id), value, self._ttl_s)

    async def delete(self, team: str, response_id: str) -> bool:
        return bool(_ID.fullmatch(response_id)) and await self.backend.delete(self._key(team, response_id))

    async def aclose(self) -> None:
        await self.backend.aclose()


def input_items(value: Any) -> list[Any]:
    """A Responses request's `input` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value) if isinstance(value, list) else []


def with_history(body: dict[str, Any], stored: Stored) -> None:
    """Put the stored conversation before the request's own input."""
    body["input"] = [*stored.items, *input_items(body.get("input"))]


def conversation(body: dict[str, Any], response: dict[str, Any]) -> list[Any]:
    """What a later turn continuing `response` reads: this request's input, then the output."""
    return [*input_items(body.get("input")), *(response.get("output") or ())]


def build_store(config: Config, guards: RedisGuards | None = None) -> ResponseStore | None:
    settings = config.responses
    kind = settings.store
    if kind == "off":
        return None
    if kind == "auto":
        kind = "redis" if config.cache.backend == "redis" else "memory"
    local = MemoryBackend(settings.max_entries)
    backend: Backend = local
    if kind == "redis":
        cache = config.cache
        url = settings.url or cache.url
        guard = guards.get(url, failures=cache.failures, cooldown_s=cache.cooldown_s) if guards else None
        from proxy.cache.redis_backend import RedisBackend  # redis-py: loaded only when asked for

        backend = RedisBackend(url, timeout_ms=cache.timeout_ms, failures=cache.failures,
                               cooldown_s=cache.cooldown_s, fallback=local, guard=guard, user="stored responses")
    return ResponseStore(backend, config.cache.key_prefix, settings.ttl_s)
