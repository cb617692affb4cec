"""The one pipeline on every surface: what the chat endpoint does (cache and stream replay,
ledger and spend, rate limits, retries honouring retry-after, upstream request ids, the
x-switchyard-* headers) happens the same on the Responses and Messages surfaces, in
their own shapes; and the chat → Anthropic translation keeps its usage and says what it
dropped."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from proxy.tasks import drain
from support import FakeUpstream, chat_body

DATA = Path(__file__).parent / "data"
KEY, ADMIN = "sk-pipeline-team", "sk-pipeline-admin"
AUTH = {"authorization": f"Bearer {KEY}"}
ANTHROPIC_AUTH = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}


def config(upstream: str, ledger: Path, extra: str = "", team_extra: str = "") -> str:
    return f"""
server: {{admin_keys: ["{ADMIN}"]}}
ledger: {{path: "{ledger}"}}
cache: {{backend: memory}}
resilience: {{retries: 1, backoff_ms: 10, max_backoff_ms: 2000}}
{extra}
providers:
  mock: {{type: mock}}
  claude: {{type: anthropic, base_url: "{upstream.removesuffix('/v1')}", api_key: sk-ant}}
pricing:
  mock/gpt-4o-mini: {{input: 1, output: 2}}
  claude/claude-x: {{input: 3, output: 15}}
teams:
  t: {{keys: ["{KEY}"]{team_extra}}}
routes:
  - {{name: fast, match: {{model: fast}}, to: mock/gpt-4o-mini}}
  - {{name: claude, match: {{model: claude}}, to: claude/claude-x}}
