//! Traces from the command (feature `otel`): with `IRIS_RPC_TRACES=stderr`, the core's spans
//! (target `iris_rpc::trace`: requests, their handling, a router's relays) go through the
//! OpenTelemetry SDK and each finished span is written to stderr as one JSON line
//! `{"span":{...}}`, beside the log records. Requests to v2 peers then carry the trace on
//! (docs/PROTOCOL-V2.md section 8.3), so the lines of a client, a router and a server share
//! one `trace_id`.

use std::future::Future;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde_json::{json, Map, Value};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::Layer;

/// The variable that turns traces on, and the one value it takes.
pub(crate) const VAR: &str = "IRIS_RPC_TRACES";

/// Writes finished spans to stderr, one JSON object per line.
#[derive(Debug)]
struct StderrJson;

fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// One span as the line writes it.
fn span_json(s: &SpanData) -> Value {
    let attributes: Map<String, Value> = s
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str().to_owned(), json!(kv.value.to_string())))
        .collect();
    let kind = match s.span_kind {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    };
    json!({
        "span": {
            "name": s.name,
            "kind": kind,
            "trace_id": s.span_context.trace_id().to_string(),
            "span_id": s.span_context.span_id().to_string(),
            "parent_span_id": (s.parent_span_id != SpanId::INVALID)
                .then(|| s.parent_span_id.to_string()),
            "parent_is_remote": s.parent_span_is_remote,
            "start_unix_nano": unix_nanos(s.start_time).to_string(),
            "end_unix_nano": unix_nanos(s.end_time).to_string(),
            "attributes": attributes,
        }
    })
}

impl SpanExporter for StderrJson {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let mut text = String::new();
        for s in &batch {
            text.push_str(&span_json(s).to_string());
            text.push('\n');
        }
        // A closed stderr loses the spans, as it loses the logs.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
        std::future::ready(Ok(()))
    }
}

/// The OpenTelemetry layer when `IRIS_RPC_TRACES` asks for one (`stderr`), filtered to the
/// core's spans whatever the log filter says; `Err` for another value.
pub(crate) fn layer<S>() -> Result<Option<Box<dyn Layer<S> + Send + Sync>>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    match std::env::var(VAR).as_deref() {
        Err(_) | Ok("") => return Ok(None),
        Ok("stderr") => {}
        Ok(other) => return Err(format!("{VAR}={other:?}: the only exporter is \"stderr\"")),
    }
    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
    // The simple processor exports each span as it ends: nothing is lost at exit.
    let provider = PROVIDER.get_or_init(|| {
        SdkTracerProvider::builder()
            .with_simple_exporter(StderrJson)
            .build()
    });
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("iris-rpc"))
        .with_filter(Targets::new().with_target("iris_rpc::trace", tracing::Level::INFO));
    Ok(Some(Box::new(layer)))
}
