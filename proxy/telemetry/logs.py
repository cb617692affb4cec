"""Process logging: one JSON object per line (default) or plain text, for every logger.

Set up once per process (the CLI, and each worker the server spawns) from
`telemetry.log_format` and the CLI's `--log-level`. Access-log records carry their
fields in `extra={"fields": ...}`; in JSON they become top-level keys.
"""

from __future__ import annotations

import logging
import os
import time

import orjson

_CONFIGURED = False


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


def setup_logging(log_format: str | None = None, level: str | None = None) -> None:
    """Idempotent per process; later calls only change the format."""
    global _CONFIGURED
    log_format = log_format or os.environ.get("SWITCHYARD_LOG_FORMAT", "json")
    level = (level or os.environ.get("SWITCHYARD_LOG_LEVEL", "info")).upper()
    root = logging.getLogger()
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    if _CONFIGURED:
        for handler in root.handlers:
            handler.setFormatter(formatter)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every file event at info
    _CONFIGURED = True
