"""OpenTelemetry tracing: one trace from a camera's stream through Kafka to analytics and alert.

The W3C ``traceparent``/``tracestate`` context travels in gRPC metadata (the interceptors here) and in
Kafka record headers (``inject_kafka_headers`` / ``extract_kafka_context``), always written and read by
OpenTelemetry's configured propagator (W3C trace context by default), never by hand. The server span is
the current span while the handler runs, so downstream calls, Kafka records and log lines (see
``log_context``) all carry its ids.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache, partial
from typing import Any, Final

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context as OtelContext
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.interceptors._rpc import (
    Context,
    Finish,
    ObservingClientInterceptor,
    Proceed,
    RpcInfo,
    WrappingServerInterceptor,
    final_code,
    is_infrastructure_method,
)

log = logging.getLogger(__name__)

INSTRUMENTATION: Final = "mesh.interceptors"
"""Instrumentation scope name of every span the mesh creates."""

KafkaHeaders = Sequence[tuple[str, bytes]]
"""Kafka record headers as a producer sends them."""
ReceivedKafkaHeaders = Sequence[tuple[str, bytes | None]]
"""Kafka record headers as a consumer receives them (a header value may be null)."""

# Server spans are errors only for codes that mean the server failed (OTel gRPC semantic conventions);
# NOT_FOUND or INVALID_ARGUMENT are the caller's problem. Client spans are errors for every non-OK code.
_SERVER_ERROR_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_CLIENT_ERROR_CODES: Final = frozenset(code for code in grpc.StatusCode if code is not grpc.StatusCode.OK)

_default_tracer = trace.get_tracer(INSTRUMENTATION)  # a proxy that follows the global provider once set


def _tracer(provider: TracerProvider | None) -> trace.Tracer:
    return (
        _default_tracer if provider is None else trace.get_tracer(INSTRUMENTATION, tracer_provider=provider)
    )


# --- carriers ---------------------------------------------------------------------------------------------


GrpcMetadata = Collection[tuple[str, str | bytes]]


class _GrpcMetadataGetter(Getter[GrpcMetadata]):
    def get(self, carrier: GrpcMetadata, key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: GrpcMetadata) -> list[str]:
        return [k for k, _ in carrier]


class _GrpcMetadataSetter(Setter[grpc.aio.Metadata]):
    def set(self, carrier: grpc.aio.Metadata, key: str, value: str) -> None:
        carrier[key] = value


class _KafkaHeadersGetter(Getter[ReceivedKafkaHeaders]):
    def get(self, carrier: ReceivedKafkaHeaders, key: str) -> list[str] | None:
        values = [v.decode("utf-8", "replace") for k, v in carrier if k == key and v is not None]
        return values or None

    def keys(self, carrier: ReceivedKafkaHeaders) -> list[str]:
        return [k for k, _ in carrier]


_GRPC_GETTER: Final = _GrpcMetadataGetter()
_GRPC_SETTER: Final = _GrpcMetadataSetter()
_KAFKA_GETTER: Final = _KafkaHeadersGetter()


# --- gRPC -------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _rpc_attributes(info: RpcInfo) -> Mapping[str, AttributeValue]:
    return {"rpc.system": "grpc", "rpc.service": info.service, "rpc.method": info.method}


@lru_cache(maxsize=4096)
def _client_attributes(info: RpcInfo, target_service: str | None) -> Mapping[str, AttributeValue]:
    if target_service is None:
        return _rpc_attributes(info)
    return {**_rpc_attributes(info), "peer.service": target_service}


def _end(span: Span, code: grpc.StatusCode, *, error_codes: frozenset[grpc.StatusCode]) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in error_codes:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


class TracingServerInterceptor(WrappingServerInterceptor):
    """Opens a SERVER span per RPC, child of the caller's ``traceparent``, current while the handler runs.

    Health checks and reflection are not traced by default (``exclude``): probes every few seconds would
    bury the traces that matter.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        exclude: Callable[[str], bool] = is_infrastructure_method,
    ) -> None:
        super().__init__()
        self._tracer = _tracer(tracer_provider)
        self._exclude = exclude

    def applies_to(self, path: str) -> bool:
        return not self._exclude(path)

    async def around(self, info: RpcInfo, context: Context, proceed: Proceed) -> Any:
        metadata: GrpcMetadata = context.invocation_metadata() or ()
        parent = propagate.extract(metadata, getter=_GRPC_GETTER)
        span = self._tracer.start_span(
            info.name, context=parent, kind=SpanKind.SERVER, attributes=_rpc_attributes(info)
        )
        error: BaseException | None = None
        # The span is current while the handler runs (what trace.use_span does, minus its generator).
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await proceed()
        except BaseException as exc:
            error = exc
            raise
        finally:
            code = final_code(context, error)
            if code is grpc.StatusCode.UNKNOWN and isinstance(error, Exception):
                span.record_exception(error)  # an unexpected exception, not a status the handler chose
            _end(span, code, error_codes=_SERVER_ERROR_CODES)
            otel_context.detach(token)


