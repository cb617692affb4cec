"""Presented keys are hashed with CPython's own SHA-256: same digests as hashlib's."""

from __future__ import annotations

import hashlib
import sys

import pytest

from proxy import key_hash
from proxy.key_hash import hash_key


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
    assert type(key_hash._sha256(b"")).__module__ in ("_sha2", "_sha256")
