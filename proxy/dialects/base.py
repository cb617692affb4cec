"""What every API surface (wire format) the gateway serves has to say for the one request
pipeline to run it: how a body is checked, where its model, stream flag and user live,
how its usage reads, how its stream is observed and a stored answer replayed, and how
its errors look. One stateless `Dialect` object per surface; the pipeline never asks
which surface it is serving.

Usage crosses this boundary normalised to the Chat Completions shape (`prompt_tokens`,
`completion_tokens`, `total_tokens`, `prompt_tokens_details.cached_tokens`, with
`prompt_tokens` counting cached input too): that is what pricing, budgets, the ledger
and the metrics read, whichever surface the request came in on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.errors import ProxyError

Usage = dict[str, Any]  # normalised: prompt_tokens, completion_tokens, total_tokens[, prompt_tokens_details]


@dataclass(slots=True, init=False)
class Inbound:  # one per request; __init__ written out: a NamedTuple's or dataclass's runs as bytecode
    """What the pipeline needs to know of a checked request body."""

    model: str | None  # as the client sent it; None: the team's default
    stream: bool
    user: str | None  # the body's end-user field, if the surface has one
    output_cap: int | None  # max output tokens the request allows, when it says

    def __init__(self, model: str | None, stream: bool, user: str | None, output_cap: int | None = None) -> None:
        self.model = model
        self.stream = stream
        self.user = user
        self.output_cap = output_cap


class StreamObserver(Protocol):
    """Sees every chunk of a stream as the client gets it (after any translation)."""

    @property
    def usage(self) -> Usage | None:
        """Normalised, once the stream said it."""
        ...

    def feed(self, chunk: bytes) -> None: ...

    def answer(self) -> dict[str, Any] | None:
        """The whole answer in the surface's JSON shape when the stream ended normally and
        capture was asked for; else None (nothing is stored from a broken stream)."""
        ...


class Dialect(ABC):
    name: str  # chat | embeddings | completions | responses | messages
    endpoint: str  # the OpenAI-style path under /v1 it is served at; also the cache's endpoint
    operation: str  # the GenAI operation name on spans and in the access log
    anthropic_errors: bool = False  # errors in Anthropic's shape ({"type": "error", ...})
    stateful: bool = False  # answers may be continued by id (Responses' previous_response_id)
    takes_prompt: bool = False  # a `prompt` field names a registered prompt (proxy/prompts.py)

    @abstractmethod
    def parse(self, body: dict[str, Any]) -> Inbound:
        """Check the body (InvalidRequest naming the field) and read what routing needs."""

    def classifier_view(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The request as chat messages, for the prompt-complexity classifier."""
        return {"messages": body.get("messages") or []}

    def own_messages(self, body: Mapping[str, Any]) -> Any:
        """The request's own conversation, before a registered prompt's messages go ahead of it."""
        return body.get("messages")

    def with_prompt(self, body: dict[str, Any], rendered: list[dict[str, str]], own: Any) -> None:
        """Put a rendered prompt's messages ahead of the request's own (`own_messages`). Only
        called where `takes_prompt`; a malformed `own` is left for `parse` to refuse."""
        raise NotImplementedError

    def request_usage(self, body: dict[str, Any]) -> bool:
        """Make a streaming call report its usage, editing `body` if it must ask; True when
        the client did not ask for it and the stream must be given back without it."""
        return False

    def strip_usage(self, observer: StreamObserver) -> Any:
        """A stream rewriter removing what `request_usage` added (None: nothing to remove). It
        may read the usage for `observer` as it takes it out (one pass over the stream, not two)."""
        return None

    @abstractmethod
    def usage(self, answer: Mapping[str, Any]) -> Usage | None:
        """A JSON answer's usage, normalised."""

    @abstractmethod
    def stream_observer(self, capture: bool) -> StreamObserver:
        """An observer for one stream; `capture`: also rebuild the whole answer (to store it)."""

    def cacheable(self, answer: Mapping[str, Any]) -> bool:
        """Whether replaying this answer gives a client what the upstream would have."""
        return True

    @abstractmethod
    def replay(self, answer: Mapping[str, Any], body: Mapping[str, Any]) -> list[bytes]:
        """A stored answer as the complete stream a live one would have been (SSE events)."""

    # --- errors

    def error_body(self, exc: ProxyError) -> bytes:
        return exc.body()

    def stream_error(self, exc: ProxyError) -> bytes:
        """The event a stream that broke after it started ends with."""
        from proxy import sse
        from proxy.errors import error_event

        return sse.encode(error_event(exc))
