"""Hostile and unlucky traffic against a served gateway: raw sockets, a misbehaving
upstream, clients that leave, names that do not belong in a header, invented models,
a full connection pool, refused provider keys, half-written config edits.

Each test asserts three things: what the client sees (a clear error in its API's shape),
what the upstream saw (nothing it should not have), and that the gateway keeps serving.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from support import FakeUpstream, ServerProcess, chat_body, completion, eventually

pytestmark = pytest.mark.integration  # a served gateway, in a process of its own

KEY = "sk-hostile-team"
ADMIN = "sk-hostile-admin"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


def config(upstream: str, *, extra: str = "", up: str = "", routes: str = "") -> str:
    return f"""
server:
  admin_keys: ["{ADMIN}"]
  max_body_mb: 1
  max_header_kb: 16
  header_timeout_s: 1
  keepalive_timeout_s: 1
ledger: {{path: ledger.db, flush_interval_s: 0.05}}
resilience: {{retries: 2, backoff_ms: 50, timeout_s: 20}}
providers:
  mock: {{type: mock}}
  up: {{type: openai, base_url: "{upstream}", api_key: sk-provider-secret-0123456789abcdef, timeout_s: 10{up}}}
  spare: {{type: openai, base_url: "{upstream}", api_key: sk-provider-secret-0123456789abcdef, timeout_s: 10}}
teams:
  t: {{keys: ["{KEY}"]}}
routes:
  - {{name: fast, match: {{model: fast}}, to: mock/gpt-4o-mini}}
  - {{name: slow, match: {{model: slow}}, to: up/slow, fallbacks: [spare/slow-spare]}}
  - {{name: real, match: {{model: real}}, to: up/real}}
{routes}
  - {{name: passthrough, match: {{model: "*/*"}}, to: "{{model}}"}}
{extra}
"""


CHAT = chat_body()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start_threaded()
    yield up
    up.stop_threaded()


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("hostile") / "proxy.yaml"
    path.write_text(config(upstream.base_url))
    with ServerProcess(path) as proc:
        yield proc


def still_serving(server: ServerProcess) -> None:
    r = httpx.post(server.base_url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text


def raw(server: ServerProcess, data: bytes, *, timeout: float = 10) -> bytes:
    """Send `data` on a fresh connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read everything: the answer is what counts
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def post_head(path: str, length: int | None, extra: bytes = b"") -> bytes:
    cl = b"" if length is None else b"content-length: %d\r\n" % length
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + KEY.encode()
            + b"\r\ncontent-type: application/json\r\n" + cl + extra + b"\r\n")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- 1. every body is bounded


@pytest.mark.parametrize("path", ["/v1/feedback", "/v1/chat/completions", "/v1/embeddings"])
def test_a_declared_huge_body_is_refused_before_it_is_read(server, path):
    answer = raw(server, post_head(path, 300 * 1024 * 1024) + b"{" + b" " * 65536)
    status, body = status_and_json(answer)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    still_serving(server)


@pytest.mark.parametrize("path", ["/v1/feedback", "/v1/chat/completions"])
def test_an_undeclared_huge_body_is_cut_off_while_it_streams_in(server, path):
    """Chunked, no length given: refused once the limit passes, not after buffering it all."""
    assert server.proc is not None
    before = rss_kib(server.proc.pid)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post_head(path, None, b"transfer-encoding: chunked\r\n"))
        piece = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        sent = 0
        try:
            for _ in range(300 * 16):  # up to 300 MB: it must stop us long before
                sock.sendall(piece)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)
    status, body = status_and_json(answer)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert sent < 64 * 1024 * 1024
    assert rss_kib(server.proc.pid) - before < 64 * 1024  # nowhere near the 300 MB offered
    still_serving(server)


def test_a_feedback_comment_of_300_mb_does_not_reach_memory(server):
    big = {"request_id": "req-x", "score": 1, "comment": "x" * (2 * 1024 * 1024)}
    r = httpx.post(server.base_url + "/v1/feedback", json=big, headers=AUTH)
    assert r.status_code == 413 and "KiB this endpoint accepts" in r.json()["error"]["message"]


# ---------------------------------------------------------------- 2. request heads bounded in size and time


def test_a_huge_header_gets_431(server):
    answer = raw(server, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (1 << 20) + b"\r\n\r\n")
    status, body = status_and_json(answer)
    assert status == 431 and body["error"]["code"] == "request_header_fields_too_large"
    assert "16 KiB" in body["error"]["message"] and "max_header_kb" in body["error"]["message"]
    still_serving(server)


