//! Joining a trace that began elsewhere: an HTTP caller's `traceparent`, or
//! the one an event carries from the request that caused it.

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
