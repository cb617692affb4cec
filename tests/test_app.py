"""The whole ASGI app in process: validation errors, auth, routing headers, passthrough, admin."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import proxy
from proxy.providers import build_adapter
from support import AppClient, FakeUpstream, chat_body, free_port

UP_PORT = free_port()  # every test's fake upstream listens here, so configs can name it
UP = f"http://127.0.0.1:{UP_PORT}/v1"
SEARCH_KEY = "sk-team-search-123456"
OTHER_KEY = "sk-team-other-abcdef"
OTHER_HASH = hashlib.sha256(OTHER_KEY.encode()).hexdigest()
ADMIN_KEY = "admin-secret-1"
PROVIDER_KEY = "sk-upstream"
PROVIDER_HEADER_SECRET = "prov-header-secret"
LIMIT_BYTES = int(0.01 * 1024 * 1024)  # server.max_body_mb: 0.01

ROUTES = """
routes:
  - {name: fast-route, match: {model: fast}, to: mock/mock-fast}
  - {name: smart-route, match: {model: smart}, to: up/gpt-4o-2024}
  - {name: emb-route, match: {model: emb}, to: mock/embed-small}
  - {name: gpt-prefix, match: {model: "gpt-*"}, to: "up/{model}"}
  - {name: secret-route, match: {model: secret}, to: mock/secret-model}
"""


def config_text(routes: str = ROUTES, admin: bool = True) -> str:
    admin_line = f'  admin_keys: ["{ADMIN_KEY}"]\n' if admin else ""
    return (
        f"""
server:
  max_body_mb: 0.01
{admin_line}providers:
  mock: {{type: mock}}
  up:
    type: openai
    base_url: "{UP}"
    timeout_s: 1
    api_key: "{PROVIDER_KEY}"
    headers: {{x-provider-header: "{PROVIDER_HEADER_SECRET}"}}
teams:
  search:
    keys: ["{SEARCH_KEY}"]
    default_model: fast
    models: [fast, smart, emb, "gpt-*", "up-*"]
  other:
    keys: ["sha256:{OTHER_HASH}"]
