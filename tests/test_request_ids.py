"""Request ids the gateway makes (proxy/pipeline/body.py): their shape, order and uniqueness,
across the counter's table boundary and a fork."""

from __future__ import annotations

import os
import re

import pytest

from proxy.pipeline.body import RequestIds, request_id

SHAPE = re.compile(r"req_[0-9a-f]{32}")


def ids_from(ids: RequestIds, count: int, n: int) -> list[str]:
    ids.count = count
    return [ids.next_id() for _ in range(n)]


@pytest.mark.parametrize("start", [0, 1, 255, 256, 65_534, 65_535, 65_536, 2**24 - 3, 2**32 - 2, 2**44 - 5])
def test_ids_are_shaped_unique_and_in_order(start):
    """Each id is the prefix and the counter in 12 hex digits: the ledger's index on ids is
    appended to, so they must sort as they are made, across the 4-digit table's wrap too."""
    ids = RequestIds()
    made = ids_from(ids, start, 600)
    assert all(SHAPE.fullmatch(one) for one in made)
    assert made == sorted(made) and len(set(made)) == len(made)
    assert [int(one[-12:], 16) for one in made] == list(range(start + 1, start + 601))
    assert {one[:24] for one in made} == {ids.prefix}


def test_a_fresh_prefix_starts_again_from_one():
    ids = RequestIds()
    first = ids_from(ids, 41, 1)[0]
    ids.reseed()
    again = ids.next_id()
    assert again[:24] != first[:24] and again.endswith("000000000001")


def test_a_forked_worker_has_its_own_prefix():
    parent = request_id({})
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then out without running the parent's teardown
        os.write(write, request_id({}).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert SHAPE.fullmatch(child) and child[:24] != parent[:24]


@pytest.mark.parametrize(("given", "kept"), [
    ("abc-123", True), ("a" * 128, True), ("a" * 129, False), ("has space", False), ("", False),
    ("trace:1.2_3", True), ("ünï", False),
])
def test_a_client_id_is_kept_when_sane(given, kept):
    made = request_id({"x-request-id": given})
    assert (made == given) is kept
    if not kept:
        assert SHAPE.fullmatch(made)
