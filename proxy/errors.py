"""The one error tree of the proxy, and its OpenAI-shaped rendering.

    ProxyError                      status  code
    ├── InvalidRequest               400     (param names the field)
    ├── InvalidApiKey                401     invalid_api_key
    ├── AdminForbidden               403     admin_forbidden
    ├── ModelNotAllowed              403     model_not_allowed
    ├── ModelNotFound                404     model_not_found
    ├── NotFound                     404     not_found (an unknown path too)
    ├── MethodNotAllowed             405     method_not_allowed
    ├── PayloadTooLarge              413     request_too_large
    ├── UnsupportedMediaType         415     unsupported_media_type
    ├── RateLimited                  429     rate_limit_exceeded
    ├── BudgetExceeded               429     budget_exceeded (type insufficient_quota)
    ├── ClientDisconnected           499     client_disconnected (never sent: the ledger's record)
    ├── UpstreamError                502     upstream_error
    │   ├── InvalidResponse          502     invalid_response (a 2xx that breaks the wire contract)
    │   └── UpstreamAuthError        502     upstream_auth_error (the provider refused our key)
    ├── UpstreamOverloaded           503     upstream_overloaded (its 503, or Anthropic's 529)
    ├── NoHealthyUpstream            503     no_healthy_upstream
    ├── GatewayBusy                  503     gateway_busy (our own connection pool is full)
    ├── UpstreamTimeout              504     upstream_timeout
    └── InternalError                500     internal_error (a bug: logged, never detailed)

Every error a client can see is one of these, rendered by the functions at the end of
this module: `error_body` (a JSON answer), `error_event` (the last event of a broken stream).
Messages never carry keys, stack traces or file system paths, and client strings
echoed in them are cut short (`shown`).
"""

from __future__ import annotations

from typing import Any

import orjson


class ProxyError(Exception):
    status = 500
    type = "api_error"
    code: str | None = "internal_error"
    kind: str | None = None  # provider errors: what failed, for metrics (never shown to clients)

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        kind: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if kind is not None:
            self.kind = kind
        self.headers = headers or []  # extra response headers (retry-after, x-ratelimit-*)

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = None


class InvalidApiKey(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class AdminForbidden(ProxyError):
    status = 403
    type = "invalid_request_error"
    code = "admin_forbidden"


class ModelNotAllowed(ProxyError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class ModelNotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"

    def __init__(self, message: str) -> None:
        # the rest of the body is still on its way: close rather than read it to find the next request
        super().__init__(message, headers=[(b"connection", b"close")])


class UnsupportedMediaType(ProxyError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimited(ProxyError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class BudgetExceeded(ProxyError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        headers = [(b"retry-after", str(retry_after).encode())] if retry_after else None
        super().__init__(message, headers=headers)


class ClientDisconnected(ProxyError):
    """The client left before its answer: nothing is sent, the ledger says 499 as nginx logs it."""

    status = 499
    type = "api_error"
    code = "client_disconnected"
    kind = "client_disconnected"


class UpstreamError(ProxyError):
    status = 502
    type = "api_error"
    code = "upstream_error"
    kind = "connection"  # or status_5xx, stream_cut, invalid_response


class InvalidResponse(UpstreamError):
    """A 2xx that breaks the wire contract: not a JSON object, or not a stream when one was asked for."""

    code = "invalid_response"
    kind = "invalid_response"


class UpstreamAuthError(UpstreamError):
    """The provider refused the gateway's own credentials: the operator's problem, not the caller's."""

    code = "upstream_auth_error"
    kind = "upstream_auth"


class UpstreamOverloaded(ProxyError):
    """The provider said it is overloaded (503, or Anthropic's 529): retry later."""

    status = 503
    type = "api_error"
    code = "upstream_overloaded"
    kind = "status_5xx"


class NoHealthyUpstream(ProxyError):
    status = 503
    type = "api_error"
    code = "no_healthy_upstream"


class LedgerUnavailable(ProxyError):
    """A report needs the ledger and its database cannot be read (requests are unaffected)."""

    status = 503
    type = "api_error"
    code = "ledger_unavailable"


class GatewayBusy(ProxyError):
    """Switchyard's own connection pool to a provider stayed full: not the provider's failure."""

    status = 503
    type = "api_error"
    code = "gateway_busy"
    kind = "gateway_busy"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers=[(b"retry-after", str(retry_after).encode())])


class UpstreamTimeout(ProxyError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"
    kind = "timeout"


class DeadlinePassed(UpstreamTimeout):
    """The request's whole deadline (resilience.timeout_s) ran out during an attempt: no
    retry or fallback can help."""

    def __init__(self, message: str = "the request's deadline (resilience.timeout_s) passed") -> None:
        super().__init__(message)


SHOWN_CHARS = 120  # of a client's string echoed in an error message


def shown(text: str) -> str:
    """A client's string as an error message may quote it: cut short, control characters escaped."""
    cut = text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"
    return repr(cut)


class InternalError(ProxyError):
    status = 500
    type = "api_error"
    code = "internal_error"

    def __init__(self) -> None:
        super().__init__("internal error in the proxy; it has been logged")


def error_event(exc: ProxyError) -> dict[str, Any]:
    """What a stream that broke after it started ends with: the error object the SDKs raise."""
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def provider_message(body: bytes) -> str:
    """The `error.message` of an OpenAI- or Anthropic-shaped error body ('' if none)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else ""
