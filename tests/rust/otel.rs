//! Traces across peers (feature `otel`, docs/PROTOCOL-V2.md section 8.3), exported by the real
//! OpenTelemetry SDK into its in-memory exporter through `tracing-opentelemetry`:
//! - a request from a client through a router to a server is one trace, each span the child of
//!   the one before (client request, router handling, relay, router request, server handling);
//! - the real legacy package (npm iris-rpc 0.2.20) receives request lines byte for byte as
//!   without the feature, directly and through our router: no `traceparent`;
//! - a malformed `traceparent` from a v2 peer is ignored: the request is answered in a new
//!   trace and the connection stays up; a valid one on the same connection is followed.
//!
//! One process: the exporter is process-wide, so each test finds its own spans by trace id or
//! by the ops it used.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use std::sync::OnceLock;
use std::time::Duration;

use iris_rpc::protocol::Mode;
use iris_rpc::{Backend, Certificates, Client, Options, Router, Security, Server, Side};
use iris_rpc_tests::{free_port, LegacyPeer, WAIT};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::Value as OtelValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing_subscriber::layer::SubscriberExt;

const SECRET: &str = "secret";

/// The process's exporter, behind a global subscriber with the OpenTelemetry layer.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("iris-rpc-tests");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        exporter
    })
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a OtelValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn attr_is(span: &SpanData, key: &str, value: &str) -> bool {
    attr(span, key).is_some_and(|v| v.as_str() == value)
}

/// Waits until `pick` finds what it needs among the finished spans (spans end as their
/// requests settle, on the tasks of each side, so they may finish after the answer arrived).
async fn spans_until<T>(what: &str, pick: impl Fn(&[SpanData]) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let spans = exporter().get_finished_spans().unwrap_or_default();
            if let Some(found) = pick(&spans) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let names: Vec<String> = exporter()
            .get_finished_spans()
            .unwrap_or_default()
            .iter()
            .map(|s| format!("{} {:?}", s.name, s.attributes))
            .collect();
        panic!("no {what} in time; finished spans: {names:#?}")
    })
}

/// The first finished span named `name` whose attribute `key` is `value`.
async fn span_with(name: &str, key: &str, value: &str) -> SpanData {
    spans_until(&format!("{name} with {key}={value}"), |spans| {
        spans
            .iter()
            .find(|s| s.name == name && attr_is(s, key, value))
            .cloned()
    })
    .await
}

fn find<'a>(
    spans: &'a [SpanData],
    name: &str,
    trace: TraceId,
    pred: impl Fn(&SpanData) -> bool,
) -> Option<&'a SpanData> {
    spans
        .iter()
        .find(|s| s.name == name && s.span_context.trace_id() == trace && pred(s))
}

fn server_opts(uuid: &str) -> Options {
    Options::new(SECRET)
        .port("127.0.0.1:0")
        .uuid(uuid)
        .certificates(Certificates::self_signed().unwrap())
}

fn client_opts(address: &str, uuid: &str) -> Options {
    Options::new(SECRET).address(address).uuid(uuid)
}

