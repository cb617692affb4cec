"""`type: openai`: any OpenAI-compatible API (OpenAI, OpenRouter, vLLM, a local mock).

The request body passes through with only the model rewritten; the client's auth is
replaced by the provider's key. One keep-alive connection pool per provider
(proxy/providers/http.py, sized by `max_connections`/`max_keepalive`, with connect and
read timeouts from the config, through the provider's proxy and with its TLS settings).
Streams are relayed chunk by chunk as they arrive.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from proxy.errors import (
    DeadlinePassed,
    GatewayBusy,
    InvalidResponse,
    ProxyError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTimeout,
    provider_message,
)
from proxy.providers.base import Adapter, UpstreamRequest, UpstreamResponse
from proxy.providers.http import (
    ConnectError,
    ConnectTimeout,
    DeadlineExceeded,
    HttpError,
    HttpPool,
    HttpResponse,
    PoolTimeout,
    ProxyFailed,
    ReadTimeout,
    TlsError,
    choose_proxy,
    tls_context,
)
from proxy.providers.wire import ChunkSource
from proxy.snapshot import ProviderSpec
from proxy.telemetry.logs import Throttled, redact


class OpenAIAdapter(Adapter):
    keeps_deadline = True  # its HttpPool's timers end any wait at the request's deadline

    def __init__(self, spec: ProviderSpec) -> None:
        super().__init__(spec)
        assert spec.base_url, "openai providers always have a base_url"
        headers = {"content-type": "application/json", **self._auth_headers(spec)}
        headers.update({k.lower(): v for k, v in spec.headers})
        self._fixed_headers = headers
        self._base = spec.base_url.rstrip("/") + "/"
        self._path = urlsplit(self._base).path  # every request target starts here
        self._http: HttpPool | None = None
        self._tls: ssl.SSLContext | None = None  # built with the first pool, kept for any later one

    @staticmethod
    def _auth_headers(spec: ProviderSpec) -> dict[str, str]:
        return {"authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}

    def _target(self, request: UpstreamRequest) -> str:
        return self._path + request.endpoint

    def _pool(self) -> HttpPool:
        if self._http is None:
            spec = self.spec
            if self._tls is None and self._base.startswith("https:"):
                self._tls = tls_context(ca_bundle=spec.ca_bundle, client_cert=spec.client_cert,
                                        client_key=spec.client_key, verify=spec.verify_tls)
            self._http = HttpPool(
                self._base,
                max_connections=spec.max_connections,
                max_keepalive=spec.max_keepalive,
                connect_timeout_s=spec.connect_timeout_s,
                read_timeout_s=spec.timeout_s,
                pool_timeout_s=spec.pool_timeout_s,
                ssl_context=self._tls,
                # the environment is read here, once per pool: never on a request's path
                proxy=choose_proxy(self._base, spec.proxy, provider=spec.name),
                provider=spec.name,
            )
        return self._http

    async def aclose(self) -> None:
        # forget the pool before closing it: a later request (an in-flight one of an
        # older snapshot, retrying on this retired adapter) opens a fresh one, never a closed one
        pool, self._http = self._http, None
        if pool is not None:
            await pool.aclose()

    async def _post(self, target: str, headers: dict[str, str], payload: bytes,
                    deadline: float | None = None) -> HttpResponse:
        try:
            return await self._pool().request("POST", target, headers, payload, deadline)
        except HttpError as exc:
            raise upstream_error(self.spec.name, exc, "unreachable") from None

    def _headers(self, request: UpstreamRequest) -> dict[str, str]:
        # names compared lower-case, so no spelling of a client header can shadow ours
        headers = {k.lower(): v for k, v in request.headers}
        headers.update(self._fixed_headers)
        return headers

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        response = await self._post(self._target(request), self._headers(request), orjson.dumps(request.body),
                                    request.deadline)
        ok = 200 <= response.status < 300
        if request.stream and ok:
            if not _is_event_stream(response):  # a captive portal's page, say: not an answer
                response.close()
                raise InvalidResponse(f"provider {self.spec.name} answered a stream request with "
                                      f"{_content_type(response)!r}, not an event stream")
            return UpstreamResponse(
                response.status, response.headers, chunks=self._chunks(response), close=closer(response)
            )
        response.deadline = request.deadline  # a JSON answer is in whole by the deadline; a stream only begins
        body = await self._read(response)
        if response.status in (401, 403):
            raise credentials_refused(self.spec, response.status, body)
        answer = _json_object(body) if ok else None
        if ok and answer is None:
            raise InvalidResponse(f"provider {self.spec.name} answered {response.status} with a body that is "
                                  f"not a JSON object ({_content_type(response)!r})")
        return UpstreamResponse(response.status, response.headers, body=body, answer=answer)

    async def _read(self, response: HttpResponse) -> bytes:
        try:
            return await response.read()
        except HttpError as exc:
            raise upstream_error(self.spec.name, exc, "broke off the answer") from None
        finally:
            response.close()

    def _chunks(self, response: HttpResponse) -> AsyncIterator[bytes]:
        return ProviderChunks(response, self.spec.name)


class ProviderChunks(ChunkSource):
    """A stream's pieces as the upstream client reads them (no iterator between: a coroutine
    less per piece), its failures turned into the gateway's errors."""

    def __init__(self, response: HttpResponse, provider: str) -> None:
        self._response = response
        self._provider = provider

    async def next_chunk(self) -> bytes | None:
        try:
            return await self._response.next_piece()
        except HttpError as exc:
            raise upstream_error(self._provider, exc, "broke off the stream", kind="stream_cut") from None


