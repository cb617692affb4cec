"""Process logging: one JSON object per line or human-readable text, for every logger.

Which of the two: `$SWITCHYARD_LOG_FORMAT` (json | text) when set, else
`telemetry.log_format` when it names one, else text when stderr is a terminal and JSON
otherwise (a container, a pipe, a file). Python warnings (scipy's, prometheus-client's)
go through the same handler, so every line on stderr has the one format.

Set up once per process (the CLI, and each worker the server spawns) and again when a
reload changes `telemetry.log_format`. Access-log records carry their fields in
`extra={"fields": ...}`; in JSON they become top-level keys.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections import OrderedDict
from typing import Any

import orjson

from proxy.pipeline.record import rounded  # (record imports nothing of telemetry)

_CONFIGURED = False
FORMATS = ("json", "text")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.msg = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
            record.args = None
        return super().format(record)


def resolve_format(configured: str | None = None, stream: Any = None) -> str:
    """json or text: the environment's choice, the config's, or what suits the terminal."""
    chosen = os.environ.get("SWITCHYARD_LOG_FORMAT", "").strip().lower()
    if chosen in FORMATS:
        return chosen
    if configured is not None and configured in FORMATS:
        return configured
    stream = sys.stderr if stream is None else stream
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no stream, or a closed one
        return "json"


def setup_logging(log_format: str | None = None, level: str | None = None) -> str:
    """Idempotent per process; later calls only change the format. Returns the format used."""
    global _CONFIGURED
    log_format = resolve_format(log_format)
    level = (level or os.environ.get("SWITCHYARD_LOG_LEVEL", "info")).upper()
    root = logging.getLogger()
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    if _CONFIGURED:
        for handler in root.handlers:
            handler.setFormatter(formatter)
        return log_format
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every file event at info
    logging.captureWarnings(True)  # warnings.warn() lines become log records of `py.warnings`
    _CONFIGURED = True
    return log_format


def money(usd: float | None) -> float | None:
    """A USD amount for a log line or an event: float noise (0.000010949999999999998) cut off
    at ten decimals, as round(usd, 10) does, at a fraction of its cost (twice on every request)."""
    if usd is None:
        return None
    scaled = usd * 1e10
    return rounded(scaled) / 1e10 if -1e300 < scaled < 1e300 else usd  # inf and NaN as they are


# key-shaped tokens: OpenAI/Anthropic style (sk-..., sk-ant-...), and long opaque strings
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_*.-]{2})[A-Za-z0-9_*.-]{6,}|\b([A-Za-z0-9_-]{4})[A-Za-z0-9_-]{28,}")


def redact(text: str, *secrets: str | None) -> str:
    """`text` (a provider's error message, say) fit for a log line: the given secrets and
    anything shaped like an API key masked, and cut to a sane length."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "<redacted>")
    text = _KEYLIKE.sub(lambda m: (m.group(1) or m.group(2)) + "…<redacted>", text)
    return text[:500]


class Throttled:
    """Log a recurring problem once per `interval_s` per key, saying how often it recurred
    meanwhile; at most `max_keys` keys are remembered, so keys that clients can choose
    (model names) cannot grow it without bound."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0, max_keys: int = 1024,
                 clock: Any = time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._clock = clock
        self._seen: OrderedDict[str, list[float | int]] = OrderedDict()  # key -> [last logged, suppressed]

    def warning(self, key: str, message: str, *args: Any) -> bool:
        """True when the line was written."""
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            return False
        suppressed = int(seen[1]) if seen is not None else 0
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        if suppressed:
            message += f" (and {suppressed} more times in the last {self.interval_s:g} s)"
        self.logger.warning(message, *args)
        return True
