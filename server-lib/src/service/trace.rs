//! Request spans for distributed tracing. The SDK sends a W3C `traceparent` header with every
//! upload; the server's `ingest`/`install` span of that request and its `store` span become
//! children of it, so a trace shows the SDK's upload, the ingest and the store write under one
//! trace id. The spans are ordinary `tracing` spans: a host exports them by installing a
//! `tracing-opentelemetry` layer (the reference server's `--otlp-endpoint`). Linking to the
//! caller's trace needs the `otel` feature; without it the spans stay local.

use trailmark_core::protocol;

/// The span of one request to `endpoint` (`ingest` or `install`), parented to the request's
/// `traceparent` header when it has a valid one.
pub fn request_span(endpoint: &'static str, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!("request", otel.name = endpoint, otel.kind = "server", endpoint);
    let parent = traceparent.and_then(protocol::parse_traceparent);
    if let Some((trace, span_id)) = parent {
        link(&span, trace, span_id);
    }
    span
}

/// The span of a storage write inside a request.
pub fn store_span(what: &'static str, rows: usize) -> tracing::Span {
    tracing::info_span!("store", otel.name = "store", otel.kind = "internal", what, rows)
}

#[cfg(feature = "otel")]
fn link(span: &tracing::Span, trace: [u8; 16], parent: [u8; 8]) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let remote = SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(parent),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    // Fails only when no OpenTelemetry layer is installed: nothing is exported then anyway.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

#[cfg(not(feature = "otel"))]
fn link(_: &tracing::Span, _: [u8; 16], _: [u8; 8]) {}
