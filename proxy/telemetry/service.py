"""The telemetry of a served process: one `Telemetry` the endpoint hands each request's
record to (the package's docstring says what it derives from it). Its own module, not the
package's `__init__`, so that `make native` compiles it with the request path."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from proxy.config import TelemetryConfig
from proxy.pipeline.record import RequestRecord
from proxy.telemetry import access_log
from proxy.telemetry.logs import setup_logging
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.trace_context import SHUTDOWN_TIMEOUT_S, otlp_traces_endpoint

if TYPE_CHECKING:
    from proxy.live import LiveStats
    from proxy.telemetry.tracing import Tracing

log = logging.getLogger("switchyard.telemetry")


class Telemetry:
    def __init__(self) -> None:
        self.metrics = Metrics()
        # imported here: proxy.live's WebSocket checks admin keys (proxy.auth), which imports this package
        from proxy.live import LiveStats

        self.live: LiveStats = LiveStats()  # per-second numbers for /admin/live
        self.tracing: Tracing | None = None
        self.settings = TelemetryConfig()
        # read per request: plain fields (compiled, a pydantic attribute is a generic lookup)
        self.capture_content = self.settings.capture_content
        self.access_log = self.settings.access_log
        self._endpoint: str | None = None
        self._lines: access_log.BufferedJsonLines | None = None

    def configure(self, settings: TelemetryConfig) -> None:
        """Apply a (re)loaded `telemetry:` section; a changed endpoint swaps the exporter."""
        if os.environ.get("SWITCHYARD_MANAGE_LOGGING") == "1":  # a served process, not a test
            log_format = setup_logging(settings.log_format)
            fast = settings.access_log and log_format == "json" and access_log.log.isEnabledFor(logging.INFO)
            if fast and self._lines is None:
                self._lines = access_log.BufferedJsonLines(sys.stderr)
            elif not fast and self._lines is not None:
                self._lines.flush()
                self._lines = None
        endpoint = otlp_traces_endpoint(settings)
        tracing_changed = endpoint != self._endpoint or (
            endpoint is not None
            and (settings.service_name, settings.sample_ratio, settings.capture_content)
            != (self.settings.service_name, self.settings.sample_ratio, self.settings.capture_content)
        )
        self.settings = settings
        self.capture_content, self.access_log = settings.capture_content, settings.access_log
        if not tracing_changed:
            return
        old, self.tracing, self._endpoint = self.tracing, None, endpoint
        if endpoint is not None:
            from proxy.telemetry.tracing import Tracing  # OpenTelemetry's SDK: loaded only when used

            self.tracing = Tracing(settings, endpoint)
            log.info("tracing on: OTLP/HTTP to %s", endpoint)
        elif old is not None:
            log.info("tracing off")
        if old is not None:
            _shutdown_later(old)

    def begin(self, request_id: str, operation: str, headers: Mapping[str, str]) -> RequestRecord:
        record = RequestRecord(request_id, operation)
        self.metrics.started()
        self.live.started()
        if self.tracing is not None:
            self.tracing.start(record, headers)
        return record

    def upstream_trace_headers(self, record: RequestRecord) -> list[tuple[str, str]]:
        """Starts the attempt span; `traceparent` for the upstream call ([] with tracing off)."""
        return [] if self.tracing is None else self.tracing.start_attempt(record)

    def attempt_failed(self, record: RequestRecord, error_kind: str, message: str | None = None) -> None:
        if self.tracing is not None:
            self.tracing.attempt_failed(record, error_kind, message)

    def end(self, record: RequestRecord) -> None:
        self.metrics.finished(record)
        self.live.add(record)
        if self.tracing is not None:
            self.tracing.finish(record)
        if self._lines is not None:
            self._lines.write(record)
        elif self.access_log:
            access_log.write(record)

    async def aclose(self) -> None:
        if self._lines is not None:
            self._lines.flush()
        tracing, self.tracing = self.tracing, None
        if tracing is not None:
            try:  # bounded inside too; this is the belt to those braces
                await asyncio.wait_for(asyncio.to_thread(tracing.shutdown), SHUTDOWN_TIMEOUT_S + 2)
            except TimeoutError:
                log.warning("tracing: spans not yet exported were dropped at shutdown (collector unreachable)")


def _shutdown_later(tracing: Tracing) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        tracing.shutdown()
        return
    loop.run_in_executor(None, tracing.shutdown)

