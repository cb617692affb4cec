"""Switchyard beside two featureless references, LiteLLM and Portkey, in one run, against the same mock upstream.

    python loadtest/compare.py                 # steady figures for every installed gateway
    python loadtest/compare.py --scenarios steady,spike,stress --seconds 10
    python loadtest/compare.py --soak-minutes 10 --only switchyard
    python loadtest/compare.py --scenarios steady --only direct,featureless,nginx,switchyard

Gateways: "direct" (wrk against the mock: the zero-overhead limit); two references with
no features at all: "featureless" (loadtest/featureless.py: a raw ASGI pass-through on
Switchyard's own stack, uvicorn + httptools + uvloop + its upstream pool, so the gap to
it is what Switchyard's features cost) and "nginx" (one worker, a plain reverse proxy
with keep-alive to the upstream and unbuffered streams: what a C proxy costs; skipped
with a note when nginx is not installed: apt-get install -y nginx); "switchyard"; and,
when `make bench-anchors` has installed them under $ANCHORS_DIR (default /tmp/anchors),
"litellm" and "portkey". Each gateway runs alone on CPU 0; the mock upstreams and wrk
share CPU 1. Beside each load figure's req/s comes the gateway's CPU µs per request:
the utime + stime of its processes (/proc/PID/stat; nginx's master and worker) used
during the measured wrk run, divided by the requests wrk completed. That figure holds
on a slower or busier machine where req/s does not. Scenarios:
- steady: non-stream at 50 connections and at 1, streams of 20 chunks at 20 connections
  (each with the gateway's CPU µs per request), the added time to the first streamed
  event (20 sequential streams from a mock that waits 50 ms between chunks), RSS after
  the load;
- spike: 2 s at 1 connection, then 5 s at 200;
- stress: 50, 100, 200, 400 connections, 5 s each, until errors or p99 > 1 s;
- surfaces (Switchyard alone): the same request as chat, as Responses and as Messages,
  each where the provider serves it natively (passed through) and where it does not
  (translated to chat and back), non-stream at c50 and streams at c20;
- soak: `--soak-minutes` of c20 load with RSS sampled every 30 s (growth must stay flat).
Writes loadtest/results/compare-<time>.md and a PNG chart beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402
    GATEWAY_CPU,
    HERE,
    LOAD_CPU,
    MOCK_PORT,
    ROOT,
    cpu_seconds,
    rss_kib,
    wait_http,
    wait_port,
    wrk,
)

SLOW_PORT = 18001
FEATURELESS_PORT, NGINX_PORT = 18082, 18083
ANCHORS = Path(os.environ.get("ANCHORS_DIR", "/tmp/anchors"))

SWITCHYARD_CONFIG = f"""
server: {{host: 127.0.0.1, port: 18080, watch: false}}
ledger: {{path: bench-ledger.db}}
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{MOCK_PORT}/v1", api_key: sk-up}}
  slow: {{type: openai, base_url: "http://127.0.0.1:{SLOW_PORT}/v1", api_key: sk-up}}
  chatonly: {{type: openai, base_url: "http://127.0.0.1:{MOCK_PORT}/v1", api_key: sk-up, chat_only: true}}
  ant: {{type: anthropic, base_url: "http://127.0.0.1:{MOCK_PORT}", api_key: sk-up}}
pricing:
  up/mock-gpt: {{input: 2.5, output: 10}}
  chatonly/mock-gpt: {{input: 2.5, output: 10}}
  ant/claude-mock: {{input: 3, output: 15}}
teams:
  bench: {{keys: [sk-bench]}}
routes:
  - {{name: slow, match: {{model: mock-gpt-slow}}, to: slow/mock-gpt-slow}}
  - {{name: chat-only, match: {{model: mock-gpt-chat}}, to: chatonly/mock-gpt}}
  - {{name: claude, match: {{model: claude-mock}}, to: ant/claude-mock}}
  - {{name: bench, match: {{model: "*"}}, to: "up/{{model}}"}}
"""

LITELLM_CONFIG = f"""
model_list:
  - model_name: mock-gpt
    litellm_params: {{model: openai/mock-gpt, api_base: "http://127.0.0.1:{MOCK_PORT}/v1", api_key: x}}
  - model_name: mock-gpt-slow
    litellm_params: {{model: openai/mock-gpt-slow, api_base: "http://127.0.0.1:{SLOW_PORT}/v1", api_key: x}}
