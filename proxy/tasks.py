"""Background work that must not be collected before it finishes, and must not block a request."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

_background: set[asyncio.Task[None]] = set()


def spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine in the background, holding a reference so it is not collected."""
    try:
        task = asyncio.get_running_loop().create_task(coro)
    except RuntimeError:  # no loop (CLI, tests): nothing can be in flight, run it now
        asyncio.run(coro)
        return
    _background.add(task)
    task.add_done_callback(_background.discard)


async def drain(timeout_s: float = 5.0) -> None:
    """Wait for the background work started so far, and for what that work starts in turn
    (shutdown, and tests that check its effects), for at most `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending := [t for t in _background if not t.done()]:
        left = deadline - loop.time()
        if left <= 0:
            return
        await asyncio.wait(pending, timeout=left)
