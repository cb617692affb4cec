"""Load-test driver: starts the mock upstream and Switchyard, runs wrk scenarios, prints a table.

Layout on a 2-core machine: Switchyard on CPU 0 (`taskset -c 0`), the mock upstream and
wrk on CPU 1, so a figure is one gateway core's capacity. Every wrk run is bounded by
`-d`; all traffic stays on 127.0.0.1.

    python loadtest/bench.py --suite cache      # cache hit / miss, Redis up and down
    python loadtest/bench.py --suite core       # direct vs proxied, stream and not
    python loadtest/bench.py --suite telemetry  # access log and OTLP tracing on vs off

Results go to stdout and to loadtest/results/<suite>-<UTC time>.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GATEWAY_CPU, LOAD_CPU = "0", "1"
MOCK_PORT, PROXY_PORT, DEAD_PORT = 18000, 18080, 18099

BASE = """
server: {{host: 127.0.0.1, port: {port}, watch: false}}
cache: {cache}
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{mock}/v1", api_key: sk-up}}
pricing:
  up/bench: {{input: 2.5, output: 10}}
teams:
  bench: {{keys: [sk-bench]}}
routes:
  - name: bench
    match: {{model: "*"}}
    to: "up/{{model}}"
{extra}
"""
# the mock answers any POST with 200, so it doubles as an OTLP/HTTP sink for span exports
TRACING = f'telemetry: {{otlp_endpoint: "http://127.0.0.1:{MOCK_PORT}"}}'
TRACING_SAMPLED = f'telemetry: {{otlp_endpoint: "http://127.0.0.1:{MOCK_PORT}", sample_ratio: 0.1}}'
NO_ACCESS_LOG = "telemetry: {access_log: false}"


@dataclass
class Scenario:
    name: str
    cache: str  # the cache: block
    connections: int = 50
    env: dict[str, str] = field(default_factory=dict)
    direct: bool = False  # bypass the proxy: measure the mock itself
    extra: str = ""  # more top-level config (telemetry: ...)


SUITES: dict[str, list[Scenario]] = {
    "core": [
        Scenario("direct, non-stream, c50", "{backend: off}", direct=True),
        Scenario("switchyard, non-stream, c50", "{backend: off}"),
        Scenario("direct, non-stream, c1", "{backend: off}", 1, direct=True),
        Scenario("switchyard, non-stream, c1", "{backend: off}", 1),
        Scenario("direct, stream 20 chunks, c20", "{backend: off}", 20, {"STREAM": "1"}, direct=True),
        Scenario("switchyard, stream 20 chunks, c20", "{backend: off}", 20, {"STREAM": "1"}),
    ],
    "cache": [
        Scenario("no cache (upstream every time), c50", "{backend: off}"),
        Scenario("redis hit, c50", "{backend: redis}"),
        Scenario("memory hit, c50", "{backend: memory}"),
        Scenario("no cache, c1", "{backend: off}", 1),
        Scenario("redis hit, c1", "{backend: redis}", 1),
        Scenario("redis miss (Redis up), c1", "{backend: redis}", 1, {"UNIQUE": "1"}),
        Scenario(
            "redis miss (Redis down), c1",
            f'{{backend: redis, url: "redis://127.0.0.1:{DEAD_PORT}/0"}}',
            1,
            {"UNIQUE": "1"},
        ),
        Scenario("redis miss (Redis up), c50", "{backend: redis}", 50, {"UNIQUE": "1"}),
        Scenario("no cache, unique prompts, c50", "{backend: off}", 50, {"UNIQUE": "1"}),
    ],
    "telemetry": [
        Scenario("metrics only (access log off), c50", "{backend: off}", extra=NO_ACCESS_LOG),
        Scenario("metrics + access log (default), c50", "{backend: off}"),
        Scenario("metrics + access log + OTLP tracing, c50", "{backend: off}", extra=TRACING),
        Scenario("metrics + access log + OTLP tracing 10% sampled, c50", "{backend: off}", extra=TRACING_SAMPLED),
        Scenario("metrics only (access log off), c1", "{backend: off}", 1, extra=NO_ACCESS_LOG),
        Scenario("metrics + access log (default), c1", "{backend: off}", 1),
        Scenario("metrics + access log + OTLP tracing, c1", "{backend: off}", 1, extra=TRACING),
        Scenario("stream, default telemetry, c20", "{backend: off}", 20, {"STREAM": "1"}),
        Scenario("stream, + OTLP tracing, c20", "{backend: off}", 20, {"STREAM": "1"}, extra=TRACING),
    ],
}


def wait_http(url: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid: int, url: str, connections: int, seconds: int, env: dict[str, str]) -> dict[str, float]:
    """A wrk run with the gateway's CPU µs per request beside it: unlike req/s, that figure
    holds when the machine is slower or busier than the last time."""
    before = cpu_seconds(pid)
    result = wrk(url, connections, seconds, env)
    used = cpu_seconds(pid) - before
    result["cpu_us"] = used / result["requests"] * 1e6 if result.get("requests") else 0.0
    return result


def wrk(url: str, connections: int, seconds: int, env: dict[str, str]) -> dict[str, float]:
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
           "--timeout", "10s", "-s", str(HERE / "chat.lua"), url]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=seconds + 30).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    total = re.search(r"(\d+) requests in", out)
    result["requests"] = float(total.group(1)) if total else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out)
        if m:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
            result[f"p{pct}_ms"] = float(m.group(1)) * scale
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = (int(errors.group(1)) if errors else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return result


class Proxy:
    def __init__(self, cache: str, workdir: Path, extra: str = "") -> None:
        self.config = workdir / "bench.yaml"
        self.config.write_text(BASE.format(port=PROXY_PORT, mock=MOCK_PORT, cache=cache, extra=extra))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Proxy:
        # info: the access log is written (to /dev/null), as it would be in production
        with socket.socket() as probe:  # a leftover process would answer in the proxy's place
            if probe.connect_ex(("127.0.0.1", PROXY_PORT)) == 0:
                raise SystemExit(f"port {PROXY_PORT} is already in use: stop whatever listens there first")
        cmd = ["taskset", "-c", GATEWAY_CPU, sys.executable, "-m", "proxy", "serve", "--config", str(self.config),
               "--log-level", "info"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{PROXY_PORT}/healthz")
        if self.proc.poll() is not None:
            raise SystemExit(f"the proxy exited at startup (code {self.proc.returncode})")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def flush_bench_keys() -> None:
    try:
        import redis

        client = redis.Redis(socket_connect_timeout=1)
        for key in client.scan_iter(match="sy:c:bench:*", count=1000):
            client.unlink(key)
    except Exception:
        pass


def run(suite: str, seconds: int, warmup: int) -> str:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    mock = subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, sys.executable, str(HERE / "mock_upstream.py"), "--port", str(MOCK_PORT)],
        stdout=subprocess.DEVNULL,
    )
    rows = []
    try:
        wait_port(MOCK_PORT)
        with tempfile.TemporaryDirectory() as tmp:
            for sc in SUITES[suite]:
                flush_bench_keys()
                url_base = f"http://127.0.0.1:{MOCK_PORT}" if sc.direct else f"http://127.0.0.1:{PROXY_PORT}"
                url = url_base + "/v1/chat/completions"
                if sc.direct:
                    wrk(url, sc.connections, warmup, sc.env)
                    r = measured(mock.pid, url, sc.connections, seconds, sc.env)
                    r["rss_mib"] = rss_kib(mock.pid) / 1024
                else:
                    with Proxy(sc.cache, Path(tmp), sc.extra) as proxy:
                        assert proxy.proc is not None
                        wrk(url, sc.connections, warmup, sc.env)
                        r = measured(proxy.proc.pid, url, sc.connections, seconds, sc.env)
                        r["rss_mib"] = rss_kib(proxy.proc.pid) / 1024
                rows.append((sc.name, r))
                print(f"{sc.name:<40} {r['rps']:>9.0f} req/s  {r['cpu_us']:>6.0f} µs CPU/req  "
                      f"p50 {r.get('p50_ms', 0):.3f} ms  p99 {r.get('p99_ms', 0):.3f} ms  errors {r['errors']}",
                      flush=True)
    finally:
        mock.terminate()
        mock.wait(5)
        flush_bench_keys()
    return table(suite, rows, seconds)


def table(suite: str, rows: list[tuple[str, dict[str, float]]], seconds: int) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### {suite} suite, {now}",
        "",
        f"{os.cpu_count()} cores; gateway pinned to CPU {GATEWAY_CPU}, mock upstream and wrk on CPU {LOAD_CPU}; "
        f"wrk -t1, {seconds} s per figure after a warm-up.",
        "",
        "| scenario | req/s | CPU µs/req | p50 ms | p99 ms | errors | RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['rps']:,.0f} | {r['cpu_us']:.0f} | {r.get('p50_ms', 0):.3f} | {r.get('p99_ms', 0):.3f} | "
            f"{int(r['errors'])} | {r.get('rss_mib', 0):.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Switchyard load tests")
    parser.add_argument("--suite", choices=sorted(SUITES), default="core")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", default="", help="run only scenarios whose name contains this")
    args = parser.parse_args()
    SUITES[args.suite] = [sc for sc in SUITES[args.suite] if args.only in sc.name]
    report = run(args.suite, args.seconds, args.warmup)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{args.suite}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.md"
    path.write_text(report)
    print("\n" + report + f"\nwritten to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
