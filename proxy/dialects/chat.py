"""The OpenAI surfaces: Chat Completions, Embeddings and legacy Completions.

`chat.completion.chunk` events are built here and nowhere else: the mock provider, the
Anthropic translator and the cache's replay of a stored answer all stream through these
two functions, so every stream the gateway makes has one shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy import sse
from proxy.dialects.base import Dialect, Inbound, StreamObserver, Usage
from proxy.dialects.chat_stream import (
    StreamCapture,
    choices_identical,
    chunk,
    chunk_meta,
    replay_events,
    usage_chunk,
)
from proxy.usage import UsageStripper, UsageTap
from proxy.validation import check_chat, check_completions, check_embeddings

# ---------------------------------------------------------------- the surface


class ChatDialect(Dialect):
    """`POST /v1/chat/completions`."""

    name = "chat"
    endpoint = "chat/completions"
    operation = "chat"
    takes_prompt = True

    def parse(self, body: dict[str, Any]) -> Inbound:
        check_chat(body)
        return Inbound(_model(body), body.get("stream") is True, _user(body), _output_cap(body))

    def with_prompt(self, body: dict[str, Any], rendered: list[dict[str, str]], own: Any) -> None:
        if own is None or isinstance(own, list):
            body["messages"] = [*rendered, *(own or ())]

    def request_usage(self, body: dict[str, Any]) -> bool:
        """Ask for the usage chunk (to price the stream); True when the client did not ask,
        so it is taken out again before the client sees it."""
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return False
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return True

    def strip_usage(self, observer: StreamObserver) -> UsageStripper:
        return UsageStripper(observer.hand_over_usage() if isinstance(observer, ChatObserver) else None)

    def usage(self, answer: Mapping[str, Any]) -> Usage | None:
        usage = answer.get("usage")
        return usage if isinstance(usage, dict) else None

    def stream_observer(self, capture: bool) -> ChatObserver:
        return ChatObserver(capture)

    def cacheable(self, answer: Mapping[str, Any]) -> bool:
        return choices_identical(answer)

    def replay(self, answer: Mapping[str, Any], body: Mapping[str, Any]) -> list[bytes]:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return replay_events(answer, include_usage=include_usage)


class ChatObserver:
    """Usage from the usage chunk; with capture, the answer rebuilt from every chunk."""

    __slots__ = ("_tap", "_capture", "_tapping")

    def __init__(self, capture: bool) -> None:
        self._tap = UsageTap()
        self._capture = StreamCapture() if capture else None
        self._tapping = True

    @property
    def usage(self) -> Usage | None:
        return self._tap.usage

    def feed(self, chunk: bytes) -> None:
        if self._tapping:
            self._tap.feed(chunk)
        if self._capture is not None:
            self._capture.feed(chunk)

    def hand_over_usage(self) -> UsageTap:
        """For the usage stripper, which finds the usage chunk anyway: this observer stops
        looking for it and reads what the stripper puts in the returned tap."""
        self._tapping = False
        return self._tap

    def answer(self) -> dict[str, Any] | None:
        return None if self._capture is None else self._capture.assembler.completion()


def _model(body: Mapping[str, Any]) -> str | None:
    model = body.get("model")
    return model if isinstance(model, str) else None


def _user(body: Mapping[str, Any]) -> str | None:
    user = body.get("user")
    return user if isinstance(user, str) and user else None


def _output_cap(body: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


# ---------------------------------------------------------------- embeddings


class EmbeddingsDialect(ChatDialect):
    """`POST /v1/embeddings`: no streams, usage of input tokens only."""

    name = "embeddings"
    endpoint = "embeddings"
    operation = "embeddings"
    takes_prompt = False

    def parse(self, body: dict[str, Any]) -> Inbound:
        check_embeddings(body)
        return Inbound(_model(body), False, _user(body))

    def request_usage(self, body: dict[str, Any]) -> bool:
        return False

    def classifier_view(self, body: Mapping[str, Any]) -> dict[str, Any]:
        text = body.get("input")
        return {"messages": [{"role": "user", "content": text if isinstance(text, str) else ""}]}

    def cacheable(self, answer: Mapping[str, Any]) -> bool:
        return True

    def replay(self, answer: Mapping[str, Any], body: Mapping[str, Any]) -> list[bytes]:
        raise NotImplementedError("embeddings are never streamed")


# ---------------------------------------------------------------- legacy completions


class CompletionsDialect(ChatDialect):
    """`POST /v1/completions` (legacy): passed through to OpenAI-compatible servers only.
    Streams are priced from their usage chunk like chat's; they are not stored in the
    cache (a stored answer is replayed only to non-stream requests)."""

    name = "completions"
    endpoint = "completions"
    operation = "text_completion"
    takes_prompt = False  # its `prompt` is the text to complete

    def parse(self, body: dict[str, Any]) -> Inbound:
        check_completions(body)
        return Inbound(_model(body), body.get("stream") is True, _user(body), _output_cap(body))

    def classifier_view(self, body: Mapping[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        return {"messages": [{"role": "user", "content": prompt if isinstance(prompt, str) else ""}]}

    def stream_observer(self, capture: bool) -> ChatObserver:
        return ChatObserver(False)  # the chat assembler does not rebuild text completions

    def cacheable(self, answer: Mapping[str, Any]) -> bool:
        return True

    def replay(self, answer: Mapping[str, Any], body: Mapping[str, Any]) -> list[bytes]:
        meta = {"id": answer.get("id", "cmpl-cached"), "object": "text_completion",
                "created": answer.get("created", 0), "model": answer.get("model", "")}
        events = [sse.encode({**meta, "choices": [{**choice, "text": choice.get("text", "")}]})
                  for choice in answer.get("choices") or ()]
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") and answer.get("usage") is not None:
            events.append(sse.encode({**meta, "choices": [], "usage": answer["usage"]}))
        return [*events, sse.DONE]


__all__ = ["CHAT", "COMPLETIONS", "EMBEDDINGS", "ChatDialect", "chunk", "chunk_meta", "usage_chunk"]

CHAT = ChatDialect()
EMBEDDINGS = EmbeddingsDialect()
COMPLETIONS = CompletionsDialect()
