"""Which translator carries a request of one surface to one provider.

A provider serving the surface's endpoint natively gets the request as it came (only
the model rewritten): `Identity`. Otherwise the request is translated through the one
format every provider type can take, Chat Completions: Responses and Messages requests
become chat for OpenAI-compatible servers and the mock, and chat (or Responses, chained)
becomes Anthropic Messages for `type: anthropic`. A surface a provider cannot serve at
all (legacy completions or embeddings on Anthropic) is a 400 that names the provider.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from proxy.errors import InvalidRequest
from proxy.translate.base import Chain, Translator
from proxy.translate.chat_anthropic import ChatToAnthropic

CHAT = "chat/completions"

# what, besides Chat Completions, a surface can be translated to, in order of preference
_VIA_CHAT = {"responses", "messages"}


def translator_for(endpoint: str, provider: str, apis: frozenset[str]) -> Translator:
    """The translator for a request to `endpoint` sent to a provider serving `apis`."""
    return _translator(endpoint, apis) or _refuse(endpoint, provider)


@cache
def _translator(endpoint: str, apis: frozenset[str]) -> Translator | None:
    if endpoint in apis:
        return Translator(endpoint)
    to_chat = _to_chat(endpoint)
    if CHAT in apis:
        return to_chat
    if "messages" in apis and (endpoint == CHAT or to_chat is not None):
        chat_to_anthropic = ChatToAnthropic()
        return chat_to_anthropic if endpoint == CHAT else Chain(to_chat, chat_to_anthropic)  # type: ignore[arg-type]
    return None


def dropped_fields(endpoint: str, apis: frozenset[str], body: dict[str, Any]) -> list[str]:
    """The request fields a translation to a provider serving `apis` leaves out: what a
    cache hit names, as the request that stored its answer did (none when the provider
    serves the surface itself, or can no longer be reached from it)."""
    if endpoint in apis:
        return []
    translator = _translator(endpoint, apis)
    return translator.dropped(body) if translator is not None else []


def _to_chat(endpoint: str) -> Translator | None:
    if endpoint == "responses":
        from proxy.translate.responses_chat import ResponsesToChat

        return ResponsesToChat()
    if endpoint == "messages":
        from proxy.translate.messages_chat import MessagesToChat

        return MessagesToChat()
    return None


NAMES = {"completions": "legacy completions", "embeddings": "embeddings", "responses": "the Responses API",
         "messages": "the Messages API", CHAT: "chat completions", "messages/count_tokens": "token counting"}


def _refuse(endpoint: str, provider: str) -> Translator:
    raise InvalidRequest(f"provider {provider} cannot serve {NAMES.get(endpoint, endpoint)}; route this model to "
                         "a provider that can (an OpenAI-compatible one)", param="model")


__all__ = ["Chain", "Translator", "dropped_fields", "translator_for"]
