"""Live reload of proxy.yaml: file watching, SIGHUP and the admin endpoint all end here.

The watcher observes the file's directory, not the file: editors and Kubernetes
ConfigMaps replace a file by renaming another over it (a ConfigMap swaps a `..data`
symlink), which a watch on the old inode would never see. Any event in the directory
triggers a re-read; the holder ignores content whose hash it already serves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import watchfiles

from proxy.snapshot import SnapshotHolder

log = logging.getLogger("switchyard.config")


def reload_now(holder: SnapshotHolder, why: str, *, force: bool = False, allow_drop: bool = False) -> str:
    before = holder._current
    was_rejected = holder.last_failure is not None
    result = holder.load(force=force, allow_drop=allow_drop)
    if result == "ok":
        snap = holder.current
        # `switchyard serve` has said all this once already for the file its workers load
        told = why == "startup" and os.environ.get("SWITCHYARD_STARTUP_DIGEST") == snap.digest
        log.log(logging.DEBUG if told else logging.INFO, "config generation %d loaded from %s (%s, digest %s)",
                snap.generation, snap.source, why, snap.digest)
        if was_rejected:
            log.info("config is valid again: the rejected edit is fixed")
        # once per change: a warning that held before this reload was logged then
        known = () if before is None else before.warnings
        for warning in () if told else snap.warnings:
            if warning not in known:
                log.warning("config: %s", warning)
    elif result == "unchanged" and was_rejected:
        log.info("config is valid again: the file is back to generation %d, which kept serving",
                 holder.current.generation)
    elif result == "error":
        failure = holder.last_failure
        assert failure is not None
        serving = holder._current  # None while starting: nothing to fall back on
        state = f"still serving generation {serving.generation}" if serving is not None else "nothing loaded"
        for path, reason in failure.problems:
            log.error("config rejected (%s), %s: %s: %s: %s", why, state, holder.path, path or "<file>", reason)
    return result


class ConfigWatcher:
    """Reloads the holder's file when it changes; start() in the server's lifespan.

    A change is applied only once the file has stood still for `settle_ms` (an editor or
    a script writing in pieces is not read half-way), and at most `max_wait_s` after the
    first event whatever happens; a file that does not parse then is rejected and the
    next write triggers another try."""

    def __init__(self, holder: SnapshotHolder, *, debounce_ms: int = 100, settle_ms: int = 300,
                 max_wait_s: float = 5.0) -> None:
        self.holder = holder
        self.debounce_ms = debounce_ms
        self.settle_ms = settle_ms
        self.max_wait_s = max_wait_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.holder.path))
        while not self._stop.is_set():
            try:
                async for _changes in watchfiles.awatch(
                    directory, watch_filter=_ConfigFilter(self.holder.path), debounce=self.debounce_ms,
                    step=25, stop_event=self._stop, recursive=False, rust_timeout=1000,
                ):
                    await self._settled()
                    reload_now(self.holder, "file changed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a vanished directory or an inotify limit must not end watching
                log.warning("config watch failed (%s); retrying in 1 s", exc)
                await asyncio.sleep(1)


    async def _settled(self) -> None:
        """Wait until the file's size, time and contents hold still for settle_ms."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        last = _fingerprint(self.holder.path)
        while loop.time() < deadline:
            await asyncio.sleep(self.settle_ms / 1000)
            now = _fingerprint(self.holder.path)
            if now == last:
                return
            last = now


def _fingerprint(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
        with open(path, "rb") as fh:
            return stat.st_size, stat.st_mtime_ns, hash(fh.read())
    except OSError:
        return None


class _ConfigFilter:
    """Only changes that can alter what the config path reads: the file itself (written
    in place or renamed over) and a ConfigMap's `..data` links. Other files in the same
    directory (logs, say) must not cause reloads."""

    def __init__(self, path: str) -> None:
        self.name = os.path.basename(path)

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        name = os.path.basename(path)
        return name == self.name or name.startswith("..")


def install_sighup(holder: SnapshotHolder) -> bool:
    """Reload on SIGHUP. False where the platform or loop cannot take signal handlers."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_now, holder, "SIGHUP")
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True
