"""One access-log line per proxied request on the `switchyard.access` logger.

The line's fields travel as `extra`; the process formatter (telemetry/logs.py) renders
them as JSON keys or `key=value` text. Never a key, a header value or prompt text:
only names, numbers and outcomes.
"""

from __future__ import annotations

import logging
from typing import Any

from proxy.telemetry.record import RequestRecord
from proxy.usage import tokens

log = logging.getLogger("switchyard.access")


def fields(record: RequestRecord) -> dict[str, Any]:
    input_tokens, output_tokens = tokens(record.usage)
    ttft = record.ttft()
    return {
        "request_id": record.request_id,
        "operation": record.operation,
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
        "attempts": sum(a.outcome != "circuit_open" for a in record.attempts),
        "input_tokens": input_tokens if record.usage is not None else None,
        "output_tokens": output_tokens if record.usage is not None else None,
        "cost_usd": record.cost_usd,
        "saved_usd": record.saved_usd,
        "latency_ms": round(record.duration() * 1000, 3),
        "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
        "overhead_ms": round(record.overhead() * 1000, 3),
    }


def write(record: RequestRecord) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info("request", extra={"fields": fields(record)})