def closer(response: HttpResponse):  # type: ignore[no-untyped-def]
    async def close() -> None:
        # a stream read to its end returns the connection to the pool; one cut short
        # (client gone, error) closes it so the upstream stops generating
        response.close()

    return close


_refusals = Throttled(logging.getLogger("switchyard.providers"), interval_s=30)


def credentials_refused(spec: ProviderSpec, status: int, body: bytes) -> UpstreamAuthError:
    """A provider's 401/403 is about the gateway's key, not the caller's: the caller gets a
    502 naming the provider; the provider's own words (which may echo the key) go to the
    log, redacted."""
    message = provider_message(body) or body[:300].decode("utf-8", "replace")
    _refusals.warning(f"{spec.name}:{status}", "provider %s refused the gateway's credentials (%d): %s",
                      spec.name, status, redact(message, spec.api_key))
    return UpstreamAuthError(f"provider {spec.name} refused the gateway's credentials ({status}); "
                             "the gateway's operator must fix its key (details are in the gateway log)")


def upstream_error(provider: str, exc: HttpError, doing: str, kind: str | None = None) -> ProxyError:
    """Our 502/504 for a transport failure: timeouts say which wait ran out."""
    if isinstance(exc, ConnectTimeout):
        return UpstreamTimeout(f"provider {provider} timed out connecting")
    if isinstance(exc, DeadlineExceeded):
        return DeadlinePassed()
    if isinstance(exc, PoolTimeout):
        return GatewayBusy(f"the gateway's connections to provider {provider} are all busy ({exc}); "
                           "retry shortly")
    if isinstance(exc, ReadTimeout):
        return UpstreamTimeout(f"provider {provider} timed out waiting for data")
    if isinstance(exc, (TlsError, ProxyFailed)):
        detail = str(exc)  # already says what failed and which setting would fix it
    elif isinstance(exc, ConnectError):
        detail = f"connection refused or failed ({exc})"
    else:
        detail = f"connection closed unexpectedly ({exc})"
    return UpstreamError(f"provider {provider} {doing}: {detail}", kind=kind)


def _is_event_stream(response: HttpResponse) -> bool:
    return _content_type(response).startswith("text/event-stream")


def _content_type(response: HttpResponse) -> str:
    return (response.header("content-type") or "none").split(";", 1)[0].strip().lower()[:80]


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


class AzureOpenAIAdapter(OpenAIAdapter):
    """`type: azure`: Azure OpenAI. The same wire format; the upstream model names the
    deployment in the URL, the key goes in `api-key`, and every call carries
    `api-version`."""

    @staticmethod
    def _auth_headers(spec: ProviderSpec) -> dict[str, str]:
        return {"api-key": spec.api_key} if spec.api_key else {}

    def _target(self, request: UpstreamRequest) -> str:
        deployment = quote(str(request.body.get("model", "")), safe="")
        return f"{self._path}openai/deployments/{deployment}/{request.endpoint}?api-version={self._version}"

    @property
    def _version(self) -> str:
        return quote(self.spec.api_version or "", safe="")
