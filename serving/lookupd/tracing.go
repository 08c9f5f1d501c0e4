package main

// OpenTelemetry traces of the gRPC calls (spec.tracing): otelgrpc's server handler makes a
// SERVER span per call, continuing the W3C traceparent a caller sends in the metadata (the
// gateway does), and the SDK exports them over OTLP/HTTP. Off (no handler, no cost) when
// tracing.otlp_endpoint is empty.

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
)

const tracedService = "streamrank-lookupd"

// startTracing returns the server option that traces calls and a shutdown that exports what is
// left; with tracing off, no option and a shutdown that does nothing.
func startTracing(ctx context.Context, spec *Spec) ([]grpc.ServerOption, func(context.Context), error) {
	if spec.Tracing.OtlpEndpoint == "" {
		return nil, func(context.Context) {}, nil
	}
	url := spec.Tracing.OtlpEndpoint + "/v1/traces"
	exporter, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(url))
	if err != nil {
		return nil, nil, fmt.Errorf("tracing.otlp_endpoint %s: %w", spec.Tracing.OtlpEndpoint, err)
	}
	provider := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exporter, sdktrace.WithBatchTimeout(time.Second)),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(spec.Tracing.SampleRatio))),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", tracedService))))
	otel.SetTracerProvider(provider)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	slog.Info(fmt.Sprintf("traces to %s (sample ratio %g)", url, spec.Tracing.SampleRatio))
	shutdown := func(ctx context.Context) {
		if err := provider.Shutdown(ctx); err != nil {
			slog.Warn(fmt.Sprintf("traces not all exported: %v", err))
		}
	}
	// not the health checks: probes call them every few seconds, and they would be most traces
	handler := otelgrpc.NewServerHandler(otelgrpc.WithFilter(filters.Not(filters.HealthCheck())))
	return []grpc.ServerOption{grpc.StatsHandler(handler)}, shutdown, nil
}
