"""Soak: normal load with hostile traffic mixed in, watching memory and file descriptors.

    python loadtest/soak_hostile.py --minutes 10

Switchyard (CPU 0) serves a steady wrk load of well-behaved chat requests (c20, CPU 1)
while a second client (CPU 1) keeps sending what an attacker or a careless client
would: model names invented per request through the passthrough route, request heads
trickled one line at a time (408), connections that say nothing, oversized heads (431)
and bodies (413), clients that send a request and vanish before the answer. Every 30 s
the gateway's RSS and open file descriptors are sampled. Pass: not one normal request
fails, and RSS and descriptors end where they levelled off (no growth per minute).
Writes loadtest/results/soak-hostile-<time>.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import GATEWAY_CPU, HERE, LOAD_CPU, MOCK_PORT, ROOT, rss_kib, wait_http, wait_port, wrk  # noqa: E402

PORT = 18081
CONFIG = f"""
server: {{host: 127.0.0.1, port: {PORT}, watch: false, header_timeout_s: 2, keepalive_timeout_s: 2}}
ledger: {{path: soak-ledger.db}}
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{MOCK_PORT}/v1", api_key: sk-up, max_connections: 100}}
teams:
  bench: {{keys: [sk-bench]}}
routes:
  - {{name: bench, match: {{model: bench}}, to: up/bench}}
  - {{name: passthrough, match: {{model: "*/*"}}, to: "{{model}}"}}
"""


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def chat_request(model: str, body_extra: dict[str, object] | None = None) -> bytes:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **(body_extra or {})})
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-bench\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


def status_of(answer: bytes) -> str:
    parts = answer.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 and answer.startswith(b"HTTP/") else "closed"


def exchange(data: bytes, *, read: bool = True, timeout: float = 10) -> str:
    with socket.create_connection(("127.0.0.1", PORT), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        if not read:
            return "left"
        try:
            return status_of(sock.recv(4096))
        except OSError:
            return "closed"


def invented_model() -> str:
    return exchange(chat_request(f"up/invented-{uuid.uuid4().hex}-{'x' * random.randint(0, 200)}"))


def trickled_head() -> str:
    with socket.create_connection(("127.0.0.1", PORT), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        try:
            for _ in range(10):
                time.sleep(0.5)
                sock.sendall(b"x-slow: 1\r\n")
        except OSError:
            pass  # the gateway gave up on us: its answer may still be there to read
        try:
            return status_of(sock.recv(4096))
        except OSError:
            return "closed"


def silent() -> str:
    with socket.create_connection(("127.0.0.1", PORT), timeout=10) as sock:
        return "closed" if sock.recv(10) == b"" else "answered"


def huge_head() -> str:
    return exchange(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 200_000 + b"\r\n\r\n")


def huge_body() -> str:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-bench\r\n"
            b"content-type: application/json\r\ncontent-length: 50000000\r\n\r\n")
    return exchange(head + b"{" * 10_000)


def vanishing() -> str:
    return exchange(chat_request("bench"), read=False)


HOSTILE = [invented_model, invented_model, trickled_head, silent, huge_head, huge_body, vanishing, vanishing]


def hostile_loop(stop: threading.Event, counts: Counter[str]) -> None:
    while not stop.is_set():
        kind = random.choice(HOSTILE)
        try:
            counts[f"{kind.__name__}: {kind()}"] += 1
        except OSError as exc:
            counts[f"{kind.__name__}: {type(exc).__name__}"] += 1


def run(minutes: float, sample_s: float) -> str:
    os.sched_setaffinity(0, {int(LOAD_CPU)})  # the hostile clients share the load CPU with wrk
    mock = subprocess.Popen(["taskset", "-c", LOAD_CPU, sys.executable, str(HERE / "mock_upstream.py"),
                             "--port", str(MOCK_PORT)], stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "soak.yaml"
        config.write_text(CONFIG)
        proxy = subprocess.Popen(["taskset", "-c", GATEWAY_CPU, sys.executable, "-m", "proxy", "serve", "--config",
                                  str(config)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(MOCK_PORT)
            wait_http(f"http://127.0.0.1:{PORT}/healthz")
            wrk(f"http://127.0.0.1:{PORT}/v1/chat/completions", 20, 5, {})  # warm up
            samples: list[tuple[float, int, int]] = []
            counts: Counter[str] = Counter()
            stop = threading.Event()
            hostile = [threading.Thread(target=hostile_loop, args=(stop, counts), daemon=True) for _ in range(4)]
            normal: dict[str, float] = {}
            load = threading.Thread(target=lambda: normal.update(
                wrk(f"http://127.0.0.1:{PORT}/v1/chat/completions", 20, int(minutes * 60), {})))
            started = time.monotonic()
            load.start()
            for t in hostile:
                t.start()
            while load.is_alive():
                samples.append((time.monotonic() - started, rss_kib(proxy.pid), open_fds(proxy.pid)))
                at, rss, fds = samples[-1]
                print(f"{at:6.0f} s  RSS {rss / 1024:6.1f} MiB  fds {fds}", flush=True)
                load.join(sample_s)
            stop.set()
            for t in hostile:
                t.join(15)
            time.sleep(3)  # idle connections close
            samples.append((time.monotonic() - started, rss_kib(proxy.pid), open_fds(proxy.pid)))
        finally:
            proxy.terminate()
            proxy.wait(30)
            mock.terminate()
            mock.wait(5)
    return report(minutes, samples, normal, counts)


def report(minutes: float, samples: list[tuple[float, int, int]], normal: dict[str, float],
           counts: Counter[str]) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    settled = samples[min(2, len(samples) - 1)]  # after the first minute: pools and caches have filled
    lines = [
        f"### hostile soak, {minutes:g} min, {now}",
        "",
        f"normal load (wrk c20): {normal.get('requests', 0):,.0f} requests, {normal.get('rps', 0):,.0f} req/s, "
        f"**{int(normal.get('errors', 0))} failed**",
        f"hostile requests: {sum(counts.values()):,}",
        f"RSS: {samples[0][1] / 1024:.1f} MiB at start, {settled[1] / 1024:.1f} after {settled[0]:.0f} s, "
        f"{samples[-1][1] / 1024:.1f} at the end; open fds: {samples[0][2]} -> {settled[2]} -> {samples[-1][2]}",
        "",
        "| hostile request: what the gateway did | count |",
        "| --- | ---: |",
    ]
    lines += [f"| {k} | {v:,} |" for k, v in sorted(counts.items())]
    lines += ["", "| t (s) | RSS MiB | open fds |", "| ---: | ---: | ---: |"]
    lines += [f"| {t:.0f} | {rss / 1024:.1f} | {fds} |" for t, rss, fds in samples]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Soak with hostile traffic mixed into a normal load")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--sample-s", type=float, default=30)
    args = parser.parse_args()
    text = run(args.minutes, args.sample_s)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    path = out / f"soak-hostile-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.md"
    path.write_text(text)
    print("\n" + text + f"\nwritten to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
