"""One access-log line per proxied request on the `switchyard.access` logger.

The line's fields travel as `extra`; the process formatter (telemetry/logs.py) renders
them as JSON keys or `key=value` text. Never a key, a header value or prompt text:
only names, numbers and outcomes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

import orjson

from proxy.pipeline.record import RequestRecord, ms, tries
from proxy.telemetry.logs import money

log: Final = logging.getLogger("switchyard.access")


_HEAD: Final = ("ts", "level", "logger")  # a JSON line's first keys; the logging formatter adds its own


def fields(record: RequestRecord, ts: str = "") -> dict[str, Any]:
    """The line as one dict, built once (it is on every request's path): the JSON line's
    `ts`, `level` and `logger` first; `write` takes those out for the logging formatter."""
    input_tokens, output_tokens = record.tokens()
    ttft = record.ttft()
    return {
        "ts": ts,
        "level": "info",
        "logger": "switchyard.access",
        "request_id": record.request_id,
        "operation": record.operation,
        "endpoint": record.endpoint,
        "team": record.team,
        "user": record.user,
        "requested_model": record.requested_model,
        "route": record.route,
        "provider": record.provider,
        "model": record.model,
        "stream": record.stream,
        "status": record.status,
        "outcome": record.outcome,
        "error": record.error_kind,
        "cache": record.cache,
        "experiment": record.experiment,
        "variant": record.variant,
        "prompt": None if record.prompt_id is None else f"{record.prompt_id}@{record.prompt_version}",
        "attempts": tries(record.attempts),
        "input_tokens": input_tokens if record.usage is not None else None,
        "output_tokens": output_tokens if record.usage is not None else None,
        "cost_usd": money(record.cost_usd),
        "saved_usd": money(record.saved_usd),
        "latency_ms": ms(record.duration()),
        "ttft_ms": None if ttft is None else ms(ttft),
        "overhead_ms": ms(record.overhead()),
    }


def write(record: RequestRecord) -> None:
    if log.isEnabledFor(logging.INFO):
        line = fields(record)
        for key in _HEAD:
            del line[key]
        log.info("request", extra={"fields": line})


class BufferedJsonLines:
    """The served process's JSON access log: lines gathered and written every
    `interval_s` (or every 64 KiB) in one write, instead of a logging record, a
    formatter call and a flushed write per request. Same shape as the JSON formatter's
    lines; they may trail other log lines by up to `interval_s`."""

    def __init__(self, stream: Any, interval_s: float = 0.2) -> None:
        self._stream = getattr(stream, "buffer", stream)
        self._text = self._stream is stream  # a text stream without .buffer
        self.interval_s = interval_s
        self._parts: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def write(self, record: RequestRecord) -> None:
        line = orjson.dumps(fields(record, _utc_now()), option=orjson.OPT_APPEND_NEWLINE)
        self._parts.append(line)
        self._size += len(line)
        if self._size >= 65536:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(self.interval_s, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._parts:
            return
        data, self._parts, self._size = b"".join(self._parts), [], 0
        try:
            self._stream.write(data.decode() if self._text else data)
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not break serving
            pass


_second: Final[list[Any]] = [-1, ""]  # the formatted whole second, reused for every line within it
_MILLIS: Final = [f".{n:03d}Z" for n in range(1000)]  # a line's ".mmmZ", looked up instead of formatted


def _utc_now() -> str:
    # whole milliseconds from the integer clock: from time.time()'s float, int((now - whole) * 1000)
    # lands one below for about half of all milliseconds (.612 is 0.61199... after the subtraction)
    return utc_stamp(time.time_ns() // 1_000_000)


def utc_stamp(millis: int) -> str:
    """`millis` since the epoch as the access line's UTC time, 2026-12-02T18:45:07.612Z."""
    whole = millis // 1000
    if whole != _second[0]:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return str(_second[1]) + _MILLIS[millis % 1000]
