"""The one error tree of the proxy, and its OpenAI-shaped rendering.

    ProxyError                      status  code
    ├── InvalidRequest               400     (param names the field)
    ├── InvalidApiKey                401     invalid_api_key
    ├── AdminForbidden               403     admin_forbidden
    ├── ModelNotAllowed              403     model_not_allowed
    ├── ModelNotFound                404     model_not_found
    ├── NotFound                     404     not_found
    ├── PayloadTooLarge              413     request_too_large
    ├── UnsupportedMediaType         415     unsupported_media_type
    ├── RateLimited                  429     rate_limit_exceeded
    ├── BudgetExceeded               429     budget_exceeded (type insufficient_quota)
    ├── UpstreamError                502     upstream_error
    ├── NoHealthyUpstream            503     no_healthy_upstream
    └── UpstreamTimeout              504     upstream_timeout

Every error a client can see is one of these; `app.py` maps them to HTTP in one place.
Messages never carry keys, stack traces or file system paths.
"""

from __future__ import annotations

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


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


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


class UpstreamError(ProxyError):
    status = 502
    type = "api_error"
    code = "upstream_error"
    kind = "connection"  # or status_5xx, stream_cut, invalid_response


class NoHealthyUpstream(ProxyError):
    status = 503
    type = "api_error"
    code = "no_healthy_upstream"


class UpstreamTimeout(ProxyError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"
    kind = "timeout"


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})
