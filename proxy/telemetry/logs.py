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
import sys
import time
from typing import Any

import orjson

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
    if configured in FORMATS:
        return configured  # type: ignore[return-value]
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
    """A USD amount for a log line or an event: float noise (0.000010949999999999998) cut off."""
    return None if usd is None else round(usd, 10)
