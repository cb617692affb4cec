"""Added latency at one connection, Switchyard against the featureless proxy, interleaved.

`make bench` measures each gateway's p50 at one connection and its time to the first
streamed event one gateway after the other; on a shared VM a noisy minute lands on one of
them. Here Switchyard and the featureless proxy (loadtest/featureless.py) run at once,
both on CPU 0, and the probes alternate between them and the mock itself in short rounds,
so the machine's moods fall on all three alike:

- first event: p50 time to the first `data:` line of a stream from a mock that waits
  50 ms between chunks (as `make bench` measures it), over one keep-alive connection;
- c1: p50 of the bench's non-stream request, one at a time over one keep-alive connection.

Each is reported as added over the mock asked directly, and Switchyard's added c1 p50 as
a multiple of the featureless proxy's (the issue's targets: first event ≤ 0.5 ms added,
c1 ≤ 1.5x). The client runs on CPU 1 with the mocks.

    python loadtest/latency.py                    # this checkout
    python loadtest/latency.py --rounds 10 --candidate-dir ../other-checkout
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from abtest import ROOT, Build  # noqa: E402
from bench import wait_port  # noqa: E402
from opcount import free_port, start_mock  # noqa: E402

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
STREAM_BODY = json.dumps({"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
# the wrk script's non-stream request (loadtest/chat.lua)
CHAT_BODY = json.dumps({"model": "mock-gpt", "max_tokens": 64, "temperature": 0.2, "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello and tell me a short fact about the ocean."}]})


def probe_ms(port: int, n: int, stream: bool) -> list[float]:
    """n requests one after the other over one keep-alive connection: each one's time to its
    first `data:` line (stream) or to its whole answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=STREAM_BODY if stream else CHAT_BODY, headers=HEADERS)
        response = conn.getresponse()
        if response.status != 200:
            raise SystemExit(f"port {port} answered {response.status}")
        while stream and not response.readline().startswith(b"data:"):
            if response.isclosed():
                raise SystemExit(f"port {port}: the stream ended before its first event")
        times.append((time.perf_counter() - started) * 1000)
        response.read()
    conn.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate-dir", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    fast_port, slow_port = free_port(), free_port()
    mocks = [start_mock(fast_port), subprocess.Popen(
        [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(slow_port), "--chunks", "3",
         "--chunk-interval-ms", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    gateways: list[tuple[Build, int]] = []
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="switchyard-latency-") as scratch:
        workdir = Path(scratch)
        try:
            wait_port(slow_port)
            for name, featureless in (("switchyard", False), ("featureless", True)):
                for upstream, kind in ((fast_port, "fast"), (slow_port, "slow")):
                    build = Build(f"{name}-{kind}", args.candidate_dir.resolve() if not featureless else ROOT,
                                  workdir, "non-stream", featureless=featureless)
                    port = free_port()
                    build.start(port, upstream)
                    gateways.append((build, port))
            ports = {build.name: port for build, port in gateways}
            os.sched_setaffinity(0, {1})  # the client beside the mocks, never on the gateways' core
            for n in range(args.rounds):
                for name, port in (("switchyard", ports["switchyard-slow"]), ("featureless", ports["featureless-slow"]),
                                   ("direct", slow_port)):
                    samples.setdefault(f"first event {name}", []).extend(probe_ms(port, 10, stream=True)[2:])
                for name, port in (("switchyard", ports["switchyard-fast"]), ("featureless", ports["featureless-fast"]),
                                   ("direct", fast_port)):
                    samples.setdefault(f"c1 {name}", []).extend(probe_ms(port, 300, stream=False)[20:])
                print(f"round {n + 1} of {args.rounds}", flush=True)
        finally:
            for build, _ in gateways:
                build.stop()
            for mock in mocks:
                mock.kill()
    p50 = {key: statistics.median(values) for key, values in samples.items()}
    for what in ("first event", "c1"):
        direct = p50[f"{what} direct"]
        ours, floor = (p50[f"{what} {name}"] - direct for name in ("switchyard", "featureless"))
        print(f"{what}: p50 direct {direct:.3f} ms; added: switchyard +{ours:.3f} ms, "
              f"featureless +{floor:.3f} ms (switchyard {ours / floor:.2f}x)")


if __name__ == "__main__":
    main()