litellm_settings: {{telemetry: false, callbacks: []}}
general_settings: {{master_key: sk-bench}}
"""


def nginx_config(directory: Path) -> str:
    """A plain reverse proxy: one worker, keep-alive both ways, streams relayed as they come.
    Every path is in `directory` (and nginx runs with -p and -e there): any user can start it."""
    return f"""
worker_processes 1;
worker_rlimit_nofile 8192;
pid {directory}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {directory}/client_body;
  proxy_temp_path {directory}/proxy;
  fastcgi_temp_path {directory}/fastcgi;
  uwsgi_temp_path {directory}/uwsgi;
  scgi_temp_path {directory}/scgi;
  client_body_buffer_size 64k;  # request bodies stay in memory, never in a temp file
  keepalive_requests 1000000;  # uvicorn never closes a busy keep-alive connection either
  upstream mock {{ server 127.0.0.1:{MOCK_PORT}; keepalive 512; keepalive_requests 1000000; }}
  upstream slow {{ server 127.0.0.1:{SLOW_PORT}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{NGINX_PORT};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;
    location = /healthz {{ return 200 "ok\\n"; }}
    location /v1/ {{ proxy_pass http://mock; }}
    location /slow/ {{ proxy_pass http://slow/; }}  # the first-event probe: /slow/v1/... to the slow mock
  }}
}}
"""


@dataclass
class Gateway:
    name: str
    url: str  # the chat completions URL
    ready: str  # a URL that answers once it is up
    command: list[str] = field(default_factory=list)  # empty: nothing to start (direct)
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    headers: str = ""  # for wrk's HEADERS
    slow_model: str = "mock-gpt-slow"
    slow_url: str = ""  # where first_event_ms streams from the slow mock (default: url)
    slow_headers: dict[str, str] = field(default_factory=dict)


def gateways(workdir: Path, notes: list[str]) -> dict[str, Gateway]:
    """Every gateway this machine can run, in the table's column order; `notes` says why
    a reference is missing."""
    (workdir / "switchyard.yaml").write_text(SWITCHYARD_CONFIG)
    featureless = f"http://127.0.0.1:{FEATURELESS_PORT}"
    out = {
        # the first-event baseline streams from the slow mock itself, as the anchors' harness does
        "direct": Gateway("direct", f"http://127.0.0.1:{MOCK_PORT}/v1/chat/completions",
                          f"http://127.0.0.1:{MOCK_PORT}/v1/models",
                          slow_url=f"http://127.0.0.1:{SLOW_PORT}/v1/chat/completions"),
        # the references stream their first-event probe from the slow mock under /slow/
        "featureless": Gateway(
            "featureless", f"{featureless}/v1/chat/completions", f"{featureless}/healthz",
            [sys.executable, str(HERE / "featureless.py"), "--port", str(FEATURELESS_PORT),
             "--upstream", f"http://127.0.0.1:{MOCK_PORT}/v1", "--slow-upstream", f"http://127.0.0.1:{SLOW_PORT}/v1"],
            slow_url=f"{featureless}/slow/v1/chat/completions",
        ),
    }
    nginx = nginx_gateway(workdir / "nginx", notes)
    if nginx is not None:
        out["nginx"] = nginx
    out["switchyard"] = Gateway(
        "switchyard", "http://127.0.0.1:18080/v1/chat/completions", "http://127.0.0.1:18080/healthz",
        [sys.executable, "-m", "proxy", "serve", "--config", str(workdir / "switchyard.yaml")],
        env={"PYTHONPATH": str(ROOT)},
    )
    litellm = ANCHORS / "litellm-venv" / "bin" / "litellm"
    if litellm.exists():
        (workdir / "litellm.yaml").write_text(LITELLM_CONFIG)
        out["litellm"] = Gateway(
            "litellm", "http://127.0.0.1:4000/v1/chat/completions", "http://127.0.0.1:4000/health/liveliness",
            [str(litellm), "--config", str(workdir / "litellm.yaml"), "--host", "127.0.0.1", "--port", "4000",
             "--num_workers", "1"],
            env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        )
    portkey = ANCHORS / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if portkey.exists() and shutil.which("node"):
        headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": f"http://127.0.0.1:{MOCK_PORT}/v1"}
        out["portkey"] = Gateway(
            "portkey", "http://127.0.0.1:8787/v1/chat/completions", "http://127.0.0.1:8787/",
            ["node", str(portkey), "--port=8787", "--headless"], cwd=ANCHORS / "portkey",
            headers="|".join(f"{k}: {v}" for k, v in headers.items()),
            slow_model="mock-gpt",
            slow_headers={**headers, "x-portkey-custom-host": f"http://127.0.0.1:{SLOW_PORT}/v1"},
        )
    return out


def nginx_gateway(directory: Path, notes: list[str]) -> Gateway | None:
    """nginx with its config, pid and temp files in `directory`; None (and a note) when it
    is not installed or will not take the config."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/sbin")
    if nginx is None:
        notes.append("nginx is not installed (apt-get install -y nginx): no nginx column.")
        return None
    directory.mkdir()
    config = directory / "nginx.conf"
    config.write_text(nginx_config(directory))
    command = [nginx, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(config)]
    check = subprocess.run([*command, "-t", "-q"], capture_output=True, text=True)
    if check.returncode != 0:
        notes.append(f"nginx refused the bench config, no nginx column: {check.stderr.strip()[:300]}")
        return None
    url = f"http://127.0.0.1:{NGINX_PORT}"
    return Gateway("nginx", f"{url}/v1/chat/completions", f"{url}/healthz", [*command, "-g", "daemon off;"],
                   slow_url=f"{url}/slow/v1/chat/completions")


class Running:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Running:
        if not self.gateway.command:
            return self  # direct: the mock is already up
        port = urlsplit(self.gateway.ready).port
        if port_in_use(port):  # a leftover process would answer in the gateway's place
            raise SystemExit(f"port {port} is already in use: stop whatever listens there first")
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | self.gateway.env
        self.proc = subprocess.Popen(["taskset", "-c", GATEWAY_CPU, *self.gateway.command], cwd=self.gateway.cwd,
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.gateway.ready, timeout=120)
        if self.proc.poll() is not None:
            raise SystemExit(f"{self.gateway.name} exited at startup (code {self.proc.returncode})")
        return self

    def pid(self, mock_pid: int) -> int:
        return self.proc.pid if self.proc is not None else mock_pid

    def pids(self) -> list[int]:
        """The gateway's processes, whose CPU time is its cost: the one we started and its
        children (nginx's worker under its master); none for direct."""
        return process_tree(self.proc.pid) if self.proc is not None else []

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from the parent pid in every /proc/N/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return out


def gateway_cpu_s(pids: list[int]) -> float:
    """The user + system CPU seconds the gateway's processes have used so far."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass  # a process that exited: its time is gone with it
    return total


def port_in_use(port: int | None) -> bool:
    with socket.socket() as probe:
        return port is not None and probe.connect_ex(("127.0.0.1", port)) == 0


def load(gateway: Gateway, connections: int, seconds: int, **env: str) -> dict[str, float]:
    base = {"MODEL": "mock-gpt", "API_KEY": "sk-bench", "HEADERS": gateway.headers}
    return wrk(gateway.url, connections, seconds, {**base, **env})


def measured(gateway: Gateway, pids: list[int], connections: int, seconds: int, **env: str) -> dict[str, float]:
    """A wrk run with "cpu_us" beside its req/s: the gateway's CPU µs per completed request
    over the run (none for direct, where there is no gateway)."""
    before = gateway_cpu_s(pids)
    result = load(gateway, connections, seconds, **env)
    if pids and result.get("requests"):
        result["cpu_us"] = (gateway_cpu_s(pids) - before) / result["requests"] * 1e6
    return result


def first_event_ms(gateway: Gateway, n: int = 20) -> float:
    """p50 time to the first streamed event over n sequential streams (one keep-alive connection),
    measured from CPU 1 like the load generator, so the client never competes with the gateway."""
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    try:
        return _first_event_ms(gateway, n)
    finally:
        os.sched_setaffinity(0, affinity)


def _first_event_ms(gateway: Gateway, n: int) -> float:
    parts = urlsplit(gateway.slow_url or gateway.url)
    body = json.dumps({"model": gateway.slow_model, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench", **gateway.slow_headers}
    times = []
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    for i in range(n + 3):
        started = time.perf_counter()
        conn.request("POST", parts.path, body=body, headers=headers)
        response = conn.getresponse()
        line = b""
        while not line.startswith(b"data:"):
            line = response.readline()
            if not line:
                break
        first = time.perf_counter() - started
        response.read()
        if i >= 3:  # warm-up
            times.append(first * 1000)
    conn.close()
    return statistics.median(times)


def steady(gateway: Gateway, seconds: int, warmup: int, pids: list[int]) -> dict[str, float]:
    load(gateway, 50, warmup)
    out = {}
    r = measured(gateway, pids, 50, seconds)
    out.update(rps_c50=r["rps"], p99_c50=r.get("p99_ms", 0), errors_c50=r["errors"])
    if "cpu_us" in r:
        out["cpu_c50"] = r["cpu_us"]
    r = measured(gateway, pids, 1, max(seconds // 2, 3))
    out.update(rps_c1=r["rps"], p50_c1=r.get("p50_ms", 0), p99_c1=r.get("p99_ms", 0))
    if "cpu_us" in r:
        out["cpu_c1"] = r["cpu_us"]
    load(gateway, 20, 2, STREAM="1")
    r = measured(gateway, pids, 20, seconds, STREAM="1")
    out.update(streams_c20=r["rps"], errors_stream=r["errors"])
    if "cpu_us" in r:
        out["cpu_stream_c20"] = r["cpu_us"]
    out["first_event_ms"] = first_event_ms(gateway)
    return out


def settle() -> None:
    """Let the gateway close the last run's connections first. Otherwise wrk, reusing
    loopback ports still in TIME_WAIT, meets sockets the busy gateway has not closed yet
    and waits out a 1 s SYN retransmit: p99 > 1 s that measures the kernel, not the gateway."""
    time.sleep(2)


def spike(gateway: Gateway) -> dict[str, float]:
    settle()
    load(gateway, 1, 2)
    r = load(gateway, 200, 5)
    return {"spike_rps": r["rps"], "spike_p99": r.get("p99_ms", 0), "spike_errors": r["errors"]}


def stress(gateway: Gateway) -> dict[str, float]:
    out = {}
    for c in (50, 100, 200, 400):
        settle()
        r = load(gateway, c, 5)
        out[f"stress_c{c}_rps"], out[f"stress_c{c}_p99"] = r["rps"], r.get("p99_ms", 0)
        if r["errors"] or r.get("p99_ms", 0) > 1000:
            out["breaking_point"] = c
            break
    return out


# (label, surface, path, model): the same request on each surface, native then translated
SURFACES = [
    ("chat", "chat", "/v1/chat/completions", "mock-gpt"),
    ("responses, native", "responses", "/v1/responses", "mock-gpt"),
    ("responses → chat", "responses", "/v1/responses", "mock-gpt-chat"),
    ("messages, native", "messages", "/v1/messages", "claude-mock"),
    ("messages → chat", "messages", "/v1/messages", "mock-gpt"),
]


def surfaces(gateway: Gateway, seconds: int, warmup: int) -> dict[str, float]:
    base = gateway.url.removesuffix("/v1/chat/completions")
    out: dict[str, float] = {}
    for label, surface, path, model in SURFACES:
        env = {"MODEL": model, "API_KEY": "sk-bench", "SURFACE": surface}
        wrk(base + path, 50, warmup, env)
        r = wrk(base + path, 50, seconds, env)
        out[f"surface {label}: req/s c50"] = r["rps"]
        out[f"surface {label}: p50 ms c50"] = r.get("p50_ms", 0)
        out[f"surface {label}: errors"] = r["errors"]
        r = wrk(base + path, 20, seconds, {**env, "STREAM": "1"})
        out[f"surface {label}: streams/s c20"] = r["rps"]
        out[f"surface {label}: errors"] += r["errors"]
    return out


def soak(gateway: Gateway, minutes: float, pid: int) -> dict[str, float]:
    samples = []
    deadline = time.monotonic() + minutes * 60
    while time.monotonic() < deadline:
        load(gateway, 20, 30)
        samples.append(rss_kib(pid) / 1024)
    return {"soak_rss_start": samples[0], "soak_rss_end": samples[-1], "soak_rss_max": max(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--scenarios", default="steady")
    parser.add_argument("--only", default="", help="comma-separated gateways (default: all installed)")
    parser.add_argument("--soak-minutes", type=float, default=0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    scenarios = set(args.scenarios.split(","))
    mocks = [
        subprocess.Popen(["taskset", "-c", LOAD_CPU, sys.executable, str(HERE / "mock_upstream.py"),
                          "--port", str(port), *extra], stdout=subprocess.DEVNULL)
        for port, extra in ((MOCK_PORT, []), (SLOW_PORT, ["--chunk-interval-ms", "50"]))
    ]
    results: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    only = [name for name in args.only.split(",") if name]
    try:
        wait_port(MOCK_PORT)
        wait_port(SLOW_PORT)
        with tempfile.TemporaryDirectory() as tmp:
            found = gateways(Path(tmp), notes)
            if only and "nginx" not in only:
                notes = []  # nginx was not asked for: nothing to say about it
            for note in notes:
                print(note, flush=True)
            chosen = [g for g in found if not only or g in only]
            for name in chosen:
                gateway = found[name]
                with Running(gateway) as running:
                    pid = running.pid(mocks[0].pid)
                    r: dict[str, float] = {}
                    if "steady" in scenarios:
                        r.update(steady(gateway, args.seconds, args.warmup, running.pids()))
                    if "spike" in scenarios:
                        r.update(spike(gateway))
                    if "stress" in scenarios:
                        r.update(stress(gateway))
                    if "surfaces" in scenarios and name == "switchyard":
                        r.update(surfaces(gateway, args.seconds, args.warmup))
                    if args.soak_minutes:
                        r.update(soak(gateway, args.soak_minutes, pid))
                    r["rss_mib"] = rss_kib(pid) / 1024
                results[name] = r
                print(name, json.dumps({k: round(v, 3) for k, v in r.items()}), flush=True)
    finally:
        for m in mocks:
            m.terminate()
            m.wait(5)
    report(results, args, notes)


# (gateway, what it is): the columns the report explains under its heading, when present
COLUMNS = [
    ("featureless", "loadtest/featureless.py, a raw ASGI pass-through on Switchyard's own stack (uvicorn, "
                    "httptools, uvloop, its upstream pool) and nothing else: the floor of that stack"),
    ("nginx", "nginx, one worker, a plain reverse proxy (keep-alive to the upstream, unbuffered streams)"),
]


def report(results: dict[str, dict[str, float]], args: argparse.Namespace, notes: list[str] | None = None) -> None:
    now = dt.datetime.now(dt.UTC)
    direct = results.get("direct", {})
    rows = [
        ("non-stream req/s, c50", "rps_c50", "{:,.0f}"),
        ("gateway CPU µs per request, c50", "cpu_c50", "{:.0f}"),
        ("non-stream req/s, c1", "rps_c1", "{:,.0f}"),
        ("p50 ms at c1 (added over direct)", "p50_c1", "{:.3f}"),
        ("gateway CPU µs per request, c1", "cpu_c1", "{:.0f}"),
        ("streams/s, 20 chunks, c20", "streams_c20", "{:,.0f}"),
        ("gateway CPU µs per stream, c20", "cpu_stream_c20", "{:.0f}"),
        ("first streamed event ms (added over direct)", "first_event_ms", "{:.2f}"),
        ("RSS MiB after load", "rss_mib", "{:.0f}"),
        ("spike c200 req/s (errors)", "spike_rps", "{:,.0f}"),
        ("breaking point (connections)", "breaking_point", "{:.0f}"),
        ("soak RSS MiB start → end", "soak_rss_end", "{:.0f}"),
    ]
    names = list(results)
    lines = [f"### gateways side by side, {now:%Y-%m-%d %H:%M} UTC", "",
             f"{os.cpu_count()} cores; each gateway alone on CPU {GATEWAY_CPU}, mocks and wrk on CPU {LOAD_CPU}; "
             f"wrk -t1, {args.seconds} s per figure after a {args.warmup} s warm-up; scenarios {args.scenarios}.", ""]
    lines += [f"- {name}: {what}." for name, what in COLUMNS if name in results]
    if any(key.startswith("cpu_") for r in results.values() for key in r):
        lines.append("- gateway CPU µs per request: the user + system CPU time of the gateway's processes "
                     "(/proc/PID/stat; nginx's master and worker) during the measured run, over the requests "
                     "wrk completed in it. Unlike req/s it holds on a slower or busier machine.")
    lines += [f"- {note}" for note in notes or []]
    if lines[-1] != "":
        lines.append("")
    lines += ["| figure | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for label, key, fmt in rows:
        if not any(key in r for r in results.values()):
            continue
        cells = []
        for name in names:
            r = results[name]
            if key not in r:
                cells.append("-")
                continue
            text = fmt.format(r[key])
            if key in ("p50_c1", "first_event_ms") and name != "direct" and key in direct:
                text += f" (+{r[key] - direct[key]:.3f})"
            if key == "spike_rps":
                text += f" ({int(r.get('spike_errors', 0))})"
            if key == "soak_rss_end":
                text = f"{r['soak_rss_start']:.0f} → {r[key]:.0f}"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "switchyard" in results:
        sy = results["switchyard"]
        for other in ("featureless", "nginx", "litellm", "portkey"):
            if other in results and "rps_c50" in results[other] and "rps_c50" in sy:
                lines += ["", ratio_line(sy, results[other], other)]
    lines += surfaces_table(results.get("switchyard", {}))
    text = "\n".join(lines) + "\n"
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"compare-{now:%Y%m%dT%H%M%SZ}.md"
    path.write_text(text)
    print("\n" + text)
    chart(results, path.with_suffix(".png"))
    print(f"written to {path.relative_to(ROOT)} (+ .png)")


def ratio_line(sy: dict[str, float], other: dict[str, float], name: str) -> str:
    """Switchyard over another gateway of the same run: throughput as a share of a reference's
    (featureless, nginx: a floor Switchyard stays under), as a multiple of an anchor's, and CPU
    per request as a multiple."""
    def share(key: str) -> str:
        ratio = sy[key] / max(other[key], 1e-9)
        return f"{ratio:.0%}" if name in ("featureless", "nginx") else f"x{ratio:.1f}"

    text = f"Switchyard / {name}: non-stream throughput {share('rps_c50')} (c50), streams {share('streams_c20')} (c20)"
    cpu = [f"x{sy[key] / other[key]:.2f} ({label})" for key, label in
           (("cpu_c50", "c50"), ("cpu_c1", "c1"), ("cpu_stream_c20", "streams c20"))
           if key in sy and other.get(key)]
    return text + ("; CPU per request " + ", ".join(cpu) if cpu else "") + "."


def surfaces_table(r: dict[str, float]) -> list[str]:
    if not any(key.startswith("surface ") for key in r):
        return []
    lines = ["", "Switchyard, one request on each surface (same mock upstream, same answer):", "",
             "| surface | req/s, c50 | p50 ms, c50 | streams/s, c20 | errors |", "| --- | ---: | ---: | ---: | ---: |"]
    for label, *_ in SURFACES:
        lines.append(f"| {label} | {r[f'surface {label}: req/s c50']:,.0f} | {r[f'surface {label}: p50 ms c50']:.2f} | "
                     f"{r[f'surface {label}: streams/s c20']:,.0f} | {int(r[f'surface {label}: errors'])} |")
    return lines


def chart(results: dict[str, dict[str, float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart")
        return
    names = list(results)
    if not any("rps_c50" in r for r in results.values()):
        return  # a soak alone: nothing to chart
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    panels = [("non-stream req/s, c50", "rps_c50"), ("gateway CPU µs per request, c50", "cpu_c50"),
              ("streams/s, c20", "streams_c20"), ("latency ms: p50 c1 / p99 c50", None)]
    for ax, (title, key) in zip(axes, panels, strict=True):
        if key:
            ax.bar(names, [results[n].get(key, 0) for n in names], color="#4477aa")
            if not key.startswith("cpu_"):
                ax.set_yscale("log")
        else:
            x = range(len(names))
            ax.bar([i - 0.2 for i in x], [results[n].get("p50_c1", 0) for n in names], 0.4, label="p50 c1")
            ax.bar([i + 0.2 for i in x], [results[n].get("p99_c50", 0) for n in names], 0.4, label="p99 c50")
            ax.set_xticks(list(x), names)
            ax.set_yscale("log")
            ax.legend()
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
