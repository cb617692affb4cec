"""OpenTelemetry spans per the GenAI semantic conventions, exported over OTLP/HTTP.

One SERVER span per proxied request (`chat {model}`), and one CLIENT child span per
upstream attempt whose context travels upstream in `traceparent`. A client's own
`traceparent` makes the server span its child. Each `Tracing` owns its tracer provider,
so a config reload that changes the endpoint swaps providers without touching globals.
Prompt and completion text go on spans only with `telemetry.capture_content: true`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from proxy.config import TelemetryConfig
from proxy.pipeline.record import RequestRecord, tries
from proxy.telemetry.trace_context import SHUTDOWN_TIMEOUT_S

log = logging.getLogger("switchyard.telemetry")

_PROPAGATOR = TraceContextTextMapPropagator()
EXPORT_TIMEOUT_S = 5.0


class Tracing:
    def __init__(self, settings: TelemetryConfig, endpoint: str) -> None:
        service = os.environ.get("OTEL_SERVICE_NAME") or settings.service_name
        self.provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: service}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        # each export (with the exporter's own retries) gives up after EXPORT_TIMEOUT_S, so an
        # unreachable collector never holds a batch, or a shutdown, for long
        self.processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S))
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("switchyard")
        self.endpoint = endpoint
        self.capture_content = settings.capture_content

    def start(self, record: RequestRecord, headers: Mapping[str, str]) -> None:
        parent = _PROPAGATOR.extract(headers) if "traceparent" in headers else None
        record.span = self.tracer.start_span(
            record.operation, context=parent, kind=SpanKind.SERVER, start_time=_ns(record.started_wall)
        )

    def start_attempt(self, record: RequestRecord) -> list[tuple[str, str]]:
        """Open the upstream attempt's span; the headers that carry its context upstream."""
        if record.span is None:
            return []
        if not record.span.is_recording():  # not sampled: no attempt span, the trace id still travels
            return _trace_headers(record.span)
        if record.attempt_span is not None:  # not ended when it failed (should not happen): end it now
            self.attempt_failed(record, "failed", None)
        context = trace.set_span_in_context(record.span)
        attempt = self.tracer.start_span(f"{record.operation} {record.model}", context=context, kind=SpanKind.CLIENT)
        attempt.set_attribute("gen_ai.operation.name", record.operation)
        attempt.set_attribute("gen_ai.provider.name", record.provider or "")
        attempt.set_attribute("gen_ai.request.model", record.model or "")
        record.attempt_span = attempt
        return _trace_headers(attempt)

    def attempt_failed(self, record: RequestRecord, error_kind: str, message: str | None) -> None:
        """End the current attempt's span where the attempt ended, not at the next one's
        start: the backoff before a retry belongs to no attempt."""
        attempt, record.attempt_span = record.attempt_span, None
        if attempt is not None:
            _end_attempt(attempt, error_kind, message)

    def finish(self, record: RequestRecord) -> None:
        span = record.span
        if span is None or not span.is_recording():  # unsampled: nothing to describe or export
            return
        model = record.requested_model or record.model
        span.update_name(f"{record.operation} {model}" if model else record.operation)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": record.operation,
            "http.response.status_code": record.status,
            "switchyard.request_id": record.request_id,
            "switchyard.cache": record.cache,
            "switchyard.stream": record.stream,
            "switchyard.endpoint": record.endpoint,
        }
        _put(attributes, "gen_ai.provider.name", record.provider)
        _put(attributes, "gen_ai.request.model", record.requested_model)
        _put(attributes, "gen_ai.response.model", record.model)
        _put(attributes, "switchyard.team", record.team)
        _put(attributes, "switchyard.route", record.route)
        _put(attributes, "switchyard.experiment", record.experiment)
        _put(attributes, "switchyard.variant", record.variant)
        _put(attributes, "switchyard.cost_usd", record.cost_usd)
        _put(attributes, "switchyard.saved_usd", record.saved_usd)
        _put(attributes, "switchyard.time_to_first_token_s", record.ttft())
        if record.usage is not None:
            input_tokens, output_tokens = record.tokens()
            attributes["gen_ai.usage.input_tokens"] = input_tokens
            attributes["gen_ai.usage.output_tokens"] = output_tokens
        if self.capture_content:
            _put(attributes, "gen_ai.input.messages", _json(record.prompt))
            _put(attributes, "gen_ai.output.messages", _json(record.completion))
        span.set_attributes(attributes)
        end = _ns(record.started_wall + record.duration())
        attempt = record.attempt_span
        if attempt is not None:
            if record.usage is not None:
                attempt.set_attribute("gen_ai.usage.input_tokens", attributes["gen_ai.usage.input_tokens"])
                attempt.set_attribute("gen_ai.usage.output_tokens", attributes["gen_ai.usage.output_tokens"])
            _end_attempt(attempt, record.error_kind, record.error_message, end)
        span.set_attribute("switchyard.attempts", tries(record.attempts))
        if record.status >= 500:
            span.set_attribute("error.type", record.error_kind or str(record.status))
            span.set_status(Status(StatusCode.ERROR, record.error_message))
        span.end(end_time=end)

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Flush what is batched, for at most `timeout_s` (blocking: run it off the loop).
        The SDK's own shutdown waits up to 30 s for a collector that is not there."""
        batch = getattr(self.processor, "_batch_processor", None)
        if batch is not None and hasattr(batch, "shutdown"):
            batch.shutdown(timeout_millis=int(timeout_s * 1000))
        self.provider.shutdown()


def _trace_headers(span: Any) -> list[tuple[str, str]]:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return list(carrier.items())


def _end_attempt(span: Any, error_kind: str | None, message: str | None, end: int | None = None) -> None:
    if error_kind is not None:
        span.set_attribute("error.type", error_kind)
        span.set_status(Status(StatusCode.ERROR, message))
    span.end(end_time=end)


def _put(attributes: dict[str, Any], name: str, value: Any) -> None:
    if value is not None:
        attributes[name] = value


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
