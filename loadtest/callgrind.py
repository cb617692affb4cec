"""Machine instructions per proxied request, by compiled function: the compiled build's
own work, counted by valgrind's callgrind (which counts instructions, not seconds).

`abtest.py` resolves about 2% on a shared VM. Counted twice, the same build's total
moves by several percent (the ledger writer's batches and the event loop's polling follow
timing), the request's own compiled path (the endpoint's call with what it calls) by
about 0.5%, a few hundred instructions, whatever else the machine does: compare that. It
serves the requests of loadtest/opcount.py's harness (the server's HTTP protocol, one keep-alive
connection, the real mock upstream over HTTP) under callgrind with instrumentation off,
warms up, switches it on for the measured requests only (`callgrind_control`), and lists
per request the total and the compiled functions (inclusive: a function with everything
it calls). The kernel is not counted: pair it with `abtest.py`. Needs valgrind (Debian's
package) and a compiled build (`make native`).

    python loadtest/callgrind.py --scenario stream
    python loadtest/callgrind.py --scenario non-stream --base-dir /tmp/older-checkout   # before and after
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
_LINE = re.compile(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+)")
_COUNTED = ("CPyDef_", "PROGRAM")  # compiled functions, and the total


def child(root: Path, scenario: str, requests: int) -> None:
    """Runs under valgrind: serve, say WARM, wait for the word to go on, serve the measured requests."""
    sys.path.insert(0, str(root))
    import proxy  # noqa: F401  (first, from `root`: opcount's imports then resolve under it)

    sys.path.insert(0, str(HERE))
    from opcount import run_scenario

    def start() -> None:
        print("WARM", flush=True)
        sys.stdin.readline()  # the parent switched the instrumentation on

    run_scenario(scenario, requests, start, lambda: print("DONE", flush=True))


def count(root: Path, scenario: str, requests: int, out: Path) -> dict[str, float]:
    """Instructions per request by function (inclusive), `PROGRAM` the total."""
    valgrind = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", sys.executable,
         str(Path(__file__).resolve()), "--child", str(root), "--scenario", scenario, "--requests", str(requests)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert valgrind.stdin is not None and valgrind.stdout is not None
    for line in valgrind.stdout:
        if line.strip() == "WARM":
            break
    else:
        raise SystemExit(f"the harness under valgrind ended before warming up ({root})")
    subprocess.run(["callgrind_control", "--instr=on", str(valgrind.pid)], check=True, capture_output=True)
    valgrind.stdin.write("go\n")
    valgrind.stdin.flush()
    valgrind.communicate()
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
                               capture_output=True, text=True, check=True).stdout
    by_function: dict[str, float] = {}
    for line in annotated.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        name = re.sub(r"'\d+$", "", match.group(2).rsplit(":", 1)[-1])  # recursion marks: one entry per function
        if name.startswith(_COUNTED):
            ops = int(match.group(1).replace(",", "")) / requests
            by_function[name] = max(by_function.get(name, 0.0), ops)
    return by_function


def shown(name: str) -> str:
    """`CPyDef_relay____pump_StreamRelay_gen_____mypyc_generator_helper__` -> `relay._pump_StreamRelay_gen`."""
    name = name.removeprefix("CPyDef_").removesuffix("_____mypyc_generator_helper__")
    module, _, rest = name.partition("___")
    return f"{module}.{rest}" if rest else module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["non-stream", "stream", "cache-hit", "redis-hit", "limits"],
                        default="non-stream")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--base-dir", type=Path, help="a compiled checkout to count beside this one")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.scenario, args.requests)
        return
    with tempfile.TemporaryDirectory() as directory:
        candidate = count(ROOT, args.scenario, args.requests, Path(directory) / "candidate.out")
        base = count(args.base_dir.resolve(), args.scenario, args.requests, Path(directory) / "base.out") \
            if args.base_dir is not None else None
    total = candidate.pop("PROGRAM", 0.0)
    if base is None:
        print(f"{args.scenario}: {total:,.0f} instructions per request (all threads, user space)")
        for name, ops in sorted(candidate.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"{ops:10,.0f}  {shown(name)}")
        return
    base_total = base.pop("PROGRAM", 0.0)
    print(f"{args.scenario}: {base_total:,.0f} -> {total:,.0f} instructions per request "
          f"(x{total / base_total:.3f}: timing moves the total by several percent; "
          "the request's compiled path by about 0.5%)")
    changes = sorted(set(candidate) | set(base), key=lambda n: candidate.get(n, 0.0) - base.get(n, 0.0))
    for name in changes[:args.top]:
        before, after = base.get(name, 0.0), candidate.get(name, 0.0)
        if round(after - before):
            print(f"{after - before:+10,.0f}  {before:10,.0f} -> {after:10,.0f}  {shown(name)}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts run to run
    main()
