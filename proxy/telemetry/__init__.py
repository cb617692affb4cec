"""Telemetry for proxied requests: Prometheus metrics, OpenTelemetry spans, access logs.

The endpoint opens a `RequestRecord` with `begin()`, fills it in as the request goes,
and hands it to `end()` once the last byte is out; everything observable is derived
from the finished record there, off the request's critical path. Metrics are always
on (they are counters in memory); tracing costs nothing unless an OTLP endpoint is
configured; the access log follows `telemetry.access_log`.
"""

from __future__ import annotations

from proxy.telemetry.service import Telemetry
from proxy.telemetry.trace_context import TRACE_HEADERS

__all__ = ["TRACE_HEADERS", "Telemetry"]