"""
        + routes
    )


AUTH = {"Authorization": f"Bearer {SEARCH_KEY}"}
GOOD_CHAT = chat_body()  # {"model": "fast", one user message "hello"}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(config_text())
    return path


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(UP_PORT) as up:
        yield up


@pytest.fixture
async def client(config_file, upstream, app_client) -> AppClient:
    return await app_client(config_file.read_text(), path=config_file, adapter_factory=build_adapter)


def assert_error(
    response: httpx.Response,
    status: int,
    code: str | None,
    *,
    param: str | None = None,
    type_: str = "invalid_request_error",
) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == type_
    assert error["code"] == code
    assert error["param"] == param
    for secret in (PROVIDER_KEY, SEARCH_KEY, OTHER_KEY, ADMIN_KEY, "Traceback", "/work/", "/tmp/"):
        assert secret not in response.text
    return error


async def assert_still_serving(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=GOOD_CHAT, headers=AUTH)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"] == "This is a mock answer from mock-fast. You said: hello"


# ---------------------------------------------------------------- the happy path

async def test_serving_does_not_run_the_collector_every_request_or_two(client):
    """Requests in flight hold hundreds of container objects each, which reference counting
    frees when they end; at the collector's default first threshold (700 more than were
    freed) it ran every request or two just to look at them."""
    runs: list[int] = []

    def counted(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 0:
            runs.append(0)

    threshold = gc.get_threshold()
    starlette = client.app.app
    async with starlette.router.lifespan_context(starlette):  # as `switchyard serve` starts it
        try:
            gc.callbacks.append(counted)
            for _ in range(4):
                answers = await asyncio.gather(*(client.post("/v1/chat/completions", json=GOOD_CHAT, headers=AUTH)
                                                 for _ in range(50)))
                assert {answer.status_code for answer in answers} == {200}
        finally:
            gc.callbacks.remove(counted)
            gc.set_threshold(*threshold)
    assert len(runs) <= 3, f"{len(runs)} collections for 200 requests (the test's client included)"


# ---------------------------------------------------------------- bad bodies


BAD_CHAT_BODIES = [
    pytest.param({"model": "fast"}, "messages", id="missing-messages"),
    pytest.param({"model": "fast", "messages": []}, "messages", id="empty-messages"),
    pytest.param({"model": "fast", "messages": "hello"}, "messages", id="messages-string"),
    pytest.param({"model": "fast", "messages": ["hello"]}, "messages[0]", id="message-not-object"),
    pytest.param({"model": "fast", "messages": [{"content": "x"}]}, "messages[0].role", id="missing-role"),
    pytest.param(
        {"model": "fast", "messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "x"}]},
        "messages[1].role",
        id="bad-role",
    ),
    pytest.param({"model": "fast", "messages": [{"role": "user", "content": 5}]}, "messages[0].content",
                 id="content-number"),
    pytest.param(chat_body(model=42), "model", id="model-number"),
    pytest.param(chat_body(stream="yes"), "stream", id="stream-string"),
    pytest.param(chat_body(temperature="hot"), "temperature", id="temperature-string"),
    pytest.param(chat_body(temperature=3), "temperature", id="temperature-range"),
    pytest.param(chat_body(top_p=1.5), "top_p", id="top-p-range"),
    pytest.param(chat_body(max_tokens=0), "max_tokens", id="max-tokens-zero"),
    pytest.param(chat_body(max_tokens=1.5), "max_tokens", id="max-tokens-float"),
    pytest.param(chat_body(n=True), "n", id="n-bool"),
    pytest.param(chat_body(user=7), "user", id="user-number"),
    pytest.param(chat_body(stream_options={"include_usage": True}), "stream_options", id="stream-options-no-stream"),
    pytest.param(chat_body(stream=True, stream_options="yes"), "stream_options", id="stream-options-string"),
]


@pytest.mark.parametrize("body, param", BAD_CHAT_BODIES)
async def test_invalid_chat_fields_400_with_param(client, body, param):
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert_error(response, 400, None, param=param)
    assert response.headers["x-request-id"]
    await assert_still_serving(client)


BAD_EMBEDDING_BODIES = [
    pytest.param({"model": "emb"}, "input", id="missing-input"),
    pytest.param({"model": "emb", "input": ""}, "input", id="empty-string"),
    pytest.param({"model": "emb", "input": []}, "input", id="empty-array"),
    pytest.param({"model": "emb", "input": [1, "a"]}, "input", id="mixed-array"),
    pytest.param({"model": "emb", "input": {"text": "a"}}, "input", id="object"),
    pytest.param({"model": "emb", "input": "a", "dimensions": 0}, "dimensions", id="dimensions-zero"),
    pytest.param({"model": ["emb"], "input": "a"}, "model", id="model-array"),
]


@pytest.mark.parametrize("body, param", BAD_EMBEDDING_BODIES)
async def test_invalid_embeddings_fields_400_with_param(client, body, param):
    response = await client.post("/v1/embeddings", json=body, headers=AUTH)
    assert_error(response, 400, None, param=param)
    await assert_still_serving(client)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        pytest.param(b'{"model": "fast", "messages": [', "could not parse the JSON", id="truncated"),
        pytest.param(b"not json at all", "could not parse the JSON", id="text"),
        pytest.param(b'[{"model": "fast"}]', "must be a JSON object, not an array", id="array"),
        pytest.param(b'"just a string"', "must be a JSON object, not a string", id="string"),
        pytest.param(b"", "empty", id="empty"),
    ],
)
async def test_unusable_json_body_400(client, raw, fragment):
    response = await client.post(
        "/v1/chat/completions", content=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    error = assert_error(response, 400, None)
    assert fragment in error["message"]
    await assert_still_serving(client)


async def test_body_over_limit_with_content_length_413(client):
    big = chat_body(messages=[{"role": "user", "content": "x" * (LIMIT_BYTES + 100)}])
    raw = json.dumps(big).encode()
    response = await client.post(
        "/v1/chat/completions", content=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.request.headers["content-length"] == str(len(raw))
    error = assert_error(response, 413, "request_too_large")
    assert "max_body_mb" in error["message"]
    await assert_still_serving(client)


async def test_body_over_limit_chunked_without_content_length_413(client):
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"model": "fast", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            sent += 1024
            yield b"y" * 1024
        yield b'"}]}'

    response = await client.post(
        "/v1/chat/completions", content=body(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "request_too_large")
    # refused as soon as the limit was passed, not after reading everything
    assert sent < 40 * 1024
    await assert_still_serving(client)


async def test_body_at_exactly_the_limit_is_accepted(client):
    base = json.dumps(chat_body(messages=[{"role": "user", "content": ""}])).encode()
    pad = LIMIT_BYTES - len(base)
    raw = json.dumps(chat_body(messages=[{"role": "user", "content": "z" * pad}])).encode()
    assert len(raw) == LIMIT_BYTES
    response = await client.post(
        "/v1/chat/completions", content=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_wrong_content_type_415(client, content_type):
    response = await client.post(
        "/v1/chat/completions",
        content=json.dumps(GOOD_CHAT).encode(),
        headers={**AUTH, "Content-Type": content_type},
    )
    error = assert_error(response, 415, "unsupported_media_type")
    assert content_type.split(";")[0] in error["message"]
    await assert_still_serving(client)


# ---------------------------------------------------------------- auth and policy errors


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer sk-wrong-key-99999"}, id="wrong"),
        pytest.param({"Authorization": f"Basic {SEARCH_KEY}"}, id="basic-scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
        pytest.param({"api-key": "sk-wrong-key-99999"}, id="wrong-api-key-header"),
    ],
)
async def test_bad_key_401(client, headers):
    response = await client.post("/v1/chat/completions", json=GOOD_CHAT, headers=headers)
    error = assert_error(response, 401, "invalid_api_key")
    assert "sk-wrong-key-99999" not in error["message"]
    assert response.headers["x-request-id"]
    assert "x-switchyard-route" not in response.headers
    await assert_still_serving(client)


async def test_bad_key_checked_before_body(client):
    response = await client.post(
        "/v1/chat/completions", content=b"garbage", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 401, "invalid_api_key")


async def test_model_not_allowed_403(client):
    response = await client.post(
        "/v1/chat/completions", json=chat_body(model="secret"), headers=AUTH
    )
    error = assert_error(response, 403, "model_not_allowed", param="model")
    assert "secret" in error["message"]
    await assert_still_serving(client)


async def test_unknown_model_404_lists_allowed_names(client):
    response = await client.post("/v1/chat/completions", json=chat_body(model="up-nothing"), headers=AUTH)
    error = assert_error(response, 404, "model_not_found", param="model")
    assert "up-nothing" in error["message"]
    for name in ("fast", "smart", "emb", "gpt-*"):
        assert name in error["message"]
    assert "secret" not in error["message"]
    await assert_still_serving(client)


async def test_unknown_model_for_unrestricted_team_404(client):
    response = await client.post(
        "/v1/chat/completions", json=chat_body(model="nonexistent"), headers={"Authorization": f"Bearer {OTHER_KEY}"}
    )
    error = assert_error(response, 404, "model_not_found", param="model")
    for name in ("fast", "smart", "emb", "secret"):
        assert name in error["message"]


# ---------------------------------------------------------------- upstream failures


async def test_upstream_connection_refused_502(client, upstream):
    await upstream.stop()  # nothing listens on the provider's port now
    response = await client.post("/v1/chat/completions", json=chat_body(model="smart"), headers=AUTH)
    error = assert_error(response, 502, "upstream_error", type_="api_error")
    assert str(UP_PORT) not in error["message"]
    assert response.headers["x-switchyard-provider"] == "up"
    assert response.headers["x-request-id"]
    await assert_still_serving(client)


async def test_upstream_connection_closed_502(client, upstream):
    upstream.post("/chat/completions").fault("close")
    response = await client.post("/v1/chat/completions", json=chat_body(model="smart"), headers=AUTH)
    assert_error(response, 502, "upstream_error", type_="api_error")
    await assert_still_serving(client)


async def test_upstream_timeout_504(client, upstream):
    upstream.post("/chat/completions").fault("hang", seconds=3)  # provider timeout_s is 1
    response = await client.post("/v1/chat/completions", json=chat_body(model="smart"), headers=AUTH)
    assert_error(response, 504, "upstream_timeout", type_="api_error")
    await assert_still_serving(client)


async def test_upstream_400_passed_through_exactly(client, upstream):
    raw = (
        b'{\n  "error": {\n    "message": "Invalid value for \'tool_choice\'.",\n'
        b'    "type": "invalid_request_error",\n    "param": "tool_choice",\n    "code": null\n  }\n}\n'
    )
    upstream.post("/chat/completions").respond(400, content=raw, headers={"content-type": "application/json"})
    response = await client.post("/v1/chat/completions", json=chat_body(model="smart"), headers=AUTH)
    assert response.status_code == 400
    assert response.content == raw
    assert response.headers["x-switchyard-route"] == "smart-route"
    await assert_still_serving(client)


async def test_upstream_500_becomes_502_with_upstream_message(client, upstream):
    upstream.post("/chat/completions").respond(
        500, json={"error": {"message": "the model exploded", "type": "server_error"}}
    )
    response = await client.post("/v1/chat/completions", json=chat_body(model="smart"), headers=AUTH)
    error = assert_error(response, 502, "upstream_error", type_="api_error")
    assert "the model exploded" in error["message"]
    assert "500" in error["message"]
    await assert_still_serving(client)


async def test_upstream_non_json_500_becomes_502(client, upstream):
    upstream.post("/chat/completions").respond(500, content=b"<html>Bad gateway</html>",
                                               headers={"content-type": "text/html"})
    response = await client.post("/v1/chat/completions", json=chat_body(model="smart"), headers=AUTH)
    error = assert_error(response, 502, "upstream_error", type_="api_error")
    assert "<html>" not in error["message"]


@pytest.mark.parametrize("status", [503, 529])  # 529: Anthropic's "overloaded"
async def test_upstream_overload_stays_a_503_with_its_retry_after(client, upstream, status):
    upstream.post("/chat/completions").respond(status, json={"error": {"message": "busy"}},
                                               headers={"retry-after": "7"})
    response = await client.post("/v1/chat/completions", json=chat_body(model="smart"), headers=AUTH)
    error = assert_error(response, 503, "upstream_overloaded", type_="api_error")
    assert "busy" in error["message"]
    assert response.headers["retry-after"] == "7"


# ---------------------------------------------------------------- unknown paths and methods


@pytest.mark.parametrize("path", ["/v1/nope", "/", "/v2/chat/completions", "/admin/unknown"])
async def test_unknown_path_404_openai_shape(client, path):
    response = await client.get(path, headers=AUTH)
    error = assert_error(response, 404, "not_found")
    assert path in error["message"]
    await assert_still_serving(client)


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/v1/chat/completions"), ("PUT", "/v1/embeddings"), ("POST", "/v1/models"), ("DELETE", "/healthz"),
     ("GET", "/admin/reload")],
)
async def test_wrong_method_405_openai_shape(client, method, path):
    response = await client.request(method, path, headers=AUTH)
    error = assert_error(response, 405, "method_not_allowed")
    assert method in error["message"]
    await assert_still_serving(client)


# ---------------------------------------------------------------- response headers


async def test_proxied_response_headers(client, upstream):
    upstream.post("/chat/completions").respond(200, json={"id": "x", "choices": []})
    response = await client.post("/v1/chat/completions", json=chat_body(model="smart"), headers=AUTH)
    assert response.status_code == 200
    assert re.fullmatch(r"req_[0-9a-f]{32}", response.headers["x-request-id"])
    assert response.headers["x-switchyard-route"] == "smart-route"
    assert response.headers["x-switchyard-provider"] == "up"
    assert response.headers["x-switchyard-model"] == "gpt-4o-2024"
    assert response.headers["x-switchyard-cache"] == "bypass"


async def test_mock_response_headers(client):
    response = await client.post("/v1/chat/completions", json=GOOD_CHAT, headers=AUTH)
    assert response.headers["x-switchyard-route"] == "fast-route"
    assert response.headers["x-switchyard-provider"] == "mock"
    assert response.headers["x-switchyard-model"] == "mock-fast"
    assert response.headers["x-switchyard-cache"] == "bypass"


async def test_request_id_generated_fresh_each_time(client):
    a = await client.post("/v1/chat/completions", json=GOOD_CHAT, headers=AUTH)
    b = await client.post("/v1/chat/completions", json=GOOD_CHAT, headers=AUTH)
    assert a.headers["x-request-id"].startswith("req_")
    assert a.headers["x-request-id"] != b.headers["x-request-id"]


@pytest.mark.parametrize("given", ["trace-123", "abc.DEF_9:x-y", "a" * 128])
async def test_sane_client_request_id_honoured(client, given):
    response = await client.post("/v1/chat/completions", json=GOOD_CHAT, headers={**AUTH, "x-request-id": given})
    assert response.headers["x-request-id"] == given


@pytest.mark.parametrize("given", ["has spaces in it", "a" * 129, "semi;colon", "<script>", "quote\"d"])
async def test_garbage_client_request_id_replaced(client, given):
    response = await client.post("/v1/chat/completions", json=GOOD_CHAT, headers={**AUTH, "x-request-id": given})
    assert response.status_code == 200
    assert re.fullmatch(r"req_[0-9a-f]{32}", response.headers["x-request-id"])


async def test_request_id_on_error_responses_honoured(client):
    response = await client.post(
        "/v1/chat/completions", json={"model": "fast"}, headers={**AUTH, "x-request-id": "err-trace-1"}
    )
    assert response.status_code == 400
    assert response.headers["x-request-id"] == "err-trace-1"


# ---------------------------------------------------------------- passthrough to the upstream


async def test_passthrough_rewrites_model_and_keeps_fields(client, upstream):
    raw = b'{"id":"chatcmpl-up","object":"chat.completion","choices":[] }'
    route = upstream.post("/chat/completions").respond(200, content=raw, headers={"content-type": "application/json"})
    body = chat_body(model="smart", temperature=0.7, metadata={"k": [1, {"v": None}]}, seed=11,
                     tools=[{"type": "function"}])
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200
    assert response.content == raw
    assert route.call_count == 1
    sent = route.calls.last.request
    assert sent.url == f"{UP}/chat/completions"
    got = json.loads(sent.content)
    assert got == {**body, "model": "gpt-4o-2024"}


async def test_passthrough_template_route_keeps_model_name(client, upstream):
    route = upstream.post("/chat/completions").respond(200, json={})
    response = await client.post("/v1/chat/completions", json=chat_body(model="gpt-4.1-nano"), headers=AUTH)
    assert response.status_code == 200
    assert response.headers["x-switchyard-route"] == "gpt-prefix"
    assert response.headers["x-switchyard-model"] == "gpt-4.1-nano"
    assert json.loads(route.calls.last.request.content)["model"] == "gpt-4.1-nano"


async def test_only_allow_listed_headers_reach_the_provider(client, upstream):
    route = upstream.post("/chat/completions").respond(200, json={})
    response = await client.post(
        "/v1/chat/completions",
        json=chat_body(model="smart"),
        headers={
            **AUTH,
            "Connection": "close",
            "Keep-Alive": "timeout=99",
            "TE": "trailers",
            "Upgrade": "h2c",
            "Expect": "100-continue",
            "Proxy-Authorization": "Basic cHJveHktc2VjcmV0",
            "x-api-key": SEARCH_KEY,
            "x-switchyard-user": "alice",
            "x-custom": "custom-value",
            "Cookie": "session=cookie-secret",
            "User-Agent": "OpenAI/Python 3.57.0",
            "x-stainless-retry-count": "1",
            "OpenAI-Beta": "assistants=v2",
            "Idempotency-Key": "idem-1",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )
    assert response.status_code == 200
    sent = route.calls.last.request.headers
    assert sent.getall("authorization") == [f"Bearer {PROVIDER_KEY}"]
    assert sent["x-provider-header"] == PROVIDER_HEADER_SECRET
    assert sent["user-agent"] == "OpenAI/Python 3.57.0"
    assert sent["x-stainless-retry-count"] == "1"
    assert sent["openai-beta"] == "assistants=v2" and sent["idempotency-key"] == "idem-1"
    assert sent["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    for name in ("keep-alive", "te", "upgrade", "expect", "proxy-authorization", "x-api-key", "x-switchyard-user",
                 "cookie", "x-custom"):  # x-custom: not on the allow-list (a provider's forward_headers may add it)
        assert name not in sent, name
    assert sent.get("connection") != "close"
    everything = repr(list(sent.items()))
    for marker in (SEARCH_KEY, "timeout=99", "trailers", "h2c", "cHJveHktc2VjcmV0", "alice", "cookie-secret",
                   "custom-value", "100-continue"):
        assert marker not in everything, marker


async def test_api_key_header_not_forwarded(client, upstream):
    route = upstream.post("/chat/completions").respond(200, json={})
    response = await client.post("/v1/chat/completions", json=chat_body(model="smart"), headers={"api-key": SEARCH_KEY})
    assert response.status_code == 200
    sent = route.calls.last.request.headers
    assert "api-key" not in sent
    assert SEARCH_KEY not in repr(list(sent.items()))


async def test_upstream_response_headers_filtered(client, upstream):
    upstream.post("/chat/completions").respond(
        200,
        json={},
        headers={
            "x-request-id": "upstream-req-7",
            "openai-processing-ms": "33",
            "set-cookie": "upstream=1",
            "x-ratelimit-remaining-requests": "4999",
            "openai-organization": "their-org",
        },
    )
    response = await client.post(
        "/v1/chat/completions", json=chat_body(model="smart"), headers={**AUTH, "x-request-id": "mine-1"}
    )
    assert response.headers["x-request-id"] == "mine-1"
    assert response.headers["x-switchyard-upstream-request-id"] == "upstream-req-7"
    assert response.headers["openai-processing-ms"] == "33"
    assert "set-cookie" not in response.headers
    assert "openai-organization" not in response.headers
    assert "x-ratelimit-remaining-requests" not in response.headers


# ---------------------------------------------------------------- models, health


async def test_models_list_for_team(client):
    response = await client.get("/v1/models", headers=AUTH)
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["emb", "fast", "smart"]
    assert all(m["object"] == "model" for m in data["data"])


async def test_models_list_for_unrestricted_team(client):
    response = await client.get("/v1/models", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert [m["id"] for m in response.json()["data"]] == ["emb", "fast", "secret", "smart"]


async def test_models_needs_key(client):
    assert_error(await client.get("/v1/models"), 401, "invalid_api_key")
    assert_error(await client.get("/v1/models/fast"), 401, "invalid_api_key")


async def test_model_found(client):
    response = await client.get("/v1/models/fast", headers=AUTH)
    assert response.status_code == 200
    assert response.json()["id"] == "fast"
    assert response.json()["object"] == "model"


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("secret", 403, "model_not_allowed"),  # routed, but not in the team's models
        ("nothing", 403, "model_not_allowed"),
        ("up/gpt-4o", 403, "model_not_allowed"),
        ("up-anything", 404, "model_not_found"),  # allowed by a glob, but no rule takes it
        ("gpt-4.1", 200, None),  # allowed by a glob and routed by one
    ],
)
async def test_model_lookup_answers_as_a_chat_request_for_it_would(client, name, status, code):
    response = await client.get(f"/v1/models/{name}", headers=AUTH)
    if status == 200:
        assert response.status_code == 200 and response.json()["id"] == name
        return
    error = assert_error(response, status, code, param="model")
    assert name in error["message"]
    chat = await client.post("/v1/chat/completions", json={**GOOD_CHAT, "model": name}, headers=AUTH)
    assert assert_error(chat, status, code, param="model")["message"] == error["message"]


async def test_healthz(client):
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": proxy.__version__}


async def test_readyz(client):
    response = await client.get("/readyz")
    assert response.status_code == 200
    data = response.json()
    assert data["status"] == "ready"
    assert data["generation"] == 1
    assert data["providers"] == ["mock", "up"]
    assert data["disabled_providers"] == {}


# ---------------------------------------------------------------- admin


async def test_admin_config_needs_admin_key(client):
    assert_error(await client.get("/admin/config"), 401, "invalid_api_key")
    assert_error(await client.get("/admin/config", headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")
    # a team key is not an admin key
    assert_error(await client.get("/admin/config", headers=AUTH), 401, "invalid_api_key")


async def test_admin_forbidden_when_no_admin_keys(tmp_path, upstream, app_client):
    client = await app_client(config_text(admin=False), path=tmp_path / "noadmin.yaml", adapter_factory=build_adapter)
    for method, url in (("GET", "/admin/config"), ("POST", "/admin/reload")):
        response = await client.request(method, url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert_error(response, 403, "admin_forbidden")
    await assert_still_serving(client)


async def test_admin_config_redacts_secrets(client):
    response = await client.get("/admin/config", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200
    text = response.text
    for secret in (PROVIDER_KEY, PROVIDER_HEADER_SECRET, SEARCH_KEY, OTHER_HASH, ADMIN_KEY):
        assert secret not in text, secret
    data = response.json()
    assert data["generation"] == 1
    assert data["last_error"] is None
    config = data["config"]
    assert config["providers"]["up"]["api_key"] == "<redacted>"
    assert config["providers"]["up"]["headers"] == {"x-provider-header": "<redacted>"}
    assert config["providers"]["up"]["base_url"] == UP
    assert len(config["teams"]["search"]["keys"]) == 1
    assert len(config["teams"]["other"]["keys"]) == 1
    assert [r["name"] for r in config["routes"]] == ["fast-route", "smart-route", "emb-route", "gpt-prefix",
                                                     "secret-route"]


NEW_ROUTES = """
routes:
  - {name: fast-v2, match: {model: fast}, to: mock/mock-fast-v2}
  - {name: smart-route, match: {model: smart}, to: up/gpt-4o-2024}
  - {name: emb-route, match: {model: emb}, to: mock/embed-small}
