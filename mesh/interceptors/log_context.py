"""Trace ids on every log line written while a span is current.

The request-scoped value is OpenTelemetry's own context (a ``contextvars`` variable): the tracing server
interceptor makes the RPC's SERVER span current for the whole handler, and ``kafka_consumer_span`` does
the same for one Kafka record. ``TraceContextFilter`` reads it when a record is logged, so there is no
second copy of the ids that could disagree with the span.
"""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.trace import format_span_id, format_trace_id


def current_trace_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the current span as 32 and 16 lower-case hex digits, or None."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format_trace_id(span_context.trace_id), format_span_id(span_context.span_id)


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` to each record logged inside a span; never drops a record.

    Install it on the handler (a logger's filters do not see records from its children). Records logged
    outside any span get no fields, rather than empty ones; ids passed explicitly via ``extra=`` win.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            ids = current_trace_ids()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True
