"""Before/after CPU per request of two builds of the gateway, measured at the same time.

On a shared VM one run of `make bench` moves by a fifth from the next, and alternating
runs of two builds by almost as much. Here both builds serve at once, pinned to the same
core (CPU 0), each loaded by its own wrk (CPU 1) over the same seconds, so whatever the
machine does to one it does to the other; the ports swap every round to cancel any
advantage of going first. It reports each build's CPU µs per request (user and system, from
/proc) and their ratio per round: the same build against itself gives 1.00 ± 0.02.

    python loadtest/abtest.py --base HEAD~3                  # this checkout against an older commit
    python loadtest/abtest.py --base main --scenario stream --rounds 8
    python loadtest/abtest.py --base-dir ../other-checkout --scenario limits
    python loadtest/abtest.py --base-dir . --scenario cache-hit --candidate-scenario limits   # what a feature costs
    python loadtest/abtest.py --base-featureless                 # Switchyard against the stack's floor
    python loadtest/abtest.py --base-featureless --candidate-scenario cache-hit  # a hit against a proxied request

With --base-featureless the base is loadtest/featureless.py (the pass-through proxy on the
same stack, the issue's floor) proxying the scenario's requests: the same-run ratio of
`make bench`, with both served in the same seconds instead of one after the other, so a
noisy minute on a shared VM moves both alike.

Scenarios as loadtest/opcount.py's: non-stream, stream, cache-hit, limits. Needs wrk
(`make bench-anchors` installs it) and Linux (taskset, /proc).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from opcount import CONFIG, SCENARIOS, free_port, start_mock  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


class Build:
    """One checkout of the gateway, served from its own directory."""

    def __init__(self, name: str, directory: Path, workdir: Path, scenario: str, featureless: bool = False) -> None:
        self.name, self.directory, self.workdir, self.scenario = name, directory, workdir, scenario
        self.featureless = featureless  # loadtest/featureless.py instead of the gateway
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, port: int, upstream_port: int) -> None:
        self.process = subprocess.Popen(["taskset", "-c", "0", *self._command(port, upstream_port)],
                                        cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"{self.name} ({self.directory}) did not start")

    def _command(self, port: int, upstream_port: int) -> list[str]:
        if self.featureless:
            return [sys.executable, str(self.directory / "loadtest" / "featureless.py"), "--port", str(port),
                    "--upstream", f"http://127.0.0.1:{upstream_port}/v1"]
        cache, limits, _ = SCENARIOS[self.scenario]
        ledger = self.workdir / f"{self.name}.db"
        for stale in self.workdir.glob(f"{self.name}.db*"):  # a fresh ledger each round: a big one costs more per row
            stale.unlink()
        config = self.workdir / f"{self.name}.yaml"
        config.write_text(CONFIG.format(ledger=ledger, port=upstream_port, cache=cache, limits=limits)
                          .replace("port: 18080", f"port: {port}"))
        return [sys.executable, "-m", "proxy", "serve", "--config", str(config)]

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
            self.process = None


def wrk(port: int, seconds: int, connections: int, stream: bool) -> subprocess.Popen[str]:
    env = dict(os.environ, MODEL="mock-gpt", STREAM="1" if stream else "0")
    return subprocess.Popen(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(HERE / "chat.lua"),
         f"http://127.0.0.1:{port}/v1/chat/completions"], env=env, stdout=subprocess.PIPE, text=True)


def completed(output: str) -> int:
    found = re.search(r"(\d+) requests in", output)
    if found is None:
        raise SystemExit(f"wrk said: {output[:300]}")
    if re.search(r"Non-2xx or 3xx responses: \d+", output):
        raise SystemExit(f"the gateway refused requests: {output[:300]}")
    return int(found.group(1))


def one_round(builds: list[Build], ports: list[int], upstream: int, args: argparse.Namespace) -> list[float]:
    stream = SCENARIOS[args.scenario][2]
    for build, port in zip(builds, ports, strict=True):
        build.start(port, upstream)
    try:
        for warm in [wrk(port, 3, args.connections, stream) for port in ports]:
            warm.communicate()
        assert all(b.process is not None for b in builds)
        before = [cpu_seconds(b.process.pid) for b in builds]  # type: ignore[union-attr]
        loads = [wrk(port, args.seconds, args.connections, stream) for port in ports]
        outputs = [load.communicate()[0] for load in loads]
        after = [cpu_seconds(b.process.pid) for b in builds]  # type: ignore[union-attr]
    finally:
        for build in builds:
            build.stop()
    figures = []
    for build, output, (u0, s0), (u1, s1) in zip(builds, outputs, before, after, strict=True):
        n = completed(output)
        total, user = (u1 + s1 - u0 - s0) / n * 1e6, (u1 - u0) / n * 1e6
        figures.append(total)
        print(f"  {build.name}: {total:6.1f} µs/request (user {user:.1f}, system {total - user:.1f}), "
              f"{n / args.seconds:,.0f} req/s", end="")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    base = parser.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", help="a git revision of this repository (checked out in a temporary worktree)")
    base.add_argument("--base-dir", type=Path, help="another checkout to compare with")
    base.add_argument("--base-featureless", action="store_true",
                      help="the featureless pass-through proxy (loadtest/featureless.py) as the base")
    parser.add_argument("--candidate-dir", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="non-stream")
    parser.add_argument("--candidate-scenario", choices=sorted(SCENARIOS),
                        help="the candidate serves this config instead (same streaming as --scenario): "
                             "with --base-dir ., what a feature costs")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=25, help="per build (two builds share the core)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="switchyard-ab-") as scratch:
        workdir = Path(scratch)
        base_dir = ROOT if args.base_featureless else args.base_dir
        if args.base is not None:
            base_dir = workdir / "base"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_dir), args.base],
                           check=True, capture_output=True)
        candidate_scenario = args.candidate_scenario or args.scenario
        if SCENARIOS[candidate_scenario][2] != SCENARIOS[args.scenario][2]:
            raise SystemExit("--candidate-scenario must stream as --scenario does: one wrk script serves both")
        builds = [Build("featureless" if args.base_featureless else "base", base_dir.resolve(), workdir,
                        args.scenario, featureless=args.base_featureless),
                  Build("candidate", args.candidate_dir.resolve(), workdir, candidate_scenario)]
        upstream = free_port()
        mock = start_mock(upstream)
        ratios: list[float] = []
        differences: list[float] = []
        try:
            print(f"base {builds[0].directory} ({args.scenario}), candidate {builds[1].directory} "
                  f"({candidate_scenario})")
            for n in range(args.rounds):
                ports = [free_port(), free_port()]
                order = builds if n % 2 == 0 else builds[::-1]  # who goes first alternates
                print(f"round {n + 1}:", end="")
                figures = dict(zip([b.name for b in order], one_round(order, ports, upstream, args), strict=True))
                ratios.append(figures["candidate"] / figures[builds[0].name])
                differences.append(figures["candidate"] - figures[builds[0].name])
                print(f"  candidate/base {ratios[-1]:.3f}", flush=True)
        finally:
            mock.kill()
            if args.base is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_dir)],
                               capture_output=True)
    print(f"candidate/base CPU per request: median {statistics.median(ratios):.3f} "
          f"(rounds {min(ratios):.3f} to {max(ratios):.3f}); candidate - base: median "
          f"{statistics.median(differences):+.1f} µs")
    if args.base_featureless:  # one saturated core serves 1/CPU-per-request: the bench's throughput ratio
        print(f"candidate throughput on one core: {1 / statistics.median(ratios):.0%} of the featureless proxy's")


if __name__ == "__main__":
    main()
