"""`type: openai`: any OpenAI-compatible API (OpenAI, OpenRouter, vLLM, a local mock).

The request body passes through with only the model rewritten; the client's auth is
replaced by the provider's key. One pooled aiohttp session per provider, with connect
and read timeouts from the config. Streams are relayed chunk by chunk as they arrive.

aiohttp rather than httpx: on this project's benchmark (one core, 50 concurrent
requests to a local mock) httpx managed about 630 requests/s and aiohttp about 13,500,
and the upstream client is most of a proxy's cost (see README, Performance).
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from urllib.parse import quote

import aiohttp
import orjson

from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.providers.base import Adapter, UpstreamRequest, UpstreamResponse
from proxy.snapshot import ProviderSpec


class OpenAIAdapter(Adapter):
    def __init__(self, spec: ProviderSpec) -> None:
        super().__init__(spec)
        assert spec.base_url, "openai providers always have a base_url"
        headers = {"content-type": "application/json", **self._auth_headers(spec)}
        headers.update({k.lower(): v for k, v in spec.headers})
        self._fixed_headers = headers
        self._base = spec.base_url.rstrip("/") + "/"
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=spec.connect_timeout_s, sock_read=spec.timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    @staticmethod
    def _auth_headers(spec: ProviderSpec) -> dict[str, str]:
        return {"authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}

    def _url(self, request: UpstreamRequest) -> str:
        return self._base + request.endpoint

    def _client(self) -> aiohttp.ClientSession:
        # created on first use: a session belongs to the running event loop
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.spec.max_connections,
                limit_per_host=self.spec.max_connections,
                keepalive_timeout=30 if self.spec.max_keepalive else 0,
                force_close=self.spec.max_keepalive == 0,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def aclose(self) -> None:
        # forget the session before closing it: a later request (an in-flight one of an
        # older snapshot, retrying on this retired adapter) opens a fresh one, never a closed one
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        # names compared lower-case, so no spelling of a client header can shadow ours
        headers = {k.lower(): v for k, v in request.headers}
        headers.update(self._fixed_headers)
        try:
            response = await self._client().post(
                self._url(request), data=orjson.dumps(request.body), headers=headers
            )
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout(_timeout_message(self.spec.name, exc)) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"provider {self.spec.name} unreachable: {_describe(exc)}") from None
        relay_headers = list(response.headers.items())
        streaming = request.stream and response.status < 300 and _is_event_stream(response)
        if streaming:
            return UpstreamResponse(
                response.status, relay_headers, chunks=self._chunks(response), close=_closer(response)
            )
        try:
            body = await response.read()
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout(_timeout_message(self.spec.name, exc)) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"provider {self.spec.name} broke off the answer: {_describe(exc)}") from None
        finally:
            response.release()
        return UpstreamResponse(response.status, relay_headers, body=body)

    async def _chunks(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.content.iter_any():
                yield chunk
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout(_timeout_message(self.spec.name, exc)) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"provider {self.spec.name} broke off the stream: {_describe(exc)}", kind="stream_cut"
            ) from None


def _closer(response: aiohttp.ClientResponse):  # type: ignore[no-untyped-def]
    async def close() -> None:
        # a stream read to its end returns the connection to the pool; one cut short
        # (client gone, error) must close it so the upstream stops generating
        if response.content.is_eof():
            response.release()
        else:
            response.close()

    return close


def _is_event_stream(response: aiohttp.ClientResponse) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


def _timeout_message(provider: str, exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        phase = "connecting"
    elif isinstance(exc, aiohttp.SocketTimeoutError):
        phase = "waiting for data"
    else:
        phase = "waiting"
    return f"provider {provider} timed out {phase}"


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection refused or failed"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return "connection closed unexpectedly"
    return type(exc).__name__


class AzureOpenAIAdapter(OpenAIAdapter):
    """`type: azure`: Azure OpenAI. The same wire format; the upstream model names the
    deployment in the URL, the key goes in `api-key`, and every call carries
    `api-version`."""

    @staticmethod
    def _auth_headers(spec: ProviderSpec) -> dict[str, str]:
        return {"api-key": spec.api_key} if spec.api_key else {}

    def _url(self, request: UpstreamRequest) -> str:
        deployment = quote(str(request.body.get("model", "")), safe="")
        return f"{self._base}openai/deployments/{deployment}/{request.endpoint}?api-version={self._version}"

    @property
    def _version(self) -> str:
        return quote(self.spec.api_version or "", safe="")
