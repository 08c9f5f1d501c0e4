"""OpenTelemetry traces of the gateway's lookups: a SERVER span per HTTP or GraphQL call
(continuing the caller's W3C `traceparent`), and a CLIENT span per call to lookupd whose context
travels in the gRPC metadata, where lookupd's otelgrpc handler continues it. Made only when
[tracing] otlp_endpoint is set; exported there over OTLP/HTTP.

The exporter sends OTLP's JSON encoding (POST <endpoint>/v1/traces, application/json), which
collectors accept beside protobuf: the protobuf exporter's messages need protobuf >= 5, and
apache-flink holds this environment at 4.x (requirements.in)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import httpx
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from contract.serving_config import TracingConfig

log = logging.getLogger(__name__)

W3C = TraceContextTextMapPropagator()  # traceparent / tracestate, whatever the process-wide default is


def _value(v) -> dict:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, str):
        return {"stringValue": v}
    if isinstance(v, Sequence):
        return {"arrayValue": {"values": [_value(x) for x in v]}}
    return {"stringValue": str(v)}


def _attributes(attrs: Mapping | None) -> list[dict]:
    return [{"key": k, "value": _value(v)} for k, v in (attrs or {}).items()]


def otlp_json(spans: Sequence[ReadableSpan]) -> dict:
    """An ExportTraceServiceRequest in OTLP/JSON: ids as hex, times as strings of nanoseconds,
    kinds and status codes as OTLP's enum numbers."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    resources: dict[tuple, Resource] = {}
    for s in spans:
        rkey = tuple(sorted((k, str(v)) for k, v in s.resource.attributes.items()))
        resources[rkey] = s.resource
        scope = s.instrumentation_scope.name if s.instrumentation_scope else ""
        out = {"traceId": f"{s.context.trace_id:032x}", "spanId": f"{s.context.span_id:016x}", "name": s.name,
               "kind": s.kind.value + 1,  # the API's INTERNAL=0, SERVER=1, CLIENT=2; OTLP's 1, 2, 3
               "startTimeUnixNano": str(s.start_time), "endTimeUnixNano": str(s.end_time),
               "attributes": _attributes(s.attributes),
               "status": {"code": s.status.status_code.value, **({"message": s.status.description}
                                                                  if s.status.description else {})}}
        if s.parent is not None:
            out["parentSpanId"] = f"{s.parent.span_id:016x}"
        groups.setdefault(rkey, {}).setdefault(scope, []).append(out)
    return {"resourceSpans": [
        {"resource": {"attributes": _attributes(resources[r].attributes)},
         "scopeSpans": [{"scope": {"name": scope}, "spans": spans_} for scope, spans_ in scopes.items()]}
        for r, scopes in groups.items()]}


class OtlpJsonExporter(SpanExporter):
    def __init__(self, endpoint: str, timeout_s: float = 5.0) -> None:
        self.url = f"{endpoint}/v1/traces"
        self.http = httpx.Client(timeout=timeout_s)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            resp = self.http.post(self.url, json=otlp_json(spans))
        except httpx.HTTPError as e:
            log.warning("traces not exported to %s: %s", self.url, e)
            return SpanExportResult.FAILURE
        if not resp.is_success:
            log.warning("traces not exported to %s: HTTP %d %s", self.url, resp.status_code, resp.text[:200])
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.http.close()


class Tracing:
    """The gateway's tracer (a no-op one when [tracing] is off) and its provider, to flush at shutdown."""

    def __init__(self, cfg: TracingConfig, service_name: str) -> None:
        self.provider: TracerProvider | None = None
        if not cfg.otlp_endpoint:
            self.tracer: trace.Tracer = trace.NoOpTracer()
            return
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                                       sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
        self.provider.add_span_processor(BatchSpanProcessor(OtlpJsonExporter(cfg.otlp_endpoint),
                                                            schedule_delay_millis=1000))
        self.tracer = self.provider.get_tracer("streamrank.gateway")
        log.info("traces to %s/v1/traces (sample ratio %s)", cfg.otlp_endpoint, cfg.sample_ratio)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()  # exports what is left


def inject(metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The current span's context added to outgoing gRPC metadata (nothing when there is none)."""
    carrier: dict[str, str] = {}
    W3C.inject(carrier)
    return metadata + tuple(carrier.items())


class TraceRequests:
    """ASGI middleware: a SERVER span around each HTTP call, a child of the caller's traceparent
    when it sends one. Named by the route's template, never by its path (which holds user ids)."""

    def __init__(self, app, tracer: trace.Tracer) -> None:
        self.app, self.tracer = app, tracer

    UNTRACED = ("/healthz", "/metrics")  # probes and scrapers: most calls, nothing to follow

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.UNTRACED:
            await self.app(scope, receive, send)
            return
        caller = W3C.extract({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
        status: dict[str, int] = {}

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        method = scope["method"]
        with self.tracer.start_as_current_span(method, context=caller, kind=trace.SpanKind.SERVER,
                                               attributes={"http.request.method": method}) as span:
            try:
                await self.app(scope, receive, sending)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                code = status.get("code", 500)
                span.set_attribute("http.response.status_code", code)
                if code >= 500:
                    span.set_status(trace.Status(trace.StatusCode.ERROR))
