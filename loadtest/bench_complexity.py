"""Time `proxy.complexity.classify` on every prompt of the labelled set; print µs per call.

    python loadtest/bench_complexity.py                 # warm: the per-token memo is filled
    python loadtest/bench_complexity.py --cold          # also: the memo emptied before each call
    python loadtest/bench_complexity.py --number 2000 --repeat 7

For each prompt, the time per call is the best of `--repeat` timeit runs of `--number`
calls (the least disturbed run); mean, p50 and p99 are over prompts. Warm is the steady
state of a serving process, whose prompts reuse words; cold bounds a prompt made only of
words never seen before. One process, one core, no I/O.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import timeit
from collections.abc import Sequence
from pathlib import Path

from proxy import complexity

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "complexity_prompts.jsonl"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def warm_us(prompt: str, number: int, repeat: int) -> float:
    complexity.classify(prompt)
    runs = timeit.repeat(lambda: complexity.classify(prompt), number=number, repeat=repeat)
    return min(runs) / number * 1e6


def cold_us(prompt: str, number: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        total = 0
        for _ in range(number):
            complexity._entries.cache_clear()
            start = time.perf_counter_ns()
            complexity.classify(prompt)
            total += time.perf_counter_ns() - start
        best = min(best, total / number / 1e3)
    return best


def summary(label: str, times: list[float]) -> str:
    ordered = sorted(times)
    return (
        f"{label:<22} mean {statistics.fmean(ordered):7.1f}   p50 {percentile(ordered, 50):7.1f}   "
        f"p99 {percentile(ordered, 99):7.1f}   max {ordered[-1]:7.1f}  (µs per call, {len(ordered)} prompts)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--number", type=int, default=1000, help="calls per timeit run")
    parser.add_argument("--repeat", type=int, default=5, help="timeit runs per prompt; the best is kept")
    parser.add_argument("--cold", action="store_true", help="also time with the per-token memo emptied")
    args = parser.parse_args()

    prompts = [json.loads(line)["prompt"] for line in args.data.read_text(encoding="utf-8").splitlines() if line]
    lengths = sorted(len(p) for p in prompts)
    print(
        f"{len(prompts)} prompts, {statistics.fmean(lengths):.0f} chars on average "
        f"(p50 {percentile(lengths, 50)}, max {lengths[-1]}); number={args.number} repeat={args.repeat}"
    )
    warm = [warm_us(p, args.number, args.repeat) for p in prompts]
    print(summary("warm, all", warm))
    near_200 = [t for p, t in zip(prompts, warm, strict=True) if 150 <= len(p) <= 250]
    if near_200:
        print(summary("warm, 150-250 chars", near_200))
    # the worst case: a text past the cap, of which MAX_CHARS characters are scanned
    longest = "\n".join(prompts) * (complexity.MAX_CHARS // sum(lengths) + 1)
    label = f"warm, {complexity.MAX_CHARS}-char cap"
    print(f"{label:<22} {warm_us(longest, 200, args.repeat):7.1f} µs per call (text of {len(longest)} chars)")
    if args.cold:
        number = max(1, args.number // 10)
        cold = [cold_us(p, number, args.repeat) for p in prompts]
        print(summary("cold, all", cold))


if __name__ == "__main__":
    main()