def test_many_small_headers_add_up_to_431(server):
    headers = b"".join(b"x-h-%d: %s\r\n" % (i, b"v" * 60) for i in range(400))  # ~28 KiB in 68-byte lines
    answer = raw(server, b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
    assert status_and_json(answer)[0] == 431


def test_a_huge_header_on_the_messages_api_is_refused_in_its_shape(server):
    answer = raw(server, b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 40000 + b"\r\n\r\n")
    status, body = status_and_json(answer)
    assert status == 431 and body["type"] == "error" and body["error"]["type"] == "request_too_large"


def test_a_trickled_head_gets_408(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        answer = b""
        try:
            for _ in range(20):  # one header line every 0.3 s: never done
                time.sleep(0.3)
                sock.sendall(b"x-slow: 1\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)
        took = time.monotonic() - started
    status, body = status_and_json(answer)
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert took < 5  # header_timeout_s is 1: not the 6 s the trickle would take
    still_serving(server)


def test_a_connection_that_says_nothing_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, without a word
        assert time.monotonic() - started < 5  # keepalive_timeout_s is 1


def test_an_idle_keep_alive_connection_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        started = time.monotonic()
        answer = read_all(sock)  # the answer, then the close when the connection has idled
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"}")
        assert time.monotonic() - started < 5


# ---------------------------------------------------------------- 3. a client that leaves cancels its work


def hanging(seen: list[str], gone: threading.Event):
    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        # watch the connection: aiohttp does not cancel handlers by itself
        await eventually(lambda: request.transport is None or request.transport.is_closing(), timeout=30,
                         interval=0.05, what="the gateway to drop the upstream call")
        gone.set()
        return web.json_response(completion())

    return handler


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_cancels_the_upstream_call_at_once(server, upstream, stream):
    seen: list[str] = []
    gone = threading.Event()
    upstream.post("/chat/completions").handler(hanging(seen, gone))
    request_id = f"req-leaves-{int(stream)}"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/v1/chat/completions", timeout=0.5,
                   json={**CHAT, "model": "slow", "stream": stream}, headers={**AUTH, "x-request-id": request_id})
    assert gone.wait(3), "the upstream kept working for a client that was gone"
    time.sleep(0.3)  # a retry or a fallback would have arrived by now
    assert len(seen) == 1, f"retried or fell back for nobody: {seen}"
    row = ledger_row(server, request_id)
    assert row["status"] == 499 and row["error_kind"] == "client_disconnected"
    still_serving(server)


def ledger_row(server: ServerProcess, request_id: str) -> dict:
    db = server.config.parent / "ledger.db"

    def row() -> dict | None:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            found = conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        return dict(found) if found is not None else None

    return eventually(row, interval=0.05, what=f"a ledger row for {request_id}")


# ---------------------------------------------------------------- 4. only what should reach a provider


def test_credentials_and_hop_by_hop_headers_never_reach_the_provider(server, upstream):
    route = upstream.post("/chat/completions").respond(json=completion())
    headers = {
        **AUTH, "x-api-key": KEY, "api-key": KEY, "cookie": f"s={KEY}", "proxy-authorization": f"Basic {KEY}",
        "openai-organization": "org-caller", "te": "trailers", "x-custom": "nope", "user-agent": "sdk/1.0",
        "x-stainless-lang": "python", "openai-beta": "assistants=v2", "idempotency-key": "k-1",
    }
    r = httpx.post(server.base_url + "/v1/chat/completions", json={**CHAT, "model": "real"}, headers=headers)
    assert r.status_code == 200
    sent = route.calls.last.request.headers
    assert KEY not in repr(list(sent.items()))
    for name in ("x-api-key", "api-key", "cookie", "proxy-authorization", "te", "x-custom"):
        assert name not in sent, name
    assert sent["openai-organization"] != "org-caller" if "openai-organization" in sent else True
    assert sent["user-agent"] == "sdk/1.0" and sent["x-stainless-lang"] == "python"
    assert sent["openai-beta"] == "assistants=v2" and sent["idempotency-key"] == "k-1"
    assert sent["authorization"] == "Bearer sk-provider-secret-0123456789abcdef"


def test_expect_100_continue_gets_the_answer_not_an_empty_100(server, upstream):
    """curl adds `Expect: 100-continue` to bodies over 1 MB by itself."""
    upstream.post("/chat/completions").respond(json=completion("the paid answer"))
    body = json.dumps({**CHAT, "model": "real", "messages": [{"role": "user", "content": "x" * 2000}]}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post_head("/v1/chat/completions", len(body), b"expect: 100-continue\r\nconnection: close\r\n"))
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        answer = interim + read_all(sock)
    final = answer[answer.index(b"HTTP/1.1 200"):]
    assert b"the paid answer" in final
    assert "expect" not in upstream.post("/chat/completions").calls.last.request.headers


def test_a_provider_may_forward_named_headers_but_never_credentials(tmp_path, upstream):
    from proxy.config import ConfigError, load_text

    route = upstream.post("/chat/completions").respond(json=completion())
    path = tmp_path / "proxy.yaml"
    path.write_text(config(upstream.base_url, up=", forward_headers: [x-title, HTTP-Referer]"))
    with ServerProcess(path) as proc:
        r = httpx.post(proc.base_url + "/v1/chat/completions", json={**CHAT, "model": "real"},
                       headers={**AUTH, "x-title": "my app", "http-referer": "https://app.example", "x-other": "no"})
        assert r.status_code == 200
    sent = route.calls.last.request.headers
    assert sent["x-title"] == "my app" and sent["http-referer"] == "https://app.example" and "x-other" not in sent
    for bad in ("x-api-key", "Cookie", "connection", "expect"):
        with pytest.raises(ConfigError) as info:
            load_text(config(upstream.base_url, up=f", forward_headers: [{bad}]"), env={})
        (where, reason), = info.value.problems
        assert where == "providers.up" and "forward_headers" in reason


# ---------------------------------------------------------------- 5. names from clients are safe anywhere


@pytest.mark.parametrize(
    ("field", "value"),
    [("model", "fast\r\nx-injected: 1"), ("model", "fa\u0001st"), ("model", "m" * 300), ("model", "a\u0085b"),
     ("user", "alice\nbob"), ("user", "u" * 257)],
)
def test_a_name_with_control_characters_or_too_long_is_refused(server, upstream, field, value):
    route = upstream.post("/chat/completions").respond(json=completion())
    before = route.call_count
    r = httpx.post(server.base_url + "/v1/chat/completions", json={**CHAT, field: value}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == field
    assert len(r.json()["error"]["message"]) < 400  # the name is not echoed whole
    assert route.call_count == before  # nothing was called, nothing paid
    still_serving(server)


@pytest.mark.parametrize("value", [b"a\x01b", b"a\x7fb", b"u" * 300])
def test_a_user_header_with_a_control_character_or_too_long_is_refused(server, value):
    body = json.dumps(CHAT).encode()
    answer = raw(server, post_head("/v1/chat/completions", len(body),
                                   b"x-switchyard-user: " + value + b"\r\nconnection: close\r\n") + body)
    status, error = status_and_json(answer)  # JSON even when the HTTP parser itself refuses it
    assert status == 400 and error["error"]["type"] == "invalid_request_error"
    still_serving(server)


def test_a_request_the_http_parser_refuses_gets_a_json_error(server):
    status, error = status_and_json(raw(server, b"GARBAGE / HTTP/9.9\r\n\r\n"))
    assert status == 400 and error["error"]["code"] == "invalid_http"


def test_response_headers_are_always_valid(server, upstream):
    """Whatever a templated route passes through, the answer arrives (no empty reply)."""
    upstream.post("/chat/completions").respond(json=completion(), headers={"x-request-id": "up-" + "i" * 2000})
    for model in ("up/ümlaut-modèl", "up/模型", "up/emoji-🙂"):
        r = httpx.post(server.base_url + "/v1/chat/completions", json={**CHAT, "model": model}, headers=AUTH)
        assert r.status_code == 200
        assert r.headers["x-switchyard-model"]  # sent, Latin-1 encodable
        assert len(r.headers["x-switchyard-upstream-request-id"]) <= 512


@pytest.mark.parametrize(
    ("text", "sent"),
    [("plain", b"plain"), ("a\r\nx-evil: 1", b"ax-evil: 1"), ("tab\tok", b"tab\tok"), ("nul\x00", b"nul"),
     ("modèl", b"mod\xe8l"), ("模型", b"??"), ("x" * 600, b"x" * 512)],
)
def test_header_values_are_made_safe(text, sent):
    from proxy.relay import header_value

    assert header_value(text) == sent


@pytest.mark.parametrize(
    ("names", "sent"),
    [(["seed"], b"seed"), (["response_format", "seed"], b"response_format, seed"),
     (["a\r\nx-evil: 1", "b\x01c", "ok"], b"ax-evil: 1, bc, ok"), (["\x00", "ok"], b"ok"),
     (["modèl", "模型"], b"mod\xe8l, ??"), (["x" * 600], b"x" * 512),
     ([f"field_{n:03d}" for n in range(100)], b", ".join(b"field_%03d" % n for n in range(46)) + b", +54 more")],
)
def test_a_header_listing_names_is_made_safe_and_bounded(names, sent):
    from proxy.relay import header_list

    assert header_list(names) == sent


def test_field_names_a_client_made_up_are_named_safely_in_the_answer(server):
    """A Responses request's unknown fields are dropped on the way to a chat upstream and
    named in a header: control characters in those names, or a thousand of them, must not
    cost the client its answer (the head would be refused, the answer lost after the
    upstream was paid)."""
    made_up = {"a\r\nx-evil: 1": 1, "b\u0001c": 2, **{f"field_{n}": n + 1 for n in range(1000)}}
    for stream in (False, True):
        r = httpx.post(server.base_url + "/v1/responses", headers=AUTH, timeout=10,
                       json={"model": "fast", "input": "hi", "stream": stream, **made_up})
        assert r.status_code == 200, r.text
        dropped = r.headers["x-switchyard-dropped-fields"]
        assert dropped.startswith("ax-evil: 1, bc, field_0, field_1,") and dropped.endswith(" more")
        assert len(dropped) <= 512 + len(", +1000 more")
        assert "x-evil" not in r.headers
        assert ("response.completed" in r.text) if stream else (r.json()["status"] == "completed")
    still_serving(server)


# ---------------------------------------------------------------- 6. state clients can name is bounded


def test_invented_model_names_leave_no_unbounded_state(server, upstream):
    upstream.post("/chat/completions").respond(json=completion())
    for i in range(600):
        r = httpx.post(server.base_url + "/v1/chat/completions",
                       json={**CHAT, "model": f"up/invented-{i}-" + "z" * 200}, headers=AUTH)
        assert r.status_code == 200
    report = httpx.get(server.base_url + "/admin/providers", headers=ADMIN_AUTH)
    assert len(report.content) < 200_000 and len(report.json()["targets"]) <= 300
    warnings = [line for line in server.log().splitlines() if "no price for up/invented" in line]
    assert len(warnings) <= 2  # one throttled line for all client-named targets
    still_serving(server)


# ---------------------------------------------------------------- 7. the gateway's own saturation


def test_a_full_connection_pool_is_gateway_busy_not_a_provider_failure(tmp_path, upstream):
    release = threading.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await eventually(release.is_set, timeout=5, interval=0.1, what="the test to release the upstream")
        return web.json_response(completion())

    upstream.post("/chat/completions").handler(slow)
    path = tmp_path / "proxy.yaml"
    path.write_text(config(upstream.base_url, up=", max_connections: 2, pool_timeout_s: 0.3")
                    .replace("fallbacks: [spare/slow-spare]", "fallbacks: []"))
    with ServerProcess(path) as proc:
        def call(_: int) -> httpx.Response:
            return httpx.post(proc.base_url + "/v1/chat/completions", json={**CHAT, "model": "slow"}, headers=AUTH,
                              timeout=20)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(call, i) for i in range(10)]
            # two requests hold the pool's two connections; the other eight give up waiting for one
            eventually(lambda: sum(f.done() for f in futures) >= 8, timeout=10, interval=0.05,
                       what="the requests that found the pool full to be answered")
            release.set()
            results = [f.result() for f in futures]
        busy = [r for r in results if r.status_code == 503]
        assert busy and all(r.json()["error"]["code"] == "gateway_busy" and r.headers["retry-after"] for r in busy)
        assert sum(r.status_code == 200 for r in results) >= 2
        targets = httpx.get(proc.base_url + "/admin/providers", headers=ADMIN_AUTH).json()["targets"]
        assert all(t["state"] == "closed" for t in targets), targets  # the provider did nothing wrong
        r = call(0)
        assert r.status_code == 200


# ---------------------------------------------------------------- 8/9. answers that break the contract; refused keys


def test_a_captive_portal_page_is_never_relayed_as_an_answer(server, upstream):
    upstream.post("/chat/completions").respond(200, content=b"<html>Log in to the Wi-Fi</html>",
                                               headers={"content-type": "text/html"})
    for stream in (False, True):
        r = httpx.post(server.base_url + "/v1/chat/completions",
                       json={**CHAT, "model": f"up/portal-{stream}", "stream": stream}, headers=AUTH)
        assert r.status_code == 502 and r.json()["error"]["code"] == "invalid_response"
        assert "Wi-Fi" not in r.text


def test_token_counts_no_integer_column_holds_do_not_stop_the_ledger(server, upstream):
    """A row the database refuses would fail its whole batch, retried for ever, and every
    row queued behind it: counts past 2**53 are not counts."""
    # (orjson reads integers up to 2**64 - 1 as integers, larger ones as floats)
    huge = json.dumps(completion(usage={"prompt_tokens": 2**63, "completion_tokens": 2**64 - 1, "total_tokens": 1}))
    upstream.post("/chat/completions").respond(content=huge.encode(), headers={"content-type": "application/json"})
    r = httpx.post(server.base_url + "/v1/chat/completions", json={**CHAT, "model": "real"},
                   headers={**AUTH, "x-request-id": "req-huge-usage"})
    assert r.status_code == 200
    upstream.post("/chat/completions").respond(json=completion())
    r = httpx.post(server.base_url + "/v1/chat/completions", json={**CHAT, "model": "real"},
                   headers={**AUTH, "x-request-id": "req-after-huge-usage"})
    assert r.status_code == 200
    row = ledger_row(server, "req-huge-usage")
    assert (row["input_tokens"], row["output_tokens"]) == (0, 0)
    row = ledger_row(server, "req-after-huge-usage")
    assert (row["input_tokens"], row["output_tokens"]) == (5, 3)


def test_a_refused_provider_key_is_a_502_without_the_providers_words(server, upstream):
    upstream.post("/chat/completions").respond(401, json={"error": {
        "message": "Incorrect API key provided: sk-provider-secret-0123456789abcdef", "type": "invalid_request_error",
        "code": "invalid_api_key"}})
    r = httpx.post(server.base_url + "/v1/chat/completions", json={**CHAT, "model": "up/refused"}, headers=AUTH)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_auth_error"
    assert "provider up" in r.json()["error"]["message"] and "sk-provider" not in r.text
    eventually(lambda: "refused the gateway's credentials" in server.log(), interval=0.05,
               what="the refusal in the log")
    assert "Incorrect API key provided" in server.log()
    assert "sk-provider-secret-0123456789abcdef" not in server.log()


# ---------------------------------------------------------------- 10. a reload never serves a half-written file


def test_a_file_written_in_two_pieces_is_never_served_half_way(tmp_path, upstream):
    """The part before `routes:` lands first, the rest 0.4 s later: not one request may see
    a policy without routes."""
    text = config(upstream.base_url)
    head, tail = text.split("routes:", 1)
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    with ServerProcess(path) as proc:
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=proc.base_url, headers=AUTH, timeout=10) as client:
                while not stop.is_set():
                    statuses.append(client.post("/v1/chat/completions", json=CHAT).status_code)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for _ in range(3):
                with open(path, "r+") as fh:  # in place, as an editor without atomic saves does
                    fh.seek(0)
                    fh.truncate()
                    fh.write(head)
                    fh.flush()
                    time.sleep(0.4)
                    fh.write("routes:" + tail + f"\n# edit {_}\n")
                time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        assert httpx.get(proc.base_url + "/admin/config", headers=ADMIN_AUTH).json()["last_error"] is None


