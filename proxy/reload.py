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


def reload_now(holder: SnapshotHolder, why: str, *, force: bool = False) -> str:
    before = holder._current
    was_rejected = holder.last_failure is not None
    result = holder.load(force=force)
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
    """Reloads the holder's file when it changes; start() in the server's lifespan."""

    def __init__(self, holder: SnapshotHolder, *, debounce_ms: int = 100) -> None:
        self.holder = holder
        self.debounce_ms = debounce_ms
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
                    reload_now(self.holder, "file changed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a vanished directory or an inotify limit must not end watching
                log.warning("config watch failed (%s); retrying in 1 s", exc)
                await asyncio.sleep(1)


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