"""


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        yield up


def events(text: str) -> list[tuple[str, dict]]:
    """(event name, data) of each SSE event with a JSON payload."""
    out = []
    for block in text.split("\n\n"):
        name, payload = "", None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and line[6:] != "[DONE]":
                payload = json.loads(line[6:])
        if payload is not None:
            out.append((name or payload.get("type", ""), payload))
    return out


RESPONSES = {"model": "fast", "input": "cache me", "instructions": "be brief"}
MESSAGES = {"model": "fast", "max_tokens": 100, "messages": [{"role": "user", "content": "cache me"}]}


@pytest.mark.parametrize("path, body, headers, final", [
    ("/v1/responses", RESPONSES, AUTH, "response.completed"),
    ("/v1/messages", MESSAGES, ANTHROPIC_AUTH, "message_stop"),
])
async def test_each_surface_is_cached_and_replayed_as_its_own_stream(app_client, upstream, tmp_path, path, body,
                                                                      headers, final):
    client = await app_client(config(upstream.base_url, tmp_path / "ledger.db"))
    first = await client.post(path, json=body, headers=headers)
    assert first.status_code == 200 and first.headers["x-switchyard-cache"] == "miss"
    await drain()
    second = await client.post(path, json=body, headers=headers)
    assert second.headers["x-switchyard-cache"] == "hit" and second.json() == first.json()
    assert second.headers["x-switchyard-cost-usd"] == "0" and float(second.headers["x-switchyard-saved-usd"]) > 0
    streamed = await client.post(path, json={**body, "stream": True}, headers=headers)
    assert streamed.headers["x-switchyard-cache"] == "hit"
    assert streamed.headers["content-type"].startswith("text/event-stream")
    kinds = [name for name, _ in events(streamed.text)]
    assert kinds[-1] == final and len(kinds) > 4


@pytest.mark.parametrize("path, body, headers, named", [
    ("/v1/responses", {**RESPONSES, "input": "dropped", "reasoning": {"effort": "low"}}, AUTH, "reasoning"),
    ("/v1/messages", {**MESSAGES, "top_k": 5}, ANTHROPIC_AUTH, "top_k"),
    ("/v1/chat/completions", {**chat_body("claude", "dropped"), "seed": 7}, AUTH, "seed"),
    ("/v1/responses", {**RESPONSES, "model": "claude", "reasoning": {"effort": "low"}}, AUTH, "reasoning"),
])
async def test_a_cache_hit_names_the_fields_its_translation_dropped(app_client, upstream, tmp_path, path, body,
                                                                    headers, named):
    upstream.at("POST", "/v1/messages").respond(json=json.loads((DATA / "anthropic/message.json").read_text()))
    client = await app_client(config(upstream.base_url, tmp_path / "ledger.db"))
    first = await client.post(path, json=body, headers=headers)
    assert first.status_code == 200 and first.headers["x-switchyard-cache"] == "miss"
    assert named in first.headers["x-switchyard-dropped-fields"].split(", ")
    await drain()
    again = await client.post(path, json=body, headers=headers)
    assert again.headers["x-switchyard-cache"] == "hit"
    assert again.headers["x-switchyard-dropped-fields"] == first.headers["x-switchyard-dropped-fields"]
    streamed = await client.post(path, json={**body, "stream": True}, headers=headers)
    assert streamed.headers["x-switchyard-cache"] == "hit"
    assert streamed.headers["x-switchyard-dropped-fields"] == first.headers["x-switchyard-dropped-fields"]


async def test_a_cache_hit_on_a_surface_its_provider_serves_names_nothing(app_client, upstream, tmp_path):
    client = await app_client(config(upstream.base_url, tmp_path / "ledger.db"))
    body = {**chat_body("fast", "same wire"), "seed": 7}
    first = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    await drain()
    again = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert again.headers["x-switchyard-cache"] == "hit"
    assert "x-switchyard-dropped-fields" not in first.headers and "x-switchyard-dropped-fields" not in again.headers


async def test_every_surface_lands_in_the_ledger_priced_and_attributed(app_client, upstream, tmp_path, caplog):
    upstream.at("POST", "/v1/messages").respond(json=json.loads((DATA / "anthropic/message.json").read_text()))
    client = await app_client(config(upstream.base_url, tmp_path / "ledger.db"))
    caplog.set_level(logging.INFO, logger="switchyard.access")
    calls = [
        ("/v1/chat/completions", chat_body("fast", "a"), AUTH),
        ("/v1/responses", {**RESPONSES, "input": "b"}, AUTH),
        ("/v1/messages", {**MESSAGES, "messages": [{"role": "user", "content": "c"}]}, ANTHROPIC_AUTH),
        ("/v1/messages", {**MESSAGES, "model": "claude"}, ANTHROPIC_AUTH),
        ("/v1/responses", {**RESPONSES, "model": "claude"}, AUTH),
    ]
    for path, body, headers in calls:
        r = await client.post(path, json=body, headers=headers)
        assert r.status_code == 200, r.text
        assert float(r.headers["x-switchyard-cost-usd"]) > 0 and r.headers["x-switchyard-route"]
    await client.aclose()  # the ledger's queue is written out
    by_route = {}
    client2 = await app_client(config(upstream.base_url, tmp_path / "ledger.db"))
    for row in (await client2.get("/admin/usage?group_by=route", headers=ADMIN_AUTH)).json()["data"]:
        by_route[row["key"]] = row
    assert by_route["fast"]["requests"] == 3 and by_route["claude"]["requests"] == 2
    assert all(row["cost_usd"] > 0 for row in by_route.values())
    logged = [r.fields for r in caplog.records if r.name == "switchyard.access"]
    assert [(f["endpoint"], f["operation"]) for f in logged] == [
        ("chat/completions", "chat"), ("responses", "chat"), ("messages", "chat"), ("messages", "chat"),
        ("responses", "chat")]


async def test_rate_limits_refuse_in_the_surfaces_shape(app_client, upstream, tmp_path):
    client = await app_client(config(upstream.base_url, tmp_path / "ledger.db", team_extra=", limits: {rpm: 1}"))
    assert (await client.post("/v1/messages", json=MESSAGES, headers=ANTHROPIC_AUTH)).status_code == 200
    refused = await client.post("/v1/messages", json=MESSAGES, headers=ANTHROPIC_AUTH)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["type"] == "error" and refused.json()["error"]["type"] == "rate_limit_error"
    responses = await client.post("/v1/responses", json=RESPONSES, headers=AUTH)
    assert responses.status_code == 429 and responses.json()["error"]["type"] == "requests"


async def test_anthropic_overload_is_retried_after_its_retry_after_and_its_request_id_shown(app_client, upstream,
                                                                                             tmp_path):
    answers = iter([(529, (DATA / "anthropic/overloaded.json").read_bytes(), {"retry-after": "1"}),
                    (200, (DATA / "anthropic/message.json").read_bytes(), {"request-id": "req_ant_42"})])
    seen: list[float] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen.append(asyncio.get_running_loop().time())
        status, body, headers = next(answers)
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)

    upstream.at("POST", "/v1/messages").handler(handler)
    client = await app_client(config(upstream.base_url, tmp_path / "ledger.db"))
    r = await client.post("/v1/chat/completions", json=chat_body("claude", "retry"), headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-attempts"] == "2"
    assert seen[1] - seen[0] >= 1.0  # Anthropic's retry-after, honoured between the attempts
    assert r.headers["x-switchyard-upstream-request-id"] == "req_ant_42"


async def test_a_stream_whose_delta_says_input_tokens_null_keeps_the_start_count(app_client, upstream, tmp_path):
    stream = (DATA / "messages/anthropic_thinking_tool_stream.sse").read_bytes()
    upstream.at("POST", "/v1/messages").stream([stream], headers={"content-type": "text/event-stream"})
    client = await app_client(config(upstream.base_url, tmp_path / "ledger.db"))
    body = {**chat_body("claude", "tool please", stream=True), "stream_options": {"include_usage": True}}
    r = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    usage = [data["usage"] for _, data in events(r.text) if data.get("usage")]
    assert usage[-1]["prompt_tokens"] == 472 and usage[-1]["completion_tokens"] == 89
    upstream.at("POST", "/v1/messages").stream([stream], headers={"content-type": "text/event-stream"})
    native = await client.post("/v1/messages", json={**MESSAGES, "model": "claude", "stream": True},
                               headers=ANTHROPIC_AUTH)
    assert native.text.encode() == stream.replace(b"\r\n", b"\n") or native.content == stream  # byte for byte
    await client.aclose()
    client2 = await app_client(config(upstream.base_url, tmp_path / "ledger.db"))
    rows = (await client2.get("/admin/usage?group_by=route", headers=ADMIN_AUTH)).json()["data"]
    (claude,) = [row for row in rows if row["key"] == "claude"]
    assert claude["input_tokens"] == 2 * 472


async def test_chat_to_anthropic_says_what_it_dropped(app_client, upstream, tmp_path):
    route = upstream.at("POST", "/v1/messages").respond(json=json.loads((DATA / "anthropic/message.json").read_text()))
    client = await app_client(config(upstream.base_url, tmp_path / "ledger.db"))
    body = {**chat_body("claude", "json please"), "response_format": {"type": "json_object"}, "seed": 7,
            "parallel_tool_calls": False, "tools": [{"type": "function", "function": {"name": "f"}}]}
    r = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 200
    assert r.headers["x-switchyard-dropped-fields"] == "response_format, seed"
    sent = route.calls.last.request.json()
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}  # translated, not dropped
