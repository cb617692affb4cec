"""Live reload of proxy.yaml on a served proxy (a real `python -m proxy serve` process).

The requirement: an edit applies within 2 s, without restart and with no failed or
dropped request, whether the file is written in place, replaced by rename, or swapped
the way a Kubernetes ConfigMap is (a `..data` symlink); in-flight requests finish on the
snapshot they started with; an invalid file is rejected (path and reason in the log and
on GET /admin/config) while the previous policy keeps serving; SIGHUP and
POST /admin/reload reload too.

Which policy answered is read from `x-switchyard-model` / `x-switchyard-route`: every
policy version `N` routes `fast` to `mock/model-vN` through a route named `fast-vN`.
Nothing here sleeps and hopes: every wait polls for a condition with a deadline, and the
only fixed waits are the bounded ones that prove something did *not* happen.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from aiohttp import web

from support import FakeUpstream, ServerProcess, chat_body, chunk_events, completion, eventually

KEY = "sk-reload-test-team"
ADMIN = "sk-reload-test-admin"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
SWITCH_S = 2.0  # the requirement: a new policy applies within 2 seconds


def policy(
    v: int,
    *,
    watch: bool = True,
    upstream: str | None = None,
    slow_latency_ms: int = 1500,
    stream_chunk_ms: int = 100,
    up_timeout_s: float = 30,
    retries: int = 0,
) -> str:
    """Policy version `v`; every target and route name carries the version."""
    up_provider = (
        f'  up: {{type: openai, base_url: "{upstream}", headers: {{x-policy: "v{v}"}}, timeout_s: {up_timeout_s}}}\n'
        if upstream else ""
    )
    up_route = f"  - {{name: up-v{v}, match: {{model: up}}, to: up/up-v{v}}}\n" if upstream else ""
    return (
        f'server: {{admin_keys: ["{ADMIN}"], watch: {str(watch).lower()}}}\n'
        "cache: {backend: off}\n"
        "ledger: {path: off}\n"
        "telemetry: {access_log: false}\n"
        f"resilience: {{retries: {retries}, backoff_ms: 50}}\n"
        "providers:\n"
        "  mock: {type: mock}\n"
        f"  slowmock: {{type: mock, latency_ms: {slow_latency_ms}}}\n"
        f"  streammock: {{type: mock, chunk_interval_ms: {stream_chunk_ms}}}\n"
        f"{up_provider}"
        "teams:\n"
        f'  search: {{keys: ["{KEY}"]}}\n'
        "routes:\n"
        f"  - {{name: fast-v{v}, match: {{model: fast}}, to: mock/model-v{v}}}\n"
        f"  - {{name: slow-v{v}, match: {{model: slow}}, to: slowmock/slow-v{v}}}\n"
        f"  - {{name: stream-v{v}, match: {{model: streamy}}, to: streammock/stream-v{v}}}\n"
        f"{up_route}"
    )


def version_of(model: str) -> int:
    return int(model.rsplit("-v", 1)[1])


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ ways to write the file


def write_in_place(path: Path, text: str) -> None:
    with open(path, "w") as fh:  # truncate, then write: `cat > proxy.yaml`, most tools
        fh.write(text)


def replace_by_rename(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{time.monotonic_ns()}.tmp")  # same directory, same filesystem
    tmp.write_text(text)
    os.replace(tmp, path)


def rename_away_then_write(path: Path, text: str) -> None:
    # vim (backupcopy=no) and others: move the old file aside, write a new one, drop the backup
    backup = path.with_name(path.name + "~")
    os.replace(path, backup)
    path.write_text(text)
    backup.unlink()


def truncate_pause_write(path: Path, text: str) -> None:
    # a slow in-place writer (`: > proxy.yaml; cat new >> proxy.yaml`): the file is empty
    # for a while, long enough for the watcher to read it
    with open(path, "w") as fh:
        fh.flush()
        os.fsync(fh.fileno())
        time.sleep(0.4)
        fh.write(text)


# ------------------------------------------------------------------ load


@dataclass(frozen=True)
class Answer:
    start: float
    end: float
    model: str  # x-switchyard-model
    route: str  # x-switchyard-route


class Load:
    """Threads sending chat requests back to back until stopped. Every request is either
    an `Answer` (200, with the policy that answered) or a failure: nothing is dropped."""

    def __init__(self, base_url: str, models: tuple[str, ...] = ("fast",), threads: int = 4) -> None:
        self.base_url = base_url
        self.answers: list[Answer] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(models[i % len(models)],), daemon=True) for i in range(threads)
        ]

    def _run(self, model: str) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    r = client.post("/v1/chat/completions", json=chat_body(model), headers=AUTH)
                    ok = r.status_code == 200
                    failure = None if ok else f"{model}: {r.status_code} {r.text[:300]}"
                    answer = Answer(start, time.monotonic(), r.headers.get("x-switchyard-model", "?"),
                                    r.headers.get("x-switchyard-route", "?"))
                except Exception as exc:  # noqa: BLE001 - a failure to report, not to raise in a thread
                    failure, answer = f"{model}: {exc!r}", None
                with self._lock:
                    if failure is not None:
                        self.failures.append(failure)
                    elif answer is not None:
                        self.answers.append(answer)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        self.wait_until(lambda answers: len(answers) >= 8, 10, "the load to get going")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def wait_until(self, condition: Callable[[list[Answer]], bool], timeout: float, what: str) -> None:
        eventually(lambda: condition(self.snapshot()), timeout=timeout,
                   what=lambda: f"{what}; failures so far: {self.failures[:5]}")

    def wait_for_version(self, v: int, written_at: float, models: tuple[str, ...] = ("model",)) -> float:
        """Wait until every kind of target (`model-vN`, `up-vN`) has answered with version `v`;
        the time from the write to the first such answer must stay within SWITCH_S."""
        def seen(answers: list[Answer]) -> bool:
            return all(any(a.model == f"{m}-v{v}" for a in answers) for m in models)

        self.wait_until(seen, SWITCH_S - (time.monotonic() - written_at), f"version {v} to serve")
        return max(min(a.end for a in self.snapshot() if a.model == f"{m}-v{v}") for m in models) - written_at


def assert_no_going_back(answers: list[Answer]) -> None:
    """Once an answer from policy N has come back, no request started later is answered by an
    older policy: the swap is atomic and never flaps back."""
    ordered = sorted(answers, key=lambda a: a.end)
    ends = [a.end for a in ordered]
    best_so_far: list[int] = []
    top = 0
    for a in ordered:
        top = max(top, version_of(a.model))
        best_so_far.append(top)
    for a in answers:
        i = bisect.bisect_left(ends, a.start)
        if i:
            assert version_of(a.model) >= best_so_far[i - 1], (
                f"a request started at {a.start:.3f} was answered by {a.model} after version "
                f"{best_so_far[i - 1]} had already answered")
        assert a.route == f"{a.model.rsplit('-v', 1)[0].replace('model', 'fast')}-v{version_of(a.model)}", a


# ------------------------------------------------------------------ helpers on a served proxy


def admin_config(server: ServerProcess) -> dict:
    r = httpx.get(server.base_url + "/admin/config", headers=ADMIN_AUTH, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def ask(server: ServerProcess, model: str = "fast") -> httpx.Response:
    r = httpx.post(server.base_url + "/v1/chat/completions", json=chat_body(model), headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    return r


def log_messages(server: ServerProcess) -> list[str]:
    messages = []
    for line in server.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            messages.append(line)
            continue
        messages.append(str(record.get("message", line)) if isinstance(record, dict) else line)
    return messages


def rejection_logged(server: ServerProcess, *needles: str) -> str | None:
    for message in log_messages(server):
        if "rejected" in message and all(n in message for n in needles):
            return message
    return None


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "proxy.yaml"
    path.parent.mkdir()
    return path


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start_threaded()
    up.post("/chat/completions").respond(json=completion())
    yield up
    up.stop_threaded()


# ------------------------------------------------------------------ 1, 2: edits under load


@pytest.mark.parametrize(
    "write",
    [write_in_place, replace_by_rename, rename_away_then_write, truncate_pause_write],
    ids=["in-place", "rename", "rename-away-then-write", "truncate-pause-write"],
)
@pytest.mark.integration
def test_edits_under_load_apply_within_two_seconds_with_no_failed_request(
    config_path: Path, upstream: FakeUpstream, write: Callable[[Path, str], None]
) -> None:
    # two kinds of target: the mock, and an OpenAI-compatible upstream whose provider
    # settings (a header) change with every version, so each edit also replaces its
    # connection pool while requests are using it
    def text(v: int) -> str:
        return policy(v, upstream=upstream.base_url)

    config_path.write_text(text(1))
    with ServerProcess(config_path) as server:
        with Load(server.base_url, models=("fast", "up")) as load:
            load.wait_until(lambda answers: {"model-v1", "up-v1"} <= {a.model for a in answers}, 10,
                            "both targets to answer under version 1")
            for v in (2, 3, 4):
                written_at = time.monotonic()
                write(config_path, text(v))
                took = load.wait_for_version(v, written_at, ("model", "up"))
                assert took < SWITCH_S, f"version {v} took {took:.2f} s"
            # a burst of edits: the last one wins, none is lost in the debounce
            for v in (5, 6, 7):
                written_at = time.monotonic()
                write(config_path, text(v))
            load.wait_for_version(7, written_at, ("model", "up"))
            settled = time.monotonic()
            load.wait_until(lambda answers: sum(a.start > settled for a in answers) >= 20, 5, "more answers")
        assert load.failures == [], load.failures[:10]
        answers = load.snapshot()
        assert len(answers) > 100
        assert_no_going_back(answers)
        assert {a.model for a in answers if a.start > settled} == {"model-v7", "up-v7"}
        # the upstream got each version's provider settings
        sent = [call.headers.get("x-policy") for call in upstream.post("/chat/completions").calls.items]
        assert sent[-1] == "v7" and {"v1", "v2", "v3", "v4", "v7"} <= set(sent)
        report = admin_config(server)
        assert report["last_error"] is None
        assert report["source"] == str(config_path)
        assert report["config"]["routes"][0]["name"] == "fast-v7"
        assert server.proc is not None and server.proc.poll() is None  # never restarted


# ------------------------------------------------------------------ 3: Kubernetes ConfigMap


class ConfigMapDir:
    """The layout kubelet maintains for a mounted ConfigMap, and its atomic update:
    `proxy.yaml -> ..data/proxy.yaml`, `..data -> ..<timestamp>`; an update writes a new
    timestamped directory, points `..data_tmp` at it, renames that over `..data` and
    removes the old directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.current: Path | None = None
        self.n = 0

    def publish(self, text: str) -> None:
        self.n += 1
        version_dir = self.root / f"..2026_01_01_00_00_0{self.n}.{time.monotonic_ns()}"
        version_dir.mkdir()
        (version_dir / "proxy.yaml").write_text(text)
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(version_dir.name)
        os.replace(tmp_link, self.root / "..data")
        old, self.current = self.current, version_dir
        if old is not None:
            (old / "proxy.yaml").unlink()
            old.rmdir()
        user_link = self.root / "proxy.yaml"
        if not user_link.is_symlink():
            user_link.symlink_to("..data/proxy.yaml")


