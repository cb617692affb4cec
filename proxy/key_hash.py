"""SHA-256 for what the request path hashes: presented keys, and cache keys.

A key is a few dozen bytes, hashed on every request, and a cache key's input a few
hundred for most requests. For input that short, CPython's own SHA-256 (`_sha2` from
3.12, `_sha256` before) beats OpenSSL's, which looks its algorithm up again for each new
hash and copies its state for each digest: on a core idle for a few milliseconds (the
first request after a pause) a key's hash costs 20-50 µs of cache misses with OpenSSL,
10-25 with the builtin, and a served cache hit with a 300-byte key input 2.9 µs less
(loadtest/abtest.py). Past `SHORT_INPUT` bytes OpenSSL's SHA extensions win (2 KB: 1.3
µs against 6), and `hashlib` (OpenSSL) hashes.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from typing import Any

SHORT_INPUT = 1024  # bytes: OpenSSL (SHA-NI) hashes longer input


def _builtin_sha256() -> Callable[[bytes], Any]:
    for module in ("_sha2", "_sha256"):
        try:
            return importlib.import_module(module).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    return hashlib.sha256  # a build without CPython's own hashes: same digest


_short = _builtin_sha256()


def sha256_hex(data: bytes) -> str:
    digest: str = (_short if len(data) <= SHORT_INPUT else hashlib.sha256)(data).hexdigest()
    return digest


def hash_key(key: str) -> str:
    """The SHA-256 (hex) by which a presented key is looked up."""
    return sha256_hex(key.encode())
