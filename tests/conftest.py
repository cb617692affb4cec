"""Suite-wide fixtures: the in-process app behind an httpx client (`app_client`), and the
shared test Redis left as it was found. And a socket left open is named with the test
that opened it."""

from __future__ import annotations

from asyncio import selector_events
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy.app import create_app
from support import REDIS_PREFIX, REDIS_URL, AppClient

MakeAppClient = Callable[..., Awaitable[AppClient]]


@pytest.fixture
async def app_client(tmp_path: Path) -> AsyncIterator[MakeAppClient]:
    """`await app_client(config_text, path=None, **create_app_kwargs)`: writes the config
    (to `path`, by default the test's tmp_path/proxy.yaml), builds the app (not watching
    the file unless `watch=` says so) and returns an `AppClient` on it (`.app`, `.runtime`).

    Every client and runtime made is closed at teardown; `await client.aclose()` closes
    one earlier (to read what its shutdown wrote, or to start another on the same files).
    """
    made: list[AppClient] = []

    async def make(config_text: str, *, path: Path | None = None, **create_app_kwargs: Any) -> AppClient:
        target = path if path is not None else tmp_path / "proxy.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(config_text)
        create_app_kwargs.setdefault("watch", False)
        app = create_app(str(target), **create_app_kwargs)
        client = AppClient(app)
        made.append(client)
        return client

    yield make
    for client in reversed(made):
        await client.aclose()


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


# A socket a test leaves open is found by the garbage collector later, in whichever test
# happens to be running then: its "unclosed transport" ResourceWarning (an error here) fails
# that test, not the one that leaked it. Each asyncio transport remembers the test that made
# it and says so in its repr, which is what the warning prints.
_running = ["(no test)"]
_transport_init = selector_events._SelectorTransport.__init__
_transport_repr = selector_events._SelectorTransport.__repr__


def _init_noting_the_test(self: Any, *args: Any, **kwargs: Any) -> None:
    _transport_init(self, *args, **kwargs)
    self._opened_in = _running[0]


def _repr_naming_the_test(self: Any) -> str:
    return f"{_transport_repr(self)[:-1]} opened in {getattr(self, '_opened_in', '?')}>"


selector_events._SelectorTransport.__init__ = _init_noting_the_test  # type: ignore[method-assign]
selector_events._SelectorTransport.__repr__ = _repr_naming_the_test  # type: ignore[method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    _running[0] = item.nodeid
    yield
