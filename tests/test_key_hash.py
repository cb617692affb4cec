"""Keys and short cache-key inputs are hashed with CPython's own SHA-256: same digests as hashlib's."""

from __future__ import annotations

import hashlib
import sys

import pytest

from proxy import key_hash
from proxy.key_hash import SHORT_INPUT, hash_key, sha256_hex


@pytest.mark.parametrize("key", [
    "", "sk-bench", "sk-" + "x" * 61, "sk-ünïcödé-🔑", "k" * 55, "k" * 56, "k" * 64, "k" * 1000,
    "sk-proj-" + "0123456789abcdef" * 8,
])
def test_same_digest_as_hashlib(key: str) -> None:
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()


def test_known_vector() -> None:  # FIPS 180-2's "abc"
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's own hash modules")
def test_uses_cpythons_own_sha256_not_openssls() -> None:
    assert type(key_hash._short(b"")).__module__ in ("_sha2", "_sha256")


@pytest.mark.parametrize("size", [0, 1, 55, 64, SHORT_INPUT - 1, SHORT_INPUT, SHORT_INPUT + 1, 20_000])
def test_any_length_hashes_as_hashlib_does(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert sha256_hex(data) == hashlib.sha256(data).hexdigest()
