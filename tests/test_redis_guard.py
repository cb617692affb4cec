"""One Redis guard for the cache, the rate limits and the spend counters: one state,
reported truthfully from startup, each change logged once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from proxy.redis_guard import DOWN, UNKNOWN, UP, RedisGuard, RedisGuards, redacted_url
from support import PrivateRedis, ServerProcess, chat_body, dead_port, eventually

KEY = "sk-guard-team"


def test_the_guard_skips_redis_after_failures_and_says_so_once(caplog):
    now = [0.0]
    guard = RedisGuard("redis://127.0.0.1:1/0", failures=3, cooldown_s=5, clock=lambda: now[0])
    guard.users |= {"cache", "rate limits"}
    assert guard.state == UNKNOWN and guard.available and not guard.up
    with caplog.at_level(logging.INFO, logger="switchyard.redis"):
        guard.ok()
        for _ in range(2):
            guard.failed(ConnectionError("refused"))
        assert guard.available and guard.state == UP  # two failures are not an outage yet
        guard.failed(ConnectionError("refused"))
        assert not guard.available and guard.state == DOWN
        now[0] = 4.9
        assert not guard.available
        now[0] = 5.0
        assert guard.available  # one try after the cool-down ...
        guard.failed(TimeoutError())
        assert not guard.available and guard.report()["retry_in_s"] == 5.0  # ... failed: skipped again
        now[0] = 10.0
        guard.ok()
        guard.ok()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is not answering" in m for m in messages) == 1
    assert sum("is answering again" in m for m in messages) == 1
    down = next(m for m in messages if "is not answering" in m)
    assert "local LRU" in down and "enforced in this process" in down
    assert guard.report()["errors"] == 4


def test_one_guard_per_url_for_every_user():
    guards = RedisGuards()
    a = guards.get("redis://h:6379/0")
    assert guards.get("redis://h:6379/0") is a and guards.get("redis://h:6379/1") is not a


def test_urls_are_reported_without_passwords():
    assert redacted_url("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"
    assert redacted_url("redis://user:hunter2@h/0") == "redis://user:***@h/0"
    assert redacted_url("redis://h:6379/0") == "redis://h:6379/0"


def config(url: str) -> str:
    return f"""
cache: {{backend: redis, url: "{url}", timeout_ms: 50, failures: 2, cooldown_s: 1}}
accounting: {{backend: redis, url: "{url}", timeout_ms: 50, sync_interval_s: 0.2}}
ledger: {{path: off}}
providers: {{mock: {{type: mock}}}}
teams: {{t: {{keys: ["{KEY}"], limits: {{rpm: 100000}}}}}}
routes: [{{name: fast, match: {{model: fast}}, to: mock/x}}]
"""


def chat(server: ServerProcess, i: int) -> int:
    return httpx.post(server.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json=chat_body(text=f"q{i}")).status_code


def redis_state(server: ServerProcess) -> dict:
    (state,) = httpx.get(server.base_url + "/readyz").json()["redis"].values()
    return state


@pytest.mark.integration
def test_readyz_tells_the_truth_from_startup_when_redis_is_absent(tmp_path: Path):
    path = tmp_path / "proxy.yaml"
    path.write_text(config(f"redis://127.0.0.1:{dead_port()}/0"))
    with ServerProcess(path) as server:
        ready = httpx.get(server.base_url + "/readyz").json()
        state = redis_state(server)
        assert state["state"] == DOWN, state  # probed at start, not assumed
        assert set(state["used_by"]) == {"cache", "stored responses", "rate limits", "spend counters"}
        assert ready["cache"]["redis_available"] is False
        # still ready (it serves without Redis), but says so; ?strict=true fails for checks that want to know
        assert ready["status"] == "degraded"
        assert httpx.get(server.base_url + "/readyz?strict=true").status_code == 503
        assert all(chat(server, i) == 200 for i in range(20))  # fails open
    log = server.log()
    assert sum("is not answering" in line for line in log.splitlines()) == 1, log


@pytest.mark.integration
def test_an_outage_and_a_recovery_are_each_logged_once(tmp_path: Path):
    redis_server = PrivateRedis().start()
    path = tmp_path / "proxy.yaml"
    path.write_text(config(redis_server.url))
    try:
        with ServerProcess(path) as server:
            assert redis_state(server)["state"] == UP
            assert chat(server, 0) == 200
            redis_server.kill()
            assert all(chat(server, i) == 200 for i in range(1, 30))
            assert redis_state(server)["state"] == DOWN
            redis_server = PrivateRedis(port=redis_server.port).start()
            # the guard looks again once its cool-down is over, when a request uses Redis
            eventually(lambda: chat(server, 99) and redis_state(server)["state"] == UP, timeout=10, interval=0.1,
                       what="Redis to be seen answering again")
            assert redis_state(server)["state"] == UP
        lines = [json.loads(line).get("message", "") for line in server.log().splitlines() if line.startswith("{")]
        assert sum("is not answering" in m for m in lines) == 1, lines
        assert sum("is answering again" in m for m in lines) == 1, lines
    finally:
        redis_server.kill()


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["cache", "accounting"])
def test_a_redis_of_one_section_only_is_guarded_and_reported(tmp_path: Path, backend):
    url = f"redis://127.0.0.1:{dead_port()}/0"
    text = config(url)
    if backend == "cache":
        text = text.replace(f'accounting: {{backend: redis, url: "{url}", timeout_ms: 50, sync_interval_s: 0.2}}', "")
    else:
        text = text.replace(f'cache: {{backend: redis, url: "{url}", timeout_ms: 50, failures: 2, cooldown_s: 1}}', "")
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    with ServerProcess(path) as server:
        state = redis_state(server)
        assert state["state"] == DOWN
        assert state["used_by"] == (["cache", "stored responses"] if backend == "cache"
                                    else ["rate limits", "spend counters"])


async def test_a_sync_with_nothing_to_say_does_not_pass_for_redis_answering():
    """An empty pipeline 'succeeds' without a connection: the spend counters' sync with
    nothing to push or read must not tell the guard that a Redis that is down is back."""
    from proxy.accounting.spend import RedisSpendCounters

    now = [0.0]
    url = f"redis://127.0.0.1:{dead_port()}/0"
    guard = RedisGuard(url, failures=1, cooldown_s=1.0, clock=lambda: now[0])
    counters = RedisSpendCounters(url, timeout_s=0.05, sync_interval_s=60, guard=guard)
    try:
        guard.failed(ConnectionError("refused"))
        assert guard.state == DOWN
        now[0] += 2  # past the cooldown: the next call may try Redis again
        assert await counters.sync() is True  # nothing to do
        assert guard.state == DOWN
        counters.add("t", ["2026-11-30"], 0.5)  # something to push: Redis is asked, and fails
        assert await counters.sync() is False
        assert guard.state == DOWN
    finally:
        await counters.close()