@pytest.mark.integration
def test_configmap_symlink_swap_under_load(tmp_path: Path) -> None:
    mount = tmp_path / "config"
    mount.mkdir()
    configmap = ConfigMapDir(mount)
    configmap.publish(policy(1))
    path = mount / "proxy.yaml"
    assert path.is_symlink() and path.read_text() == policy(1)
    with ServerProcess(path, log=tmp_path / "server.log") as server:
        with Load(server.base_url) as load:
            for v in (2, 3):
                written_at = time.monotonic()
                configmap.publish(policy(v))
                assert load.wait_for_version(v, written_at) < SWITCH_S
            # a bad ConfigMap version is rejected and v3 keeps serving, then a good one applies
            bad = policy(4).replace("to: mock/model-v4", "to: nowhere/model-v4")
            configmap.publish(bad)
            eventually(lambda: (admin_config(server)["last_error"] or {}).get("digest") == digest(bad), timeout=3,
                       interval=0.02, what="the bad ConfigMap version to be rejected")
            written_at = time.monotonic()
            configmap.publish(policy(5))
            assert load.wait_for_version(5, written_at) < SWITCH_S
        assert load.failures == [], load.failures[:10]
        assert_no_going_back(load.snapshot())
        assert "model-v4" not in {a.model for a in load.snapshot()}
        report = admin_config(server)
        assert report["last_error"] is None and report["config"]["routes"][0]["name"] == "fast-v5"


