"""The SHA-256 by which presented keys are looked up.

A key is a few dozen bytes, hashed on every request. For input that short, CPython's own
SHA-256 (`_sha2` from 3.12, `_sha256` before) beats OpenSSL's: OpenSSL 3 looks its
algorithm up again on each new hash, which on a core that has been idle for a few
milliseconds costs 20-50 µs of cache misses (the builtin: 10-25), and about the same
when warm. Long input (cache keys) stays with `hashlib`, where OpenSSL's SHA extensions win.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from typing import Any


def _short_input_sha256() -> Callable[[bytes], Any]:
    for module in ("_sha2", "_sha256"):
        try:
            return importlib.import_module(module).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    return hashlib.sha256  # a build without CPython's own hashes: same digest


_sha256 = _short_input_sha256()


def hash_key(key: str) -> str:
    """The SHA-256 (hex) by which a presented key is looked up."""
    return str(_sha256(key.encode()).hexdigest())
