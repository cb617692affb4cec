"""What the rest of the gateway needs to know of tracing without loading OpenTelemetry's SDK
and its OTLP exporter (several MiB): the header names, where traces go, if anywhere, and
how long a shutdown may take. `tracing.py` is imported only when tracing is on."""

from __future__ import annotations

import os

from proxy.config import TelemetryConfig

TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
SHUTDOWN_TIMEOUT_S = 3.0


def otlp_traces_endpoint(settings: TelemetryConfig) -> str | None:
    """The traces URL from the config, else from the standard OTEL_* variables, else None (off)."""
    if settings.otlp_endpoint:
        base = settings.otlp_endpoint.rstrip("/")
        return base if base.endswith("/v1/traces") else base + "/v1/traces"
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    explicit = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if explicit:
        return explicit
    general = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return general.rstrip("/") + "/v1/traces" if general else None