/// A router to `backend`: its uuids are `NAME` (backend) and `NAME-front`.
async fn router_to(backend: &str, name: &str) -> Router {
    let mut b = Options::new(SECRET).address(backend).uuid(name);
    b.reconnect_initial = Duration::from_millis(100);
    let r = Router::start(server_opts(&format!("{name}-front")), Backend::Client(b))
        .await
        .unwrap();
    common::until("the router's backend", || {
        !r.peers(Side::Backend).is_empty()
    })
    .await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_a_router_is_one_trace() {
    exporter();
    let server = Server::bind(server_opts("t-srv")).await.unwrap();
    server.handle("trace.echo", |req| async move { Ok(req.msg.value()) });
    let router = router_to(&server.local_addr().to_string(), "t-router").await;
    let client = Client::connect(client_opts(&router.local_addr().to_string(), "t-cli")).unwrap();
    client.wait_connected(WAIT).await.unwrap();
    common::until("the client at the server", || {
        server.routes().iter().any(|(u, _)| u == "t-cli")
    })
    .await;
    assert!(client.peers().iter().all(|p| p.mode() == Mode::V2));

    let answer = client
        .request(json!({"op": "trace.echo", "n": 1}))
        .await
        .unwrap();
    assert_eq!(answer["n"], 1);

    let request = span_with("iris_rpc.request", "peer.uuid", "t-router-front").await;
    let trace = request.span_context.trace_id();
    assert_eq!(
        request.parent_span_id,
        SpanId::INVALID,
        "the client's span is the root"
    );
    assert!(attr_is(&request, "rpc.method", "trace.echo"));
    assert!(attr_is(&request, "outcome", "answered"));

    let [at_router, relay, onward, at_server] = spans_until("every span of the trace", |spans| {
        let at_router = find(spans, "iris_rpc.handle", trace, |s| {
            attr_is(s, "peer.uuid", "t-cli")
        })?;
        let relay = find(spans, "iris_rpc.relay", trace, |_| true)?;
        let onward = find(spans, "iris_rpc.request", trace, |s| {
            attr_is(s, "peer.uuid", "t-srv")
        })?;
        let at_server = find(spans, "iris_rpc.handle", trace, |s| {
            attr_is(s, "peer.uuid", "t-router")
        })?;
        Some([at_router, relay, onward, at_server].map(Clone::clone))
    })
    .await;
    // Each hop's parent is the span before it; the two that crossed a connection came from a
    // traceparent (remote parents).
    assert_eq!(at_router.parent_span_id, request.span_context.span_id());
    assert!(at_router.parent_span_is_remote);
    assert_eq!(relay.parent_span_id, at_router.span_context.span_id());
    assert!(!relay.parent_span_is_remote);
    assert!(attr_is(&relay, "to", "backend"));
    assert_eq!(onward.parent_span_id, relay.span_context.span_id());
    assert_eq!(at_server.parent_span_id, onward.span_context.span_id());
    assert!(at_server.parent_span_is_remote);
    assert!(attr_is(&at_server, "rpc.method", "trace.echo"));

    client.close().await;
    router.close().await;
    server.close().await;
}

/// `text` is exactly the legacy encoding of a request: `{"_req":ID,"req":BODY,"_sig":SIG}`
/// with `BODY` as given (None: any body, the router's relay rewrites it), and nothing else.
fn assert_legacy_request(text: &str, body: Option<&str>) {
    assert!(!text.contains("traceparent"), "legacy peer saw {text}");
    let v: Value = serde_json::from_str(text).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["_req", "req", "_sig"], "{text}");
    let (id, sig) = (v["_req"].as_str().unwrap(), v["_sig"].as_str().unwrap());
    let body = body.map_or_else(|| v["req"].to_string(), str::to_owned);
    assert_eq!(
        text,
        format!(r#"{{"_req":"{id}","req":{body},"_sig":"{sig}"}}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_package_never_sees_a_traceparent() {
    exporter();
    let port = free_port();
    let mut legacy = LegacyPeer::server(
        port,
        SECRET,
        true,
        json!({"uuid": "t-legacy", "wire": true}),
    )
    .await;
    let address = format!("127.0.0.1:{port}");

    // Directly: our client (prefer-v2, falling back to legacy) to the legacy server.
    let client = Client::connect(client_opts(&address, "t-direct")).unwrap();
    client.wait_connected(WAIT).await.unwrap();
    assert!(client.peers().iter().all(|p| p.mode() == Mode::Legacy));
    let body = r#"{"op":"echo","direct":true}"#;
    let answer = client.request(json!({"op": "echo", "direct": true})).await;
    assert_eq!(
        answer.unwrap(),
        json!({"echo": {"op": "echo", "direct": true}})
    );
    let wire = legacy
        .expect("wire", |v| {
            v["text"].as_str().is_some_and(|t| t.contains("direct"))
        })
        .await;
    assert_legacy_request(wire["text"].as_str().unwrap(), Some(body));
    // The request had a live span with a trace (so a traceparent could have been sent).
    spans_until("the direct request's span", |spans| {
        spans
            .iter()
            .find(|s| s.name == "iris_rpc.request" && attr_is(s, "peer.uuid", "t-legacy"))
            .filter(|s| s.span_context.is_valid())
            .cloned()
    })
    .await;

    // Through our router: v2 from our client to the router, legacy from the router on.
    let router = router_to(&address, "t-legacy-router").await;
    let routed = Client::connect(client_opts(&router.local_addr().to_string(), "t-via")).unwrap();
    routed.wait_connected(WAIT).await.unwrap();
    assert!(routed.peers().iter().all(|p| p.mode() == Mode::V2));
    let answer = routed.request(json!({"op": "echo", "via": "router"})).await;
    assert_eq!(answer.unwrap()["echo"]["via"], "router");
    let wire = legacy
        .expect("wire", |v| {
            v["text"].as_str().is_some_and(|t| t.contains("\"via\""))
        })
        .await;
    assert_legacy_request(wire["text"].as_str().unwrap(), None);
    // The router did continue the trace it was given: its request to the legacy server is in
    // the client's trace.
    spans_until(
        "the router's request to the legacy server, in the client's trace",
        |spans| {
            let first = spans.iter().find(|s| {
                s.name == "iris_rpc.request" && attr_is(s, "peer.uuid", "t-legacy-router-front")
            })?;
            find(
                spans,
                "iris_rpc.request",
                first.span_context.trace_id(),
                |s| attr_is(s, "peer.uuid", "t-legacy"),
            )
            .cloned()
        },
    )
    .await;

    routed.close().await;
    router.close().await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_is_ignored() {
    exporter();
    let server = Server::bind(server_opts("t-bad-srv").cipher(false))
        .await
        .unwrap();
    for op in ["bad.text", "bad.case", "bad.zero", "bad.type", "good"] {
        server.handle(op, |_| async { Ok(json!(true)) });
    }
    let mut raw = common::raw_handshake_with(
        server.local_addr(),
        SECRET,
        false,
        "t-raw",
        Security::RequireV2,
    )
    .await
    .unwrap();
    assert_eq!(raw.est.mode, Mode::V2);

    let given_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let given_span = "00f067aa0ba902b7";
    let lines = [
        r#"{"_req":"1","req":{"op":"bad.text"},"traceparent":"garbage"}"#.to_owned(),
        format!(
            r#"{{"_req":"2","req":{{"op":"bad.case"}},"traceparent":"00-{}-{given_span}-01"}}"#,
            given_trace.to_uppercase()
        ),
        format!(
            r#"{{"_req":"3","req":{{"op":"bad.zero"}},"traceparent":"00-{}-{given_span}-01"}}"#,
            "0".repeat(32)
        ),
        r#"{"_req":"4","req":{"op":"bad.type"},"traceparent":42}"#.to_owned(),
        format!(
            r#"{{"_req":"5","req":{{"op":"good"}},"traceparent":"00-{given_trace}-{given_span}-01"}}"#
        ),
    ];
    for line in &lines {
        raw.io.write_all(line.as_bytes()).await.unwrap();
        raw.io.write_all(b"\n").await.unwrap();
    }
    // Every request is answered, in order, on the same connection.
    let mut answered = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            while let Some(line) = raw.lines.next_line().unwrap() {
                let v: Value = serde_json::from_slice(line).unwrap();
                answered.push((v["_resp"].clone(), v["resp"].clone()));
            }
            if answered.len() >= lines.len() {
                break;
            }
            let n = raw.io.read(raw.lines.read_buf(4096)).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            raw.lines.filled(n);
        }
    })
    .await
    .expect("every request answered in time");
    let expected: Vec<(Value, Value)> = (1..=5)
        .map(|i| (json!(i.to_string()), json!(true)))
        .collect();
    assert_eq!(answered, expected);

    let given = TraceId::from_hex(given_trace).unwrap();
    for op in ["bad.text", "bad.case", "bad.zero", "bad.type"] {
        let span = span_with("iris_rpc.handle", "rpc.method", op).await;
        assert_eq!(span.parent_span_id, SpanId::INVALID, "{op}: a new trace");
        assert_ne!(span.span_context.trace_id(), given, "{op}");
    }
    let good = span_with("iris_rpc.handle", "rpc.method", "good").await;
    assert_eq!(good.span_context.trace_id(), given);
    assert_eq!(good.parent_span_id, SpanId::from_hex(given_span).unwrap());
    assert!(good.parent_span_is_remote);
    server.close().await;
}

