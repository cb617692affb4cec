"""How a request of one API surface (a dialect) is made to a provider that speaks another
wire format, and its answer brought back: pure functions over dicts and stream events.

A `Translator` is chosen per (inbound dialect, provider wire). Same-wire pairs use
`Identity`: the body passes with only the model rewritten, the answer and the stream
bytes untouched, so nothing the client sent is lost (Anthropic's `cache_control` and
thinking blocks, OpenAI's newest fields). Other pairs rewrite the request, the JSON
answer, every stream event and the provider's error bodies into the client's shapes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


class Translator:
    """The identity: what a same-wire pair does, and what translators override."""

    passthrough = True  # the answer's bytes go to the client as the provider sent them

    def __init__(self, upstream_endpoint: str) -> None:
        self.upstream_endpoint = upstream_endpoint  # path under the provider's base URL

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """The provider's request body (the model is already the routed one)."""
        return body

    def answer(self, answer: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        """The provider's JSON answer in the client's shape."""
        return answer

    def stream(self, chunks: AsyncIterator[bytes], body: dict[str, Any], provider: str) -> AsyncIterator[bytes]:
        """The provider's stream as the client's; raises UpstreamError(kind="stream_cut")
        when it ends before its end event."""
        return chunks

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        """A provider's error answer (4xx) as the client's API would have said it."""
        return status, body

    def dropped(self, body: dict[str, Any]) -> list[str]:
        """Request fields the provider has no equivalent for (said in a response header)."""
        return []


class Chain(Translator):
    """Two translations in a row: `outer` turns the client's surface into an intermediate
    one that `inner` turns into the provider's (Responses → chat → Anthropic Messages)."""

    passthrough = False

    def __init__(self, outer: Translator, inner: Translator) -> None:
        super().__init__(inner.upstream_endpoint)
        self.outer, self.inner = outer, inner

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.inner.request(self.outer.request(body))

    def answer(self, answer: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        middle = self.outer.request(body)
        return self.outer.answer(self.inner.answer(answer, middle), body)

    def stream(self, chunks: AsyncIterator[bytes], body: dict[str, Any], provider: str) -> AsyncIterator[bytes]:
        middle = self.outer.request(body)
        return self.outer.stream(self.inner.stream(chunks, middle, provider), body, provider)

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        return self.outer.error(*self.inner.error(status, body))

    def dropped(self, body: dict[str, Any]) -> list[str]:
        return self.outer.dropped(body) + self.inner.dropped(self.outer.request(body))
