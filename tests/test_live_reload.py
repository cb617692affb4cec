"""Live reload of a served proxy under load: in-place writes, rename-replace, a Kubernetes
ConfigMap symlink swap, invalid files, SIGHUP and the admin endpoint, in-flight requests."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from support import ServerProcess

KEY = "sk-reload-team-1"
ADMIN = "admin-reload-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}


def policy(version: str, *, watch: bool = True, latency_ms: int = 0, extra_route: str = "") -> str:
    return f"""
server: {{admin_keys: ["{ADMIN}"], watch: {str(watch).lower()}}}
ledger: {{path: off}}
providers:
  mock: {{type: mock, latency_ms: {latency_ms}}}
teams:
  search: {{keys: ["{KEY}"]}}
routes:
  - {{name: fast, match: {{model: fast}}, to: mock/model-{version}}}
  - {{name: slow, match: {{model: slow}}, to: mock/slow-{version}}}
{extra_route}
"""


class Load:
    """Threads sending requests until stopped, recording every failure and each answer's model."""

    def __init__(self, base_url: str, threads: int = 4) -> None:
        self.base_url = base_url
        self.failures: list[str] = []
        self.models: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    r = client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    self.models.append((time.monotonic(), r.headers["x-switchyard-model"]))

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def wait_for(self, model: str, since: float, timeout: float = 2.0) -> float:
        """Seconds from `since` until every answer after some point names `model`."""
        deadline = since + timeout + 1.0
        while time.monotonic() < deadline:
            recent = [(t, m) for t, m in self.models if t > since]
            firsts = [t for t, m in recent if m == model]
            if firsts:
                after = [m for t, m in recent if t > firsts[0] + 0.3]
                if after and all(m == model for m in after):
                    return firsts[0] - since
            time.sleep(0.02)
        raise AssertionError(f"{model} was not served within {timeout} s")


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[ServerProcess, Path]]:
    path = tmp_path / "proxy.yaml"
    path.write_text(policy("v1"))
    with ServerProcess(path) as server:
        yield server, path


def write_in_place(path: Path, text: str) -> None:
    with open(path, "w") as fh:  # truncate and write, as `echo >`, sed -i on some systems, and most tools
        fh.write(text)


