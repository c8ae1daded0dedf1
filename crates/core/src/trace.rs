//! Joining a trace that began elsewhere: an HTTP caller's `traceparent`, or
//! the one an event carries from the request that caused it; and whether
//! spans are exported at all ([`exporting`]).

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use orderflow_domain::events::TraceParent;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Makes `span` a child of the remote span `parent` names, so that the API's
/// request span and every consumer's span of the same order export as one
/// trace. Does nothing without the OpenTelemetry layer (export off): the
/// callers record the trace id as a field for the log lines themselves.
pub fn join_remote_parent(span: &tracing::Span, parent: &TraceParent) {
    let remote = SpanContext::new(
        TraceId::from(parent.trace_id),
        SpanId::from(parent.parent_id),
        TraceFlags::new(parent.flags),
        true,
        TraceState::default(),
    );
    // Fails only when no OpenTelemetry layer is installed.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// Whether the OpenTelemetry layer is installed (OTLP export on).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Says that spans are exported from now on; the binary's telemetry calls it
/// once it has installed the OpenTelemetry layer.
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Whether spans are exported. Fields only a trace back end reads (a span's
/// `otel.name`, its answer's status) are recorded only then: the log layer
/// formats every recorded field into text at once, on every request, even
/// when no line is ever logged in that span.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}