# ------------------------------------------------------------------ 4: invalid files

BASE = policy(1)
INVALID = [
    # (file text, problem path, words of the reason)
    ("routes: [\n  - {name: x", "line 2, column 3", "invalid YAML"),
    ("server: {admin_keys: [x]\nteams: {a: b}\n", "line 2", "invalid YAML"),
    (BASE.replace("match: {model: fast}", "match: {model: fast, percent: 150}"),
     "routes[0].match.percent", "less than or equal to 100"),
    (BASE.replace("  mock: {type: mock}", "  mock: {type: mock, colour: blue}"), "providers.mock.colour",
     "unknown key"),
    (BASE.replace("to: mock/model-v1", "to: nowhere/model-v1"), "routes[0].to", "unknown provider 'nowhere'"),
    ("- just\n- a list\n", "", "the top level must be a mapping"),
    ("", "", "empty"),
]


@pytest.mark.integration
def test_invalid_files_are_rejected_and_the_old_policy_keeps_serving(config_path: Path) -> None:
    config_path.write_text(policy(1))
    with ServerProcess(config_path) as server:
        with Load(server.base_url, threads=2) as load:
            for text, where, reason in INVALID:
                replace_by_rename(config_path, text)
                report = eventually(
                    lambda text=text: (r := admin_config(server))["last_error"]
                    and r["last_error"]["digest"] == digest(text) and r,
                    timeout=3, interval=0.02, what=f"the rejection of {text[:40]!r}")
                assert isinstance(report, dict)
                problems = report["last_error"]["problems"]
                assert any(p["path"] == where and reason in p["reason"] for p in problems) or (
                    where.startswith("line") and any(p["path"].startswith(where) and reason in p["reason"]
                                                     for p in problems)), problems
                assert report["generation"] == 1 and report["config"]["routes"][0]["name"] == "fast-v1"
                # the log names the file, the place in it and the reason
                eventually(lambda where=where, reason=reason: rejection_logged(server, str(config_path), where, reason),
                           timeout=2, interval=0.02, what=f"a log line naming {config_path}, {where!r} and {reason!r}")
                # still serving v1, right now
                assert ask(server).headers["x-switchyard-model"] == "model-v1"
            # fixing the file applies it and clears the reported failure
            written_at = time.monotonic()
            replace_by_rename(config_path, policy(2))
            assert load.wait_for_version(2, written_at) < SWITCH_S
        assert load.failures == [], load.failures[:10]
        assert {a.model for a in load.snapshot()} == {"model-v1", "model-v2"}
        assert_no_going_back(load.snapshot())
        report = admin_config(server)
        assert report["last_error"] is None and report["generation"] == 2
        assert report["reloads"]["error"] >= len(INVALID)
        assert server.proc is not None and server.proc.poll() is None


