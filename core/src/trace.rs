//! Traces across peers (feature `otel`): a request sent to a v2 peer carries the W3C
//! `traceparent` of the span that sends it, and the peer handles it in a span whose parent that
//! is, so a request through routers and servers is one trace (docs/PROTOCOL-V2.md section 8.3).
//!
//! The spans are `tracing` spans, target `iris_rpc::trace`, level INFO:
//!
//! | span | where | parent |
//! |---|---|---|
//! | `iris_rpc.request` | a request sent, until it settles | the caller's current span |
//! | `iris_rpc.handle` | a request received, until it is answered | the sender's `traceparent`, else none (a new trace) |
//! | `iris_rpc.relay` | a router relaying a request to the other side | the router's `iris_rpc.handle` |
//!
//! A handler runs inside its `iris_rpc.handle`, and a router's relay sends inside its
//! `iris_rpc.relay`, so a request made there is a child of it and carries its trace on.
//! An OpenTelemetry layer (`tracing_opentelemetry::layer()` over the application's SDK tracer)
//! turns these spans into OpenTelemetry spans. Without one, a span has no OpenTelemetry context
//! and no `traceparent` is sent; legacy-mode streams never carry one, whatever is installed.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::peer::Peer;
use crate::protocol::traceparent::TraceParent;
use crate::protocol::Mode;

/// The span of a request sent to `peer`, a child of the current span.
pub(crate) fn request_span(op: Option<&str>, peer: &Peer) -> Span {
    tracing::info_span!(
        target: "iris_rpc::trace",
        "iris_rpc.request",
        otel.kind = "client",
        rpc.system = "iris-rpc",
        rpc.method = op.unwrap_or(""),
        peer.uuid = peer.uuid(),
        outcome = tracing::field::Empty,
    )
}

/// What a request sent in `span` to `peer` carries: the span's context as a `traceparent`, for
/// a v2 peer and a span that has an OpenTelemetry context; else nothing.
pub(crate) fn traceparent(span: &Span, peer: &Peer) -> Option<String> {
    if peer.mode() != Mode::V2 || span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            parent_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        }
        .encode()
    })
}

/// The span that handles a request received from `peer` with `traceparent` beside it: a child
/// of the sender's span when that is a valid value from a v2 peer, else the root of a new trace
/// (never a child of the connection's span, which lives as long as the connection).
pub(crate) fn handle_span(op: Option<&str>, peer: &Peer, traceparent: Option<&str>) -> Span {
    let span = tracing::info_span!(
        target: "iris_rpc::trace",
        parent: None,
        "iris_rpc.handle",
        otel.kind = "server",
        rpc.system = "iris-rpc",
        rpc.method = op.unwrap_or(""),
        peer.uuid = peer.uuid(),
    );
    let Some(text) = traceparent.filter(|_| peer.mode() == Mode::V2 && !span.is_disabled()) else {
        return span;
    };
    match TraceParent::parse(text) {
        Some(tp) => {
            let remote = SpanContext::new(
                TraceId::from_bytes(tp.trace_id),
                SpanId::from_bytes(tp.parent_id),
                TraceFlags::new(tp.flags),
                true,
                TraceState::default(),
            );
            // Fails only without an OpenTelemetry layer, where there is no trace to join.
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        None => tracing::debug!(peer = %peer.uuid(), "malformed traceparent ignored"),
    }
    span
}

/// The span of a router relaying a request that `incoming` handles.
pub(crate) fn relay_span(incoming: &Span, to: &'static str) -> Span {
    tracing::info_span!(
        target: "iris_rpc::trace",
        parent: incoming,
        "iris_rpc.relay",
        otel.kind = "internal",
        to = to,
    )
}

/// Records how a request settled on its span.
pub(crate) fn settled(span: &Span, outcome: &'static str) {
    span.record("outcome", outcome);
}