"""

INVALID_ROUTES = """
routes:
  - {name: fast-broken, match: {model: fast}, to: mock/never}
  - {name: smart-route, match: {model: smart}, to: nope/gpt-4o}
"""


async def test_admin_reload_applies_new_config(client, config_file):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    config_file.write_text(config_text(NEW_ROUTES))
    response = await client.post("/admin/reload", headers=admin)
    assert response.status_code == 200
    data = response.json()
    assert data["result"] == "ok"
    assert data["generation"] == 2
    assert data["last_error"] is None
    assert PROVIDER_KEY not in response.text
    chat = await client.post("/v1/chat/completions", json=GOOD_CHAT, headers=AUTH)
    assert chat.status_code == 200
    assert chat.headers["x-switchyard-route"] == "fast-v2"
    assert chat.headers["x-switchyard-model"] == "mock-fast-v2"
    assert chat.json()["model"] == "mock-fast-v2"
    # the removed gpt-* route no longer exists, but the team still may ask for it
    gone = await client.post("/v1/chat/completions", json=chat_body(model="gpt-4o"), headers=AUTH)
    assert_error(gone, 404, "model_not_found", param="model")
    assert (await client.get("/readyz")).json()["generation"] == 2


async def test_admin_reload_needs_admin_key(client, config_file):
    config_file.write_text(config_text(NEW_ROUTES))
    assert_error(await client.post("/admin/reload"), 401, "invalid_api_key")
    assert_error(await client.post("/admin/reload", headers=AUTH), 401, "invalid_api_key")
    chat = await client.post("/v1/chat/completions", json=GOOD_CHAT, headers=AUTH)
    assert chat.headers["x-switchyard-route"] == "fast-route"


async def test_admin_reload_rejects_invalid_config_and_keeps_serving(client, config_file):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    config_file.write_text(config_text(INVALID_ROUTES))
    response = await client.post("/admin/reload", headers=admin)
    assert response.status_code == 422
    data = response.json()
    assert data["result"] == "error"
    assert data["generation"] == 1
    assert data["last_error"]["problems"] == [
        {"path": "routes[1].to", "reason": "unknown provider 'nope' (known: mock, up)"}
    ]
    for secret in (PROVIDER_KEY, SEARCH_KEY, ADMIN_KEY):
        assert secret not in response.text
    chat = await client.post("/v1/chat/completions", json=GOOD_CHAT, headers=AUTH)
    assert chat.status_code == 200
    assert chat.headers["x-switchyard-route"] == "fast-route"
    assert chat.json()["model"] == "mock-fast"
    config = await client.get("/admin/config", headers=admin)
    assert config.json()["last_error"]["problems"][0]["path"] == "routes[1].to"


async def test_admin_reload_rejects_schema_error_with_path(client, config_file):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    config_file.write_text(config_text(ROUTES + "  - {name: split, match: {model: s}, split: {mock/a: 0}}\n"))
    response = await client.post("/admin/reload", headers=admin)
    assert response.status_code == 422
    assert response.json()["last_error"]["problems"] == [{"path": "routes[5].split", "reason": "weights must be > 0"}]
    await assert_still_serving(client)


async def test_admin_reload_recovers_after_invalid(client, config_file):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    config_file.write_text("routes: [")
    bad = await client.post("/admin/reload", headers=admin)
    assert bad.status_code == 422
    assert bad.json()["last_error"]["problems"][0]["reason"].startswith("invalid YAML")
    config_file.write_text(config_text(NEW_ROUTES))
    good = await client.post("/admin/reload", headers=admin)
    assert good.status_code == 200
    assert good.json()["result"] == "ok"
    assert good.json()["last_error"] is None
    chat = await client.post("/v1/chat/completions", json=GOOD_CHAT, headers=AUTH)
    assert chat.headers["x-switchyard-route"] == "fast-v2"


async def test_upstream_still_reached_after_reload(client, config_file, upstream):
    route = upstream.post("/chat/completions").respond(200, json={"ok": 1})
    config_file.write_text(config_text(NEW_ROUTES))
    reload = await client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert reload.status_code == 200
    response = await client.post("/v1/chat/completions", json=chat_body(model="smart"), headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"ok": 1}
    assert route.calls.last.request.headers["authorization"] == f"Bearer {PROVIDER_KEY}"


# ---------------------------------------------------------------- embeddings and streams


async def test_embeddings_through_mock(client):
    response = await client.post("/v1/embeddings", json={"model": "emb", "input": ["alpha", "beta"]}, headers=AUTH)
    assert response.status_code == 200
    assert response.headers["x-switchyard-route"] == "emb-route"
    assert response.headers["x-switchyard-provider"] == "mock"
    assert response.headers["x-switchyard-model"] == "embed-small"
    data = response.json()
    assert data["object"] == "list"
    assert data["model"] == "embed-small"
    assert [d["index"] for d in data["data"]] == [0, 1]
    vectors = [d["embedding"] for d in data["data"]]
    assert all(len(v) == 16 for v in vectors)
    assert vectors[0] != vectors[1]
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-9
    again = await client.post("/v1/embeddings", json={"model": "emb", "input": "alpha", "dimensions": 4}, headers=AUTH)
    assert len(again.json()["data"][0]["embedding"]) == 4


async def test_embeddings_through_upstream(client, upstream):
    raw = b'{"object":"list","data":[{"embedding":[0.1,0.2]}]}'
    route = upstream.post("/embeddings").respond(200, content=raw, headers={"content-type": "application/json"})
    response = await client.post("/v1/embeddings", json={"model": "gpt-embed", "input": "x"}, headers=AUTH)
    assert response.status_code == 200
    assert response.content == raw
    assert json.loads(route.calls.last.request.content) == {"model": "gpt-embed", "input": "x"}


def sse_events(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block.strip()]


async def test_streaming_chat_through_mock(client):
    response = await client.post(
        "/v1/chat/completions",
        json=chat_body(stream=True, stream_options={"include_usage": True}),
        headers=AUTH,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-switchyard-route"] == "fast-route"
    assert response.headers["x-switchyard-cache"] == "bypass"
    assert response.headers["x-request-id"]
    events = sse_events(response.text)
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "This is a mock answer from mock-fast. You said: hello"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    await assert_still_serving(client)


async def test_streaming_chat_through_upstream(client, upstream):
    events = [b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n', b"data: [DONE]\n\n"]
    upstream.post("/chat/completions").stream(events)
    response = await client.post("/v1/chat/completions", json=chat_body(model="smart", stream=True), headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-switchyard-provider"] == "up"
    assert response.content == b"".join(events)


async def test_upstream_failure_mid_stream_ends_with_error_event(client, upstream):
    first = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
    upstream.post("/chat/completions").stream([first, first], cut_after=1)
    response = await client.post("/v1/chat/completions", json=chat_body(model="smart", stream=True), headers=AUTH)
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[0] == first.decode().strip()
    error = json.loads(events[-1][6:])["error"]
    assert error["code"] == "upstream_error"
    assert error["type"] == "api_error"
    assert set(error) == {"message", "type", "param", "code"}
    await assert_still_serving(client)


async def test_stream_request_answered_with_json_error_passes_through(client, upstream):
    raw = b'{"error":{"message":"stream not supported","type":"invalid_request_error","param":"stream","code":null}}'
    upstream.post("/chat/completions").respond(400, content=raw, headers={"content-type": "application/json"})
    response = await client.post("/v1/chat/completions", json=chat_body(model="smart", stream=True), headers=AUTH)
    assert response.status_code == 400
    assert response.content == raw