# ------------------------------------------------------------------ 5: SIGHUP and POST /admin/reload


@pytest.mark.integration
def test_sighup_and_admin_reload_with_watching_off(config_path: Path) -> None:
    config_path.write_text(policy(1, watch=False))
    with ServerProcess(config_path) as server, Load(server.base_url, threads=2) as load:
        assert admin_config(server)["config"]["server"]["watch"] is False
        reloads = admin_config(server)["reloads"]
        replace_by_rename(config_path, policy(2, watch=False))
        write_in_place(config_path, policy(2, watch=False) + "# touched\n")
        # not watching: a bounded wait, many times the watcher's reaction time, changes nothing
        time.sleep(0.8)
        assert ask(server).headers["x-switchyard-model"] == "model-v1"
        assert admin_config(server)["reloads"] == reloads

        written_at = time.monotonic()
        server.signal(signal.SIGHUP)
        assert load.wait_for_version(2, written_at) < SWITCH_S
        assert admin_config(server)["generation"] == 2

        # SIGHUP with an invalid file: rejected, v2 keeps serving
        bad = policy(3, watch=False).replace("to: mock/model-v3", "to: nowhere/model-v3")
        write_in_place(config_path, bad)
        server.signal(signal.SIGHUP)
        report = eventually(lambda: (r := admin_config(server))["last_error"] and r, timeout=3, interval=0.02,
                            what="the SIGHUP rejection")
        assert isinstance(report, dict) and report["generation"] == 2
        assert {"path": "routes[0].to", "reason": "unknown provider 'nowhere' (known: mock, slowmock, streammock)"} \
            in report["last_error"]["problems"]
        assert ask(server).headers["x-switchyard-model"] == "model-v2"

        # POST /admin/reload: the swap is done when it answers
        write_in_place(config_path, policy(3, watch=False))
        r = httpx.post(server.base_url + "/admin/reload", headers=ADMIN_AUTH, timeout=5)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["result"] == "ok" and body["generation"] == 3 and body["last_error"] is None
        assert body["config"]["routes"][0]["name"] == "fast-v3"
        assert ask(server).headers["x-switchyard-model"] == "model-v3"

        # a bad file: 422 with the problems, v3 keeps serving
        write_in_place(config_path, "routes: [\n  - {name: x")
        r = httpx.post(server.base_url + "/admin/reload", headers=ADMIN_AUTH, timeout=5)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["result"] == "error" and body["generation"] == 3
        assert body["last_error"]["problems"][0]["path"].startswith("line 2, column 3")
        assert "invalid YAML" in body["last_error"]["problems"][0]["reason"]
        assert ask(server).headers["x-switchyard-model"] == "model-v3"

        # no admin key, or a team key: refused, nothing reloaded
        write_in_place(config_path, policy(4, watch=False))
        assert httpx.post(server.base_url + "/admin/reload", timeout=5).status_code == 401
        assert httpx.post(server.base_url + "/admin/reload", headers=AUTH, timeout=5).status_code == 401
        assert ask(server).headers["x-switchyard-model"] == "model-v3"
        r = httpx.post(server.base_url + "/admin/reload", headers=ADMIN_AUTH, timeout=5)
        assert r.status_code == 200 and r.json()["generation"] == 4
        assert ask(server).headers["x-switchyard-model"] == "model-v4"
    assert load.failures == [], load.failures[:10]
    assert_no_going_back(load.snapshot())


