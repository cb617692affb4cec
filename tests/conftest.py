"""Suite-wide fixtures: the shared test Redis is left as it was found."""

from __future__ import annotations

from typing import Iterator

import pytest
import redis

from support import REDIS_PREFIX, REDIS_URL


@pytest.fixture(scope="session", autouse=True)
def clean_test_redis() -> Iterator[None]:
    """Delete every key this run wrote to the shared Redis (they all carry its prefix)."""
    yield
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=10)
        doomed = list(client.scan_iter(match=f"{REDIS_PREFIX}*", count=1000))
        for start in range(0, len(doomed), 500):
            client.delete(*doomed[start:start + 500])
        client.close()
    except redis.RedisError:  # the tests that needed it have failed loudly already
        pass