def replace_by_rename(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{time.monotonic_ns()}")
    tmp.write_text(text)
    os.replace(tmp, path)  # editors and atomic writers


@pytest.mark.parametrize("write", [write_in_place, replace_by_rename], ids=["in-place", "rename"])
def test_edits_apply_within_two_seconds_under_load_with_no_failures(served, write: Callable[[Path, str], None]):
    server, path = served
    with Load(server.base_url) as load:
        time.sleep(0.3)
        for version in ("v2", "v3", "v4"):
            since = time.monotonic()
            write(path, policy(version))
            assert load.wait_for(f"model-{version}", since) < 2.0
    assert load.failures == []
    assert len(load.models) > 50
    assert "config generation 4 loaded" in server.log()


def test_configmap_symlink_swap(tmp_path):
    # the layout kubelet makes: proxy.yaml -> ..data/proxy.yaml, ..data -> ..<timestamp>
    def publish(version: str) -> None:
        target = tmp_path / f"..2026_11_24_{version}"
        target.mkdir()
        (target / "proxy.yaml").write_text(policy(version))
        link = tmp_path / f"..data_tmp_{version}"
        link.symlink_to(target.name)
        os.replace(link, tmp_path / "..data")  # the atomic swap

    publish("v1")
    (tmp_path / "proxy.yaml").symlink_to("..data/proxy.yaml")
    with ServerProcess(tmp_path / "proxy.yaml", log=tmp_path / "server.log") as server, Load(server.base_url) as load:
        time.sleep(0.3)
        since = time.monotonic()
        publish("v2")
        assert load.wait_for("model-v2", since) < 2.0
    assert load.failures == []


@pytest.mark.parametrize(
    "text, where, reason",
    [
        ("routes: [\n  - {name: x", "line 2, column 3", "invalid YAML"),
        (policy("v9").replace("  mock: {type: mock, latency_ms: 0}", "  mock: {type: mock, color: blue}"),
         "providers.mock.color", "unknown key"),
        (policy("v9").replace("to: mock/model-v9", "to: nowhere/model-v9"), "routes[0].to", "unknown provider"),
        (policy("v9").replace("{name: slow,", "{name: fast,"), "routes[1].name", "duplicate"),
    ],
    ids=["bad-yaml", "unknown-key", "unknown-provider", "duplicate-route"],
)
def test_invalid_file_is_rejected_and_the_old_policy_keeps_serving(served, text, where, reason):
    server, path = served
    with Load(server.base_url, threads=2) as load:
        time.sleep(0.2)
        write_in_place(path, text)
        deadline = time.monotonic() + 3
        report = {}
        while time.monotonic() < deadline:
            report = httpx.get(server.base_url + "/admin/config", headers=ADMIN_AUTH).json()
            if report["last_error"] is not None:
                break
            time.sleep(0.05)
        time.sleep(0.3)
    assert load.failures == []
    assert {m for _, m in load.models} == {"model-v1"}
    problems = report["last_error"]["problems"]
    assert any(p["path"] == where and reason.lower() in p["reason"].lower() for p in problems), problems
    assert report["generation"] == 1
    assert "config rejected" in server.log() and reason.lower() in server.log().lower()
    write_in_place(path, policy("v5"))  # fixing the file applies it
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        r = httpx.post(server.base_url + "/v1/chat/completions", json=CHAT, headers=AUTH)
        if r.headers["x-switchyard-model"] == "model-v5":
            break
        time.sleep(0.05)
    assert r.headers["x-switchyard-model"] == "model-v5"
    assert httpx.get(server.base_url + "/admin/config", headers=ADMIN_AUTH).json()["last_error"] is None


def test_sighup_and_admin_reload_without_watching(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(policy("v1", watch=False))
    with ServerProcess(path) as server:
        def model() -> str:
            return httpx.post(server.base_url + "/v1/chat/completions", json=CHAT, headers=AUTH).headers[
                "x-switchyard-model"]

        path.write_text(policy("v2", watch=False))
        time.sleep(0.6)
        assert model() == "model-v1"  # not watching: nothing happens by itself
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 2
        while model() != "model-v2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert model() == "model-v2"

        path.write_text(policy("v3", watch=False))
        r = httpx.post(server.base_url + "/admin/reload", headers=ADMIN_AUTH)
        assert r.status_code == 200 and r.json()["result"] == "ok" and r.json()["generation"] == 3
        assert model() == "model-v3"

        path.write_text("providers: [")
        r = httpx.post(server.base_url + "/admin/reload", headers=ADMIN_AUTH)
        assert r.status_code == 422 and r.json()["result"] == "error"
        assert r.json()["last_error"]["problems"]
        assert model() == "model-v3"
        assert httpx.post(server.base_url + "/admin/reload").status_code == 401


def test_in_flight_requests_finish_on_the_snapshot_they_started_with(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(policy("v1", latency_ms=1500))
    with ServerProcess(path) as server, ThreadPoolExecutor(4) as pool:
        slow = [pool.submit(httpx.post, server.base_url + "/v1/chat/completions",
                            json={**CHAT, "model": "slow"}, headers=AUTH, timeout=10) for _ in range(3)]
        time.sleep(0.4)  # they are waiting inside the mock now
        path.write_text(policy("v2", latency_ms=0))
        deadline = time.monotonic() + 2
        fresh = None
        while time.monotonic() < deadline:
            fresh = httpx.post(server.base_url + "/v1/chat/completions", json=CHAT, headers=AUTH)
            if fresh.headers["x-switchyard-model"] == "model-v2":
                break
            time.sleep(0.05)
        assert fresh is not None and fresh.headers["x-switchyard-model"] == "model-v2"
        for future in slow:
            answer = future.result()
            assert answer.status_code == 200
            assert answer.headers["x-switchyard-model"] == "slow-v1"
            assert answer.json()["model"] == "slow-v1"


def test_reverting_a_bad_edit_clears_the_reported_failure(tmp_path):
    from proxy.snapshot import SnapshotHolder

    path = tmp_path / "proxy.yaml"
    path.write_text(policy("v1"))
    holder = SnapshotHolder(str(path))
    assert holder.load() == "ok"
    path.write_text("routes: [")
    assert holder.load() == "error" and holder.last_failure is not None
    path.write_text(policy("v1"))
    assert holder.load() == "unchanged" and holder.last_failure is None