# ------------------------------------------------------------------ 6: in-flight requests


@pytest.mark.integration
def test_in_flight_requests_finish_on_the_snapshot_they_started_with(config_path: Path) -> None:
    # v2 changes the slow and streaming providers' settings too, so their adapters are
    # replaced while these requests are still using them
    config_path.write_text(policy(1, slow_latency_ms=1500, stream_chunk_ms=100))
    with ServerProcess(config_path) as server, ThreadPoolExecutor(4) as pool, \
            httpx.Client(base_url=server.base_url, timeout=15) as client:

        def slow_request() -> tuple[httpx.Response, float]:
            r = httpx.post(server.base_url + "/v1/chat/completions", json=chat_body("slow"), headers=AUTH, timeout=15)
            return r, time.monotonic()

        slow = [pool.submit(slow_request) for _ in range(3)]

        def slow_inflight() -> int:
            r = client.get("/admin/providers", headers=ADMIN_AUTH)
            return r.json()["providers"]["slowmock"]["inflight"] if r.status_code == 200 else 0

        eventually(lambda: slow_inflight() == 3, timeout=5, interval=0.02, what="three slow requests in flight")
        with client.stream("POST", "/v1/chat/completions",
                           json=chat_body("streamy", "hi", stream=True, stream_options={"include_usage": True}),
                           headers=AUTH) as stream:
            assert stream.status_code == 200
            assert stream.headers["x-switchyard-route"] == "stream-v1"
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))

            replace_by_rename(config_path, policy(2, slow_latency_ms=1400, stream_chunk_ms=90))
            switched = eventually(lambda: ask(server).headers["x-switchyard-model"] == "model-v2" and time.monotonic(),
                                  timeout=SWITCH_S, interval=0.02, what="version 2 to serve new requests")
            assert isinstance(switched, float)
            assert ask(server).headers["x-switchyard-route"] == "fast-v2"
            fresh_slow = pool.submit(slow_request)

            events = [first] + [line for line in lines if line.startswith("data: ")]
            stream_done = time.monotonic()
        # the stream started on v1 and ended, whole, on v1
        assert events[-1] == "data: [DONE]"
        chunks = [orjson.loads(e[6:]) for e in events[:-1]]
        assert {c["model"] for c in chunks} == {"stream-v1"}
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == "This is a mock answer from stream-v1. You said: hi"
        assert chunks[-1]["usage"]["completion_tokens"] > 0
        assert stream_done > switched  # it really was in flight across the swap

        for future in slow:
            answer, finished = future.result(timeout=15)
            assert answer.status_code == 200, answer.text
            assert finished > switched  # in flight across the swap
            assert answer.headers["x-switchyard-model"] == "slow-v1"
            assert answer.headers["x-switchyard-route"] == "slow-v1"
            assert answer.json()["model"] == "slow-v1"
        answer, _ = fresh_slow.result(timeout=15)
        assert answer.status_code == 200 and answer.headers["x-switchyard-model"] == "slow-v2"
        assert answer.headers["x-switchyard-route"] == "slow-v2"


