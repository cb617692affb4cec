"""Facts shipped inside the package, kept out of the code: the price list, the complexity
classifier's vocabulary, and the Lua scripts Redis runs. Read with importlib.resources,
so they are there wherever the package is installed."""

from __future__ import annotations

from importlib import resources


def text(name: str) -> str:
    """A data file's contents."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
