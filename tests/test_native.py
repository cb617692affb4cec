"""The native build (proxy/native.py): compiled modules are used only while they match their sources."""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import json
import sys
import tomllib
from pathlib import Path

import pytest

from proxy import native

ROOT = Path(__file__).resolve().parent.parent
SO = importlib.machinery.EXTENSION_SUFFIXES[0]  # .cpython-311-<arch>-linux-gnu.so


def _package(tmp_path: Path, compiled: dict[str, str], sources: dict[str, str]) -> tuple[Path, Path]:
    """A package `pkg` under tmp_path with the given sources, fake compiled modules, and a
    manifest recording `compiled` (source path -> the text it was compiled from)."""
    package = tmp_path / "pkg"
    package.mkdir()
    for name, text in sources.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for name in compiled:
        compiled_module = tmp_path / (name.removesuffix(".py") + SO)
        compiled_module.parent.mkdir(parents=True, exist_ok=True)
        compiled_module.write_bytes(b"\x7fELF")
    manifest = package / "native.json"
    manifest.write_text(json.dumps({name: native.source_digest_of(text.encode()) for name, text in compiled.items()}))
    return package, manifest


@pytest.mark.parametrize(("compiled", "sources", "stale"), [
    ({"pkg/a.py": "x = 1\n"}, {"pkg/a.py": "x = 1\n"}, []),
    ({"pkg/a.py": "x = 1\n"}, {"pkg/a.py": "x = 2\n"}, ["pkg/a.py"]),
    ({"pkg/a.py": "x = 1\n", "pkg/sub/b.py": "y = 1\n"}, {"pkg/a.py": "x = 1\n", "pkg/sub/b.py": "y = 3\n"},
     ["pkg/sub/b.py"]),
    ({"pkg/a.py": "x = 1\n"}, {}, ["pkg/a.py"]),  # the source is gone
], ids=["current", "edited", "edited in a subpackage", "source removed"])
def test_stale_sources(tmp_path, compiled, sources, stale):
    package, manifest = _package(tmp_path, compiled, sources)
    assert native.stale_sources(package, manifest) == stale


def test_a_compiled_module_no_build_recorded_is_stale(tmp_path):
    package, manifest = _package(tmp_path, {}, {"pkg/a.py": "x = 1\n"})
    (package / ("a" + SO)).write_bytes(b"\x7fELF")
    assert native.stale_sources(package, manifest) == ["pkg/a.py"]
    manifest.unlink()
    with pytest.raises(native.StaleNative):
        native.check(package, manifest)


def test_a_stale_build_refuses_to_load_naming_the_source_and_the_ways_out(tmp_path):
    package, manifest = _package(tmp_path, {"pkg/a.py": "x = 1\n"}, {"pkg/a.py": "x = 2\n"})
    with pytest.raises(ImportError) as raised:
        native.check(package, manifest)
    message = str(raised.value)
    assert "pkg/a.py" in message and "make native" in message and "make clean-native" in message


def test_nothing_compiled_runs_from_source(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    native.check(package, package / "native.json")  # no build, no manifest: nothing to check


def test_the_listed_modules_are_the_ones_imported():
    """With a build (`make test` makes one) each listed module is imported compiled; without one,
    from its source. Either way the tree is consistent."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["switchyard"]["native"]["modules"]
    assert listed and all((ROOT / m).exists() for m in listed)
    assert native.stale_sources() == []
    built = native.MANIFEST.exists()
    if built:
        assert sorted(json.loads(native.MANIFEST.read_text())) == sorted(listed)
    for source in listed:
        name = source.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        module = sys.modules.get(name) or importlib.import_module(name)
        assert str(module.__file__).endswith(".so") == built, name


def test_without_a_compiler_nothing_is_compiled_and_it_says_why(monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert native.missing_toolchain() == "no C compiler (no-such-compiler-here)"


def awaits_in_except_blocks(source: str) -> list[int]:
    """Lines of the `await`s inside `except` blocks (nested functions included)."""
    return sorted({sub.lineno for handler in ast.walk(ast.parse(source)) if isinstance(handler, ast.ExceptHandler)
                   for sub in ast.walk(handler) if isinstance(sub, ast.Await)})


@pytest.mark.parametrize(("source", "lines"), [
    ("async def f():\n    try:\n        await g()\n    except E:\n        pass\n    await h()\n", []),
    ("async def f():\n    try:\n        pass\n    except E:\n        await h()\n", [5]),
    ("async def f():\n    try:\n        pass\n    except E:\n        if x:\n            return await h()\n", [6]),
    ("async def f():\n    try:\n        pass\n    finally:\n        await h()\n", []),  # (a finally is not this)
])
def test_awaits_in_except_blocks_are_found(source, lines):
    assert awaits_in_except_blocks(source) == lines


def test_no_compiled_module_awaits_inside_an_except_block():
    """Compiled by mypyc, an `await` inside an `except` block can raise the caught exception
    again, or leave it in the thread's handled-exception state for another request's `finally`
    to raise: the compiled modules await their fallbacks and refusals after the block."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["switchyard"]["native"]["modules"]
    found = {m: lines for m in listed if (lines := awaits_in_except_blocks((ROOT / m).read_text()))}
    assert found == {}