@pytest.mark.integration
def test_in_flight_request_retries_on_its_own_provider_after_a_reload(config_path: Path) -> None:
    """A request whose first upstream attempt fails after a reload replaced its provider's
    connection pool retries on the provider of the snapshot it started with, and succeeds."""
    up = FakeUpstream()
    first_arrived = threading.Event()
    let_go = threading.Event()
    calls: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        calls.append(body["model"])
        if len(calls) == 1:  # the first attempt: hold it, then fail it
            first_arrived.set()
            await eventually(let_go.is_set, timeout=30, what="the test to let the first attempt go")
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        if body.get("stream"):
            response = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await response.prepare(request)
            for event in chunk_events(["a", "b", "c", "d", "e"], model=body["model"]):
                await response.write(event)
                await asyncio.sleep(0.1)
            await response.write_eof()
            return response
        return web.json_response(completion(model=body["model"]))

    up.post("/chat/completions").handler(handler)
    up.start_threaded()
    try:
        config_path.write_text(policy(1, watch=False, upstream=up.base_url, retries=2))
        with ServerProcess(config_path) as server, ThreadPoolExecutor(2) as pool:
            held = pool.submit(httpx.post, server.base_url + "/v1/chat/completions", json=chat_body("up"),
                               headers=AUTH, timeout=15)
            assert first_arrived.wait(5), "the first attempt never reached the upstream"
            with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=chat_body("up", stream=True),
                              headers=AUTH, timeout=15) as stream:
                lines = stream.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                # v2 changes the provider's settings: a new connection pool, the old one retired
                config_path.write_text(policy(2, watch=False, upstream=up.base_url, retries=2, up_timeout_s=31))
                r = httpx.post(server.base_url + "/admin/reload", headers=ADMIN_AUTH, timeout=5)
                assert r.status_code == 200 and r.json()["generation"] == 2, r.text
                assert ask(server, "up").headers["x-switchyard-model"] == "up-v2"
                events = [first] + [line for line in lines if line.startswith("data: ")]
            # the stream started on v1 finished whole on the retired pool
            assert events[-1] == "data: [DONE]"
            assert {orjson.loads(e[6:])["model"] for e in events[:-1]} == {"up-v1"}
            # now the held attempt fails with 503 (the retired pool's last request) and is retried
            let_go.set()
            answer = held.result(timeout=15)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-switchyard-model"] == "up-v1"
            assert answer.headers["x-switchyard-route"] == "up-v1"
            assert calls.count("up-v1") >= 3  # held attempt, stream, retry
    finally:
        up.stop_threaded()


