"""The request path's modules compiled to C with mypyc, and the check that they are current.

`make native` (run by `make test`, `make run`, `make bench` and the Dockerfile) compiles the modules that
`[tool.switchyard.native]` in pyproject.toml lists, each into an extension module beside
its source, which Python then imports instead of the `.py`. Nothing changes in what
the code does: the sources stay the one truth and run as they are where nothing was
compiled (a plain `pip install .`, `make clean`).

A compiled module older than its source would silently run the old code, so a build writes
`proxy/native.json` (each source's SHA-256), and importing `proxy` refuses to start on a
mismatch, naming the source and the two ways out.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
MANIFEST = PACKAGE / "native.json"


class StaleNative(ImportError):
    pass


def source_digest_of(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


def source_digest(path: Path) -> str:
    return source_digest_of(path.read_bytes())


def stale_sources(package: Path = PACKAGE, manifest: Path = MANIFEST) -> list[str]:
    """Sources (relative to the package's parent) whose compiled module was built from other
    text, or compiled modules no build recorded; empty when everything compiled is current."""
    compiled = {p.relative_to(package.parent).as_posix().split(".", 1)[0] + ".py"
                for p in package.rglob("*.so") if not p.name.startswith("_native__mypyc")}
    recorded: dict[str, str] = json.loads(manifest.read_text()) if manifest.exists() else {}
    stale = sorted(compiled - recorded.keys())
    for source, digest in sorted(recorded.items()):
        path = package.parent / source
        if not path.exists() or source_digest(path) != digest:
            stale.append(source)
    return stale


def check(package: Path = PACKAGE, manifest: Path = MANIFEST) -> None:
    """Raise StaleNative when a compiled module does not match its source (nothing compiled
    and no manifest: the sources run as they are)."""
    stale = stale_sources(package, manifest)
    if stale:
        raise StaleNative(
            f"switchyard: {', '.join(stale)} changed since it was compiled, and Python would run the old "
            "compiled code: run `make native` to compile it again, or `make clean-native` to run from source")


def missing_toolchain() -> str | None:
    """What the native build lacks on this machine (a C compiler, Python's headers, mypyc), or None."""
    import importlib.util
    import os
    import shutil
    import sysconfig

    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h; Debian: python3-dev)"
    if importlib.util.find_spec("mypyc") is None:
        return "no mypyc (pip install mypy)"
    return None


def build(modules: list[str], root: Path) -> None:
    """Compile `modules` (paths under `root`, e.g. proxy/validation.py) in place, then record
    their digests, in a tree holding no earlier build (`make native` removes it first: a
    stale one stops `proxy` from importing at all). Needs mypy (mypyc), setuptools and a C
    compiler."""
    import os
    import sys

    from mypyc.build import mypycify
    from setuptools import Distribution

    os.chdir(root)
    extensions = mypycify(modules, opt_level="3", group_name="proxy._native")
    dist = Distribution({"name": "switchyard-native", "ext_modules": extensions})
    dist.script_args = ["build_ext", "--inplace", "--parallel", str(os.cpu_count() or 1)]
    if "-v" not in sys.argv:
        dist.script_args.insert(0, "--quiet")
    dist.parse_command_line()
    dist.run_commands()
    MANIFEST.write_text(json.dumps({m: source_digest(root / m) for m in modules}, indent=1) + "\n")


def main() -> None:
    """Compile the modules pyproject.toml lists (run by `make native`, which first removes any
    earlier build: importing `proxy` refuses a stale one)."""
    import sys
    import tomllib

    root = PACKAGE.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.exists():
        raise SystemExit("switchyard: the native build compiles a source checkout (no pyproject.toml here)")
    modules = tomllib.loads(pyproject.read_text())["tool"]["switchyard"]["native"]["modules"]
    missing = missing_toolchain()
    if missing:
        print(f"switchyard: {missing}: nothing compiled, the request path runs from source "
              "(about a quarter more CPU per request; README, Performance)", file=sys.stderr)
        return
    build(modules, root)
    print(f"compiled {len(modules)} modules with mypyc (proxy/native.json)")
