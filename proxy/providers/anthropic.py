"""`type: anthropic`: Anthropic's Messages API, as transport only.

The base URL, the key in `x-api-key`, and `anthropic-version` (the client's when it sent
one, else the version this gateway's translation speaks). A Messages request passes
through untouched; a chat or Responses request arrives already translated
(proxy/translate/chat_anthropic.py). Upstream errors keep their headers, so Anthropic's
`retry-after` is honoured between retries and its `request-id` reaches the client.
"""

from __future__ import annotations

from proxy.providers.base import UpstreamRequest
from proxy.providers.openai import OpenAIAdapter
from proxy.snapshot import ProviderSpec

API_VERSION = "2023-06-01"


class AnthropicAdapter(OpenAIAdapter):
    @staticmethod
    def _auth_headers(spec: ProviderSpec) -> dict[str, str]:
        return {"x-api-key": spec.api_key} if spec.api_key else {}

    def _target(self, request: UpstreamRequest) -> str:
        return self._path + "v1/" + request.endpoint

    def _headers(self, request: UpstreamRequest) -> dict[str, str]:
        headers = super()._headers(request)
        headers.setdefault("anthropic-version", API_VERSION)  # the client's, when it named one
        return headers