/// Our reader of `traceparent` (`iris_rpc::protocol::traceparent`) and the SDK's W3C
/// propagator agree on what is valid, and on what a valid value says.
#[test]
fn our_traceparent_reader_agrees_with_the_sdk_propagator() {
    use iris_rpc::protocol::traceparent::TraceParent;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    let propagator = TraceContextPropagator::new();
    for text in [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later",
        "",
        "garbage",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
    ] {
        let carrier =
            std::collections::HashMap::from([("traceparent".to_owned(), text.to_owned())]);
        let theirs = propagator.extract(&carrier);
        let theirs = theirs.span().span_context().clone();
        match TraceParent::parse(text) {
            Some(ours) => {
                assert!(theirs.is_valid(), "{text:?}: only we accept it");
                assert_eq!(ours.trace_id, theirs.trace_id().to_bytes(), "{text:?}");
                assert_eq!(ours.parent_id, theirs.span_id().to_bytes(), "{text:?}");
                assert_eq!(ours.flags & 1, theirs.trace_flags().to_u8() & 1, "{text:?}");
            }
            None => assert!(!theirs.is_valid(), "{text:?}: only the SDK accepts it"),
        }
    }
}

/// The README's setup block (between its `otel-setup` markers) is this file's own code, so it
/// cannot rot: every line of it, without its comment, is a line here.
#[test]
fn the_readme_shows_the_setup_these_tests_use() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("<!-- otel-setup:begin -->")
        .expect("begin marker");
    let end = readme.find("<!-- otel-setup:end -->").expect("end marker");
    let ours: Vec<&str> = include_str!("otel.rs").lines().map(str::trim).collect();
    let block = &readme[start..end];
    let code = block
        .lines()
        .filter(|l| !l.starts_with("```") && !l.starts_with("<!--"));
    let mut checked = 0;
    for line in code {
        let line = line.split(" // ").next().unwrap_or(line).trim();
        if !line.is_empty() {
            assert!(
                ours.contains(&line),
                "README line not in tests/rust/otel.rs: {line}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "the block is there ({checked} lines)");
}
