"""Trace context in Kafka headers and log records, and the tracer provider set-up, without a server."""

from __future__ import annotations

import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mesh.interceptors import (
    TraceContextFilter,
    TracingSettings,
    configure_tracing,
    current_trace_ids,
    extract_kafka_context,
    inject_kafka_headers,
    kafka_consumer_span,
    kafka_producer_span,
)
from mesh.interceptors.tracing import otlp_exporter


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter) -> TracerProvider:
    return configure_tracing("streaming", "unit", exporter, set_global=False)


def test_kafka_headers_carry_the_current_span_to_the_consumer(provider, exporter):
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("frame ingest") as span:
        headers = inject_kafka_headers([("event-id", b"e-1"), ("content-type", b"application/x-protobuf")])
    restored = trace.get_current_span(extract_kafka_context(headers)).get_span_context()
    assert restored.trace_id == span.get_span_context().trace_id
    assert restored.span_id == span.get_span_context().span_id
    assert restored.is_remote
    assert headers[:2] == [("event-id", b"e-1"), ("content-type", b"application/x-protobuf")]
    version, trace_id, span_id, _flags = dict(headers)["traceparent"].decode().split("-")
    assert (version, trace_id, span_id) == (
        "00",
        f"{span.get_span_context().trace_id:032x}",
        f"{span.get_span_context().span_id:016x}",
    )


def test_injecting_replaces_a_stale_traceparent_instead_of_adding_a_second(provider):
    stale = [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"), ("event-id", b"e")]
    with provider.get_tracer("test").start_as_current_span("republish"):
        headers = inject_kafka_headers(stale)
    assert [k for k, _ in headers].count("traceparent") == 1
    assert dict(headers)["traceparent"] != stale[0][1]


def test_the_input_header_list_is_not_modified(provider):
    original = [("event-id", b"e")]
    with provider.get_tracer("test").start_as_current_span("x"):
        inject_kafka_headers(original)
    assert original == [("event-id", b"e")]


def test_outside_any_span_nothing_is_injected_and_nothing_extracted():
    assert inject_kafka_headers([("event-id", b"e")]) == [("event-id", b"e")]
    assert not trace.get_current_span(extract_kafka_context(None)).get_span_context().is_valid
    assert (
        not trace.get_current_span(extract_kafka_context([("traceparent", None)])).get_span_context().is_valid
    )


def test_producer_and_consumer_spans_chain_across_the_headers(provider, exporter):
    with kafka_producer_span("camera.detections.v1", tracer_provider=provider):
        headers = inject_kafka_headers([])
    with kafka_consumer_span("camera.detections.v1", headers, tracer_provider=provider) as consumer:
        assert trace.get_current_span() is consumer
    producer_span, consumer_span = exporter.get_finished_spans()
    assert (producer_span.kind, consumer_span.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert consumer_span.parent.span_id == producer_span.context.span_id
    assert consumer_span.name == "camera.detections.v1 process"
    assert consumer_span.attributes["messaging.system"] == "kafka"


def test_log_records_get_the_ids_of_the_current_span_only_inside_one(provider):
    record = logging.makeLogRecord({"msg": "x"})
    assert TraceContextFilter().filter(record) is True
    assert not hasattr(record, "trace_id")
    with provider.get_tracer("test").start_as_current_span("handler") as span:
        inside = logging.makeLogRecord({"msg": "y"})
        TraceContextFilter().filter(inside)
        ids = current_trace_ids()
    context = span.get_span_context()
    assert (inside.trace_id, inside.span_id) == ids == (f"{context.trace_id:032x}", f"{context.span_id:016x}")


def test_explicit_trace_ids_in_a_record_are_kept(provider):
    record = logging.makeLogRecord({"msg": "x", "trace_id": "given"})
    with provider.get_tracer("test").start_as_current_span("handler"):
        TraceContextFilter().filter(record)
    assert record.trace_id == "given"


def test_the_provider_describes_the_service_instance(provider):
    attributes = provider.resource.attributes
    assert (attributes["service.name"], attributes["service.instance.id"]) == ("streaming", "unit")


def test_no_endpoint_means_no_exporter():
    assert otlp_exporter(TracingSettings(otlp_endpoint=None)) is None


def test_an_endpoint_without_the_exporter_package_logs_and_exports_nothing(caplog):
    # The image and the dev install carry the gRPC exporter only; the HTTP one stands for a missing package.
    settings = TracingSettings(otlp_endpoint="http://collector:4318", otlp_protocol="http/protobuf")
    with caplog.at_level(logging.WARNING, logger="mesh.interceptors.tracing"):
        assert otlp_exporter(settings) is None
    assert "not installed" in caplog.text


def test_an_endpoint_with_the_grpc_exporter_installed_exports_over_otlp():
    exporter = otlp_exporter(TracingSettings(otlp_endpoint="http://collector:4317", otlp_protocol="grpc"))
    assert type(exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")
    exporter.shutdown()


def test_an_unknown_otlp_protocol_exports_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="mesh.interceptors.tracing"):
        assert otlp_exporter(TracingSettings(otlp_endpoint="x", otlp_protocol="carrier-pigeon")) is None
    assert "unknown OTLP protocol" in caplog.text


def test_settings_read_the_standard_opentelemetry_variables(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    settings = TracingSettings()
    assert (settings.otlp_endpoint, settings.otlp_protocol) == ("http://collector:4317", "http/protobuf")
