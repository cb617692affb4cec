"""Which request headers reach a provider: an allow-list, never a deny-list.

A client's headers carry its credentials (in more places than `authorization`), the
connection's own framing and whatever a corporate proxy added; none of that is the
provider's business. What is forwarded is what changes or describes the call: content
negotiation, the SDK's identity (`user-agent`, `x-stainless-*`), API feature flags
(`openai-beta`, `anthropic-version`, `anthropic-beta`), trace context, and idempotency
keys. A provider may add names with `forward_headers:` (OpenRouter's `http-referer`
and `x-title`, say); credentials and hop-by-hop headers can never be added.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FORWARDED = frozenset({
    "accept",
    "user-agent",
    "openai-beta",
    "anthropic-version",
    "anthropic-beta",
    "traceparent",
    "tracestate",
    "baggage",
    "idempotency-key",
    "x-idempotency-key",
})
FORWARDED_PREFIXES = ("x-stainless-",)  # the official SDKs' own: retry count, timeout, runtime

# never forwarded, whatever a config says: credentials, and headers about this one hop
CREDENTIALS = frozenset({
    "authorization", "proxy-authorization", "api-key", "x-api-key", "cookie", "set-cookie",
    "openai-organization", "openai-project", "x-goog-api-key",
})
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect",
    "host", "content-length", "content-type", "accept-encoding",  # set by the upstream client itself
})
NEVER = CREDENTIALS | HOP_BY_HOP


def refused_reason(name: str) -> str | None:
    """Why `forward_headers` may not name this header (None: it may)."""
    lower = name.lower()
    if lower in CREDENTIALS:
        return f"{name} carries credentials; a client's are never forwarded"
    if lower in HOP_BY_HOP:
        return f"{name} describes the connection to the gateway, not the call"
    if lower.startswith("x-switchyard-"):
        return f"{name} is the gateway's own control header"
    return None


def allowed_names(extra: Iterable[str] = ()) -> frozenset[str]:
    """The names forwarded to one provider: the default allow-list and its `forward_headers`."""
    return FORWARDED | frozenset(n.lower() for n in extra if refused_reason(n) is None)


def forwarded(headers: Mapping[str, str], allowed: frozenset[str]) -> list[tuple[str, str]]:
    """The request headers (lower-case names) this provider gets."""
    return [(k, v) for k, v in headers.items() if k in allowed or k.startswith(FORWARDED_PREFIXES)]