# ------------------------------------------------------------------ the holder on its own


def test_reverting_a_bad_edit_clears_the_reported_failure(config_path: Path) -> None:
    from proxy.snapshot import SnapshotHolder

    config_path.write_text(policy(1))
    holder = SnapshotHolder(str(config_path))
    assert holder.load() == "ok"
    config_path.write_text("routes: [")
    assert holder.load() == "error" and holder.last_failure is not None
    config_path.write_text(policy(1))
    assert holder.load() == "unchanged" and holder.last_failure is None


@pytest.mark.parametrize("text", ["", "\n", "   \n\n"])
def test_an_empty_file_is_never_applied(config_path: Path, text: str) -> None:
    from proxy.snapshot import SnapshotHolder

    config_path.write_text(policy(1))
    holder = SnapshotHolder(str(config_path))
    assert holder.load() == "ok"
    config_path.write_text(text)
    assert holder.load() == "error"
    assert holder.current.generation == 1
    assert holder.last_failure is not None and "empty" in holder.last_failure.problems[0][1]


def test_the_log_says_when_a_rejected_edit_is_fixed_and_warns_once_per_change(config_path: Path, caplog) -> None:
    from proxy.reload import reload_now
    from proxy.snapshot import SnapshotHolder

    disabled = "  gone: {type: openai, base_url: 'http://127.0.0.1:9', api_key: '${RELOAD_TEST_UNSET}'}\n"
    text = policy(1).replace("providers:\n", "providers:\n" + disabled)
    assert "gone:" in text
    config_path.write_text(text)
    holder = SnapshotHolder(str(config_path), env={})
    with caplog.at_level("INFO", logger="switchyard.config"):
        assert reload_now(holder, "startup") == "ok"
        config_path.write_text(text + "\n# an unrelated edit\n")
        assert reload_now(holder, "file changed") == "ok"
        config_path.write_text("routes: [")
        assert reload_now(holder, "file changed") == "error"
        config_path.write_text(text + "\n# fixed\n")
        assert reload_now(holder, "file changed") == "ok"
        config_path.write_text("routes: [")
        assert reload_now(holder, "file changed") == "error"
        config_path.write_text(text + "\n# fixed\n")  # back to what kept serving
        assert reload_now(holder, "file changed") == "unchanged"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("provider gone disabled" in m for m in messages) == 1, messages
    assert sum(m.startswith("config is valid again") for m in messages) == 2, messages
    assert "back to generation 3" in messages[-1]