def test_dropping_every_route_needs_force(tmp_path, upstream):
    text = config(upstream.base_url)
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    with ServerProcess(path) as proc:
        path.write_text(text.split("routes:", 1)[0])  # valid YAML, no routes: most likely a cut write
        report = eventually(
            lambda: (r := httpx.get(proc.base_url + "/admin/config", headers=ADMIN_AUTH).json())["last_error"] and r,
            interval=0.1, what="the cut write to be rejected")
        (problem,) = report["last_error"]["problems"]
        assert problem["path"] == "routes" and "force=true" in problem["reason"]
        still_serving(proc)
        forced = httpx.post(proc.base_url + "/admin/reload?force=true", headers=ADMIN_AUTH)
        assert forced.status_code == 200 and forced.json()["result"] == "ok"
        r = httpx.post(proc.base_url + "/v1/chat/completions", json=CHAT, headers=AUTH)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "would drop all" in proc.log()


# ---------------------------------------------------------------- 13. shutdown is bounded


def test_shutdown_with_an_unreachable_trace_collector_is_quick(tmp_path, upstream):
    from support import UnansweredPort

    with UnansweredPort() as port:
        path = tmp_path / "proxy.yaml"
        path.write_text(config(upstream.base_url, extra=f'telemetry: {{otlp_endpoint: "http://127.0.0.1:{port}"}}'))
        proc = ServerProcess(path).start()
        for _ in range(20):
            still_serving(proc)
        started = time.monotonic()
        proc.stop()
        took = time.monotonic() - started
    assert took < 9, f"SIGTERM took {took:.1f} s"
    assert "Application shutdown complete" in proc.log()  # a clean shutdown, not a kill