class TracingClientInterceptor(ObservingClientInterceptor):
    """Opens a CLIENT span per call (child of the current span) and sends its ``traceparent`` along."""

    def __init__(
        self, target_service: str | None = None, *, tracer_provider: TracerProvider | None = None
    ) -> None:
        super().__init__()
        self._tracer = _tracer(tracer_provider)
        self._global = tracer_provider is None
        self._target_service = target_service
        # Span name and attributes per method path, built once: a call then allocates only its span.
        self._methods: dict[str, tuple[str, Mapping[str, AttributeValue]]] = {}

    def observe(self, info: RpcInfo, metadata: grpc.aio.Metadata) -> Finish:
        if self._global and isinstance(trace.get_tracer_provider(), _NON_RECORDING_PROVIDERS):
            # No SDK installed (yet): the span would be the caller's own context, so pass that on as it is.
            propagate.inject(metadata, setter=_GRPC_SETTER)
            return _nothing_to_end
        method = self._methods.get(info.path)
        if method is None:
            method = self._methods[info.path] = (info.name, _client_attributes(info, self._target_service))
        span = self._tracer.start_span(method[0], kind=SpanKind.CLIENT, attributes=method[1])
        if not span.is_recording() and span.get_span_context() == trace.get_current_span().get_span_context():
            # No tracing SDK (or an unsampled trace): the "span" is the caller's own context, passed on
            # as it is, and there is nothing to end.
            propagate.inject(metadata, setter=_GRPC_SETTER)
            return _nothing_to_end
        propagate.inject(metadata, context=trace.set_span_in_context(span), setter=_GRPC_SETTER)
        return partial(_end, span, error_codes=_CLIENT_ERROR_CODES)


# What the global provider is before an SDK provider is installed: neither ever records a span.
_NON_RECORDING_PROVIDERS: Final = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def _nothing_to_end(code: grpc.StatusCode) -> None:
    """The finish of a call whose span records nothing."""


# --- Kafka ------------------------------------------------------------------------------------------------


def inject_kafka_headers(
    headers: KafkaHeaders | None = None, *, context: OtelContext | None = None
) -> list[tuple[str, bytes]]:
    """``headers`` plus the trace context (``traceparent``, ``tracestate``) of ``context``/the current span.

    Returns a new list; trace headers already in ``headers`` are replaced, the others kept in order.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    kept = [(k, v) for k, v in headers or () if k not in carrier]
    return kept + [(k, v.encode()) for k, v in carrier.items()]


def extract_kafka_context(headers: ReceivedKafkaHeaders | None) -> OtelContext:
    """The trace context a Kafka record carries in its headers (empty if it carries none)."""
    return propagate.extract(headers or (), getter=_KAFKA_GETTER)


def _messaging_attributes(topic: str, operation: str) -> dict[str, AttributeValue]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": operation,
    }


@contextmanager
def kafka_producer_span(topic: str, *, tracer_provider: TracerProvider | None = None) -> Iterator[Span]:
    """A current PRODUCER span around publishing to ``topic``; call ``inject_kafka_headers`` inside it."""
    with _tracer(tracer_provider).start_as_current_span(
        f"{topic} publish", kind=SpanKind.PRODUCER, attributes=_messaging_attributes(topic, "publish")
    ) as span:
        yield span


@contextmanager
def kafka_consumer_span(
    topic: str, headers: ReceivedKafkaHeaders | None, *, tracer_provider: TracerProvider | None = None
) -> Iterator[Span]:
    """A current CONSUMER span around processing one record, continuing the trace its headers carry."""
    with _tracer(tracer_provider).start_as_current_span(
        f"{topic} process",
        context=extract_kafka_context(headers),
        kind=SpanKind.CONSUMER,
        attributes=_messaging_attributes(topic, "process"),
    ) as span:
        yield span


# --- set-up -----------------------------------------------------------------------------------------------


class TracingSettings(BaseSettings):
    """Where spans go; the standard OpenTelemetry variables, so operators configure it the usual way."""

    # validate_by_name: code and tests may pass otlp_endpoint=… although the env names are OTEL_*.
    model_config = SettingsConfigDict(extra="ignore", frozen=True, validate_by_name=True)

    otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP collector endpoint; unset: spans are made (ids for logs and Kafka) but not sent.",
    )
    otlp_protocol: str = Field(
        "grpc",
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        description="OTLP protocol: grpc or http/protobuf.",
    )


_OTLP_MODULES: Final = {
    "grpc": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "http/protobuf": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
}


def otlp_exporter(settings: TracingSettings) -> SpanExporter | None:
    """An OTLP span exporter when an endpoint is configured and its package is installed, else None."""
    if not settings.otlp_endpoint:
        return None
    module_name = _OTLP_MODULES.get(settings.otlp_protocol)
    if module_name is None:
        log.warning(
            "unknown OTLP protocol; spans are not exported", extra={"protocol": settings.otlp_protocol}
        )
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        log.warning(
            "an OTLP endpoint is set but the exporter package is not installed; spans are not exported",
            extra={"endpoint": settings.otlp_endpoint, "exporter_module": module_name},
        )
        return None
    exporter: SpanExporter = module.OTLPSpanExporter()  # reads endpoint, headers and TLS from OTEL_* itself
    return exporter


def configure_tracing(
    service_name: str,
    instance_id: str,
    exporter: SpanExporter | None = None,
    *,
    version: str | None = None,
    settings: TracingSettings | None = None,
    set_global: bool = True,
) -> SdkTracerProvider:
    """Make a tracer provider for this process and (by default) install it as the global one.

    ``exporter`` given: spans go to it synchronously (tests pass an ``InMemorySpanExporter``). Otherwise an
    OTLP exporter, batched, when ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` is set and the package is
    installed; else no exporter — spans still get ids, so logs and Kafka headers still carry them.
    OpenTelemetry allows one global provider per process: call this once, at start-up.
    """
    attributes: dict[str, str] = {SERVICE_NAME: service_name, SERVICE_INSTANCE_ID: instance_id}
    if version is not None:
        attributes[SERVICE_VERSION] = version
    provider = SdkTracerProvider(resource=Resource.create(attributes))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        otlp = otlp_exporter(settings if settings is not None else TracingSettings())
        if otlp is not None:
            provider.add_span_processor(BatchSpanProcessor(otlp))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider
