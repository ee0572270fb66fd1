//! Metrics in the Prometheus text format: one registry per process, read with [`text`].
//!
//! ## Why `prometheus-client`, and why one registry per process
//! The `metrics` facade routes every measurement through one global recorder that the
//! application installs; a library cannot assume one is installed (nor install its own without
//! taking the slot from the application), and the text its Prometheus exporter renders belongs
//! to the exporter, not to us, so the C, Node and Python adapters could not hand it back.
//! `prometheus-client` (the Prometheus project's own Rust client) is a plain registry we own
//! and encode ourselves, with no global state forced on the application, so [`text`] works the
//! same from Rust, C, Node and Python, with or without anything else installed.
//!
//! A process may hold many instances (a router is a server and a client; a Node test opens
//! hundreds). Prometheus scrapes a process, and an instance has no bounded name to label it
//! with (its uuid is unbounded), so every instance adds into the same process-wide series, and
//! the gauges sum over the instances alive at the time of the scrape. An application that
//! wants to tell its instances apart runs them in separate processes, or reads
//! [`crate::Endpoint::stats`] per instance.
//!
//! ## Cost when nobody looks
//! Counters on the hot path (messages, bytes, requests, relays) are resolved once, at first
//! use: counting is one relaxed atomic add (per read or per written batch for bytes and
//! messages, not per byte). Labelled families (handshakes, refusals, limits) are looked up by
//! label only where a connection is set up or a limit is crossed. Gauges cost nothing until a
//! scrape: they are computed then from the live instances' own counters.
//!
//! [`set_enabled`]`(false)` stops all counting in the process (the gauges, computed at a
//! scrape, still read): what `iris-rpc bench --metrics off` measures the cost of counting
//! against.
//!
//! ## Names
//! Stable, prefixed `iris_rpc_`, units in the name (`_bytes`, `_seconds`); counters end in
//! `_total`. Label values are drawn from fixed sets (never a uuid, an address or a message).
//! The table is in the README and pinned by this module's tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::engine::Engine;
use crate::error::{Error, ErrorKind};

/// The content type of [`text`] (the Prometheus text exposition format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The process's metrics in the Prometheus text format (version 0.0.4): what an HTTP endpoint
/// for Prometheus serves, and what the adapters' `metrics()` return.
pub fn text() -> String {
    let m = &*METRICS;
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would only truncate the text.
    let registry = m.registry.lock().unwrap_or_else(|p| p.into_inner());
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

type Labels<const N: usize> = [(&'static str, &'static str); N];

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns counting on (the default) or off for the whole process. Off, nothing is counted from
/// then on (the counters keep what they hold; the gauges still read the live instances at each
/// scrape). For measuring what the counting costs, as `iris-rpc bench --metrics off` does.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether counting is on ([`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Which configured limit was crossed: the values of `iris_rpc_limit_hits_total{limit}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    MaxConnections,
    MaxUnauthenticated,
    MaxUnauthenticatedBytes,
    MaxHandshakeLine,
    MaxLine,
    AuthTimeout,
    MaxPending,
    MaxQueue,
}

impl Limit {
    fn as_str(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::MaxUnauthenticated => "max_unauthenticated",
            Limit::MaxUnauthenticatedBytes => "max_unauthenticated_bytes",
            Limit::MaxHandshakeLine => "max_handshake_line",
            Limit::MaxLine => "max_line",
            Limit::AuthTimeout => "auth_timeout",
            Limit::MaxPending => "max_pending",
            Limit::MaxQueue => "max_queue",
        }
    }
}

/// How a request settled: the values of `iris_rpc_requests_total{outcome}`.
const OUTCOMES: [&str; 7] = [
    "answered",
    "remote_error",
    "timeout",
    "disconnected",
    "closed",
    "limit_exceeded",
    "other",
];

/// Where in [`OUTCOMES`] a request that settled with `result` counts.
fn outcome_index(result: &crate::error::Result<crate::message::Response>) -> usize {
    match result {
        Ok(r) if r.sent_err().is_some_and(|e| e != "null") => 1,
        Ok(_) => 0,
        Err(e) => match e.kind() {
            ErrorKind::Remote => 1,
            ErrorKind::Timeout => 2,
            ErrorKind::Disconnected => 3,
            ErrorKind::Closed => 4,
            ErrorKind::LimitExceeded => 5,
            _ => 6,
        },
    }
}

/// How a request settled, as `iris_rpc_requests_total{outcome}` names it.
#[cfg(feature = "otel")]
pub(crate) fn outcome(result: &crate::error::Result<crate::message::Response>) -> &'static str {
    OUTCOMES[outcome_index(result)]
}

/// The upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A histogram that observes with atomic adds only (the crate's own takes a lock).
#[derive(Debug, Default)]
struct LatencyHistogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The registry's handle on a [`LatencyHistogram`].
#[derive(Debug, Default, Clone)]
struct SharedHistogram(Arc<LatencyHistogram>);

impl EncodeMetric for SharedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        // Per bucket, finite bounds only: the crate adds them up, and writes the +Inf bucket
        // from the count (which includes the overflow).
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .zip(&h.buckets)
            .map(|(b, n)| (*b, n.load(Ordering::Relaxed)))
            .collect();
        let count = h.count.load(Ordering::Relaxed);
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The process's metrics (see the module's documentation).
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    accepted: Counter,
    refused: Family<Labels<1>, Counter>,
    handshakes: Family<Labels<4>, Counter>,
    limit_hits: Family<Labels<1>, Counter>,
    messages_in: Counter,
    messages_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    requests: [Counter; OUTCOMES.len()],
    latency: SharedHistogram,
    relays: [Counter; 2],
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The instances alive in this process, for the gauges (pruned as they go).
static ENGINES: Mutex<Vec<Weak<Engine>>> = Mutex::new(Vec::new());

/// The process's metrics.
pub(crate) fn get() -> &'static Metrics {
    &METRICS
}

/// Counts `engine` in the gauges while it lives.
pub(crate) fn track(engine: &Arc<Engine>) {
    let mut all = ENGINES.lock().unwrap_or_else(|p| p.into_inner());
    // Amortized pruning: a process that makes and drops instances without ever being scraped
    // keeps at most twice its live instances.
    if all.len() >= 64 && all.len().is_power_of_two() {
        all.retain(|w| w.strong_count() > 0);
    }
    all.push(Arc::downgrade(engine));
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let accepted = Counter::default();
        registry.register(
            "iris_rpc_connections_accepted",
            "Connections a server accepted (TCP), before the handshake",
            accepted.clone(),
        );
        let refused = Family::<Labels<1>, Counter>::default();
        registry.register(
            "iris_rpc_connections_refused",
            "Connections a server refused at accept, by reason (the limit that was full)",
            refused.clone(),
        );
        let handshakes = Family::<Labels<4>, Counter>::default();
        registry.register(
            "iris_rpc_handshakes",
            "Handshakes that ended, by side (client, server), outcome (ok, failed), mode \
             (legacy, v2, unknown) and reason (none, or the error kind)",
            handshakes.clone(),
        );
        let limit_hits = Family::<Labels<1>, Counter>::default();
        registry.register(
            "iris_rpc_limit_hits",
            "Times a configured limit was crossed, by limit (the option's name)",
            limit_hits.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let messages_in = counter(
            &mut registry,
            "iris_rpc_messages_received",
            "Messages (lines) received on authenticated streams",
        );
        let messages_out = counter(
            &mut registry,
            "iris_rpc_messages_sent",
            "Messages (lines) written to authenticated streams",
        );
        let bytes_in = counter(
            &mut registry,
            "iris_rpc_received_bytes",
            "Bytes received on authenticated streams (inside TLS, before the line cipher if on)",
        );
        let bytes_out = counter(
            &mut registry,
            "iris_rpc_sent_bytes",
            "Bytes written to authenticated streams (inside TLS, after the line cipher if on)",
        );
        let requests_family = Family::<Labels<1>, Counter>::default();
        registry.register(
            "iris_rpc_requests",
            "Requests this process made that settled, by outcome (answered, remote_error, \
             timeout, disconnected, closed, limit_exceeded, other)",
            requests_family.clone(),
        );
        let requests = OUTCOMES.map(|o| requests_family.get_or_create(&[("outcome", o)]).clone());
        let latency = SharedHistogram::default();
        registry.register(
            "iris_rpc_request_duration_seconds",
            "Time from sending a request to its settlement (answer, error, timeout, \
             disconnect or close)",
            latency.clone(),
        );
        let relays_family = Family::<Labels<1>, Counter>::default();
        registry.register(
            "iris_rpc_router_relays",
            "Messages a router relayed from one side to the other, by kind (event, request)",
            relays_family.clone(),
        );
        let relays =
            ["event", "request"].map(|k| relays_family.get_or_create(&[("kind", k)]).clone());
        registry.register_collector(Box::new(Gauges));
        Metrics {
            registry: Mutex::new(registry),
            accepted,
            refused,
            handshakes,
            limit_hits,
            messages_in,
            messages_out,
            bytes_in,
            bytes_out,
            requests,
            latency,
            relays,
        }
    }

    /// A server accepted a connection (TCP).
    pub(crate) fn accepted(&self) {
        if enabled() {
            self.accepted.inc();
        }
    }

    /// `bytes` were read from an authenticated stream.
    pub(crate) fn received_bytes(&self, bytes: usize) {
        if enabled() {
            self.bytes_in.inc_by(bytes as u64);
        }
    }

    /// `messages` were read from an authenticated stream.
    pub(crate) fn received_messages(&self, messages: u64) {
        if enabled() {
            self.messages_in.inc_by(messages);
        }
    }

    /// `messages` in `bytes` were written to an authenticated stream.
    pub(crate) fn sent(&self, bytes: usize, messages: usize) {
        if enabled() {
            self.bytes_out.inc_by(bytes as u64);
            self.messages_out.inc_by(messages as u64);
        }
    }

    /// A server refused a connection at accept because `limit` was full.
    pub(crate) fn refused(&self, limit: Limit) {
        if !enabled() {
            return;
        }
        self.refused
            .get_or_create(&[("reason", limit.as_str())])
            .inc();
        self.limit_hit(limit);
    }

    /// `limit` was crossed.
    pub(crate) fn limit_hit(&self, limit: Limit) {
        if !enabled() {
            return;
        }
        self.limit_hits
            .get_or_create(&[("limit", limit.as_str())])
            .inc();
    }

    /// A handshake ended; `mode` is the session's when it succeeded.
    pub(crate) fn handshake(
        &self,
        server: bool,
        result: std::result::Result<crate::protocol::Mode, &Error>,
    ) {
        if !enabled() {
            return;
        }
        let side = if server { "server" } else { "client" };
        let labels = match result {
            Ok(mode) => [
                ("side", side),
                ("outcome", "ok"),
                ("mode", mode.as_str()),
                ("reason", "none"),
            ],
            Err(e) => [
                ("side", side),
                ("outcome", "failed"),
                ("mode", "unknown"),
                ("reason", e.kind().as_str()),
            ],
        };
        self.handshakes.get_or_create(&labels).inc();
    }

    /// A request settled with `result` (an answer with `err` set counts as a remote error);
    /// `sent` is when it was sent, if it was (read here, so a process that counts nothing reads
    /// no clock).
    pub(crate) fn request_settled(
        &self,
        result: &crate::error::Result<crate::message::Response>,
        sent: Option<std::time::Instant>,
    ) {
        if !enabled() {
            return;
        }
        let elapsed = sent.map(|s| crate::stream::now().saturating_duration_since(s));
        self.requests[outcome_index(result)].inc();
        if let Some(d) = elapsed {
            self.latency.0.observe(d);
        }
    }

    /// A router relayed an event (`request` false) or a request.
    pub(crate) fn relayed(&self, request: bool) {
        if !enabled() {
            return;
        }
        self.relays[usize::from(request)].inc();
    }
}

/// The gauges, computed at each scrape from the live instances.
#[derive(Debug)]
struct Gauges;

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let engines: Vec<Arc<Engine>> = {
            let mut all = ENGINES.lock().unwrap_or_else(|p| p.into_inner());
            all.retain(|w| w.strong_count() > 0);
            all.iter().filter_map(Weak::upgrade).collect()
        };
        let mut sums = [0usize; 7];
        for e in &engines {
            let s = e.stats();
            let routes = e.remote_routes.read().map(|r| r.len()).unwrap_or(0);
            for (sum, v) in sums.iter_mut().zip([
                s.connections,
                s.unauthenticated,
                s.unauthenticated_bytes,
                s.streams,
                s.pending,
                s.queued_bytes,
                routes,
            ]) {
                *sum += v;
            }
        }
        for ((name, help), v) in GAUGES.iter().zip(sums) {
            let gauge = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            gauge.encode(m)?;
        }
        Ok(())
    }
}

/// The gauges' names and help, in the order [`Gauges`] sums them.
const GAUGES: [(&str, &str); 7] = [
    (
        "iris_rpc_connections",
        "Open connections (TCP up), authenticated or not",
    ),
    (
        "iris_rpc_unauthenticated_connections",
        "Connections still in TLS or the handshake (servers)",
    ),
    (
        "iris_rpc_unauthenticated_bytes",
        "Bytes the line buffers of unauthenticated connections hold",
    ),
    ("iris_rpc_streams", "Authenticated streams"),
    (
        "iris_rpc_pending_requests",
        "Requests awaiting an answer, over all streams",
    ),
    (
        "iris_rpc_queued_bytes",
        "Bytes queued for writing, over all streams",
    ),
    (
        "iris_rpc_route_table_entries",
        "Uuids reachable through a connected peer (the route table's size)",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The text once every labelled family has a series (an empty family is not written).
    fn text_with_every_family() -> String {
        let m = get();
        m.accepted();
        m.refused(Limit::MaxConnections);
        m.handshake(true, Ok(crate::protocol::Mode::Legacy));
        m.handshake(false, Err(&Error::Auth("x".into())));
        m.request_settled(&Err(Error::Closed), Some(crate::stream::now()));
        m.relayed(true);
        text()
    }

    /// Every series name and label the README documents: renaming one breaks dashboards.
    #[test]
    fn names_are_stable() {
        let t = text_with_every_family();
        for name in [
            "# TYPE iris_rpc_connections gauge",
            "# TYPE iris_rpc_unauthenticated_connections gauge",
            "# TYPE iris_rpc_unauthenticated_bytes gauge",
            "# TYPE iris_rpc_streams gauge",
            "# TYPE iris_rpc_pending_requests gauge",
            "# TYPE iris_rpc_queued_bytes gauge",
            "# TYPE iris_rpc_route_table_entries gauge",
            "# TYPE iris_rpc_connections_accepted_total counter",
            "# TYPE iris_rpc_connections_refused_total counter",
            "# TYPE iris_rpc_handshakes_total counter",
            "# TYPE iris_rpc_limit_hits_total counter",
            "# TYPE iris_rpc_messages_received_total counter",
            "# TYPE iris_rpc_messages_sent_total counter",
            "# TYPE iris_rpc_received_bytes_total counter",
            "# TYPE iris_rpc_sent_bytes_total counter",
            "# TYPE iris_rpc_requests_total counter",
            "# TYPE iris_rpc_request_duration_seconds histogram",
            "# TYPE iris_rpc_router_relays_total counter",
            "iris_rpc_connections_refused_total{reason=\"max_connections\"}",
            "iris_rpc_limit_hits_total{limit=\"max_connections\"}",
            "iris_rpc_handshakes_total{side=\"server\",outcome=\"ok\",mode=\"legacy\",reason=\"none\"}",
            "iris_rpc_handshakes_total{side=\"client\",outcome=\"failed\",mode=\"unknown\",reason=\"auth\"}",
            "iris_rpc_requests_total{outcome=\"answered\"}",
            "iris_rpc_requests_total{outcome=\"remote_error\"}",
            "iris_rpc_requests_total{outcome=\"timeout\"}",
            "iris_rpc_requests_total{outcome=\"disconnected\"}",
            "iris_rpc_requests_total{outcome=\"closed\"}",
            "iris_rpc_request_duration_seconds_bucket{le=\"0.005\"}",
            "iris_rpc_request_duration_seconds_bucket{le=\"+Inf\"}",
            "iris_rpc_request_duration_seconds_count",
            "iris_rpc_request_duration_seconds_sum",
            "iris_rpc_router_relays_total{kind=\"event\"}",
            "iris_rpc_router_relays_total{kind=\"request\"}",
        ] {
            assert!(t.contains(name), "{name} missing from:\n{t}");
        }
    }

    /// The Grafana dashboard in docs/ queries only series this module makes.
    #[test]
    fn the_dashboard_uses_existing_series() {
        let dash = include_str!("../../docs/grafana-dashboard.json");
        let t = text_with_every_family();
        let mut used = 0;
        for (i, _) in dash.match_indices("iris_rpc_") {
            let name: String = dash[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                t.contains(&format!("# TYPE {name} "))
                    || t.contains(&format!("\n{name}{{"))
                    || t.contains(&format!("\n{name} ")),
                "the dashboard queries {name}, which does not exist"
            );
            used += 1;
        }
        assert!(used >= 18, "the dashboard queries {used} series");
    }

    #[test]
    fn the_histogram_is_cumulative_and_counts_the_overflow() {
        let h = SharedHistogram::default();
        h.0.observe(Duration::from_micros(100));
        h.0.observe(Duration::from_millis(20));
        h.0.observe(Duration::from_secs(100));
        let mut r = Registry::default();
        r.register("h_seconds", "h", h);
        let mut t = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut t, &r).unwrap_or_default();
        assert!(t.contains("h_seconds_bucket{le=\"0.0005\"} 1\n"), "{t}");
        assert!(t.contains("h_seconds_bucket{le=\"0.025\"} 2\n"), "{t}");
        assert!(t.contains("h_seconds_bucket{le=\"60\"} 2\n"), "{t}");
        assert!(t.contains("h_seconds_bucket{le=\"+Inf\"} 3\n"), "{t}");
        assert!(t.contains("h_seconds_count 3\n"), "{t}");
    }

    /// No label value is taken from input: every one is in a fixed set.
    #[test]
    fn label_values_come_from_fixed_sets() {
        let t = text();
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let Some(labels) = line.split_once('{').and_then(|(_, r)| r.split_once('}')) else {
                continue;
            };
            for pair in labels.0.split(',') {
                let v = pair.split_once('=').map(|(_, v)| v.trim_matches('"'));
                let v = v.unwrap_or("");
                assert!(
                    v.len() <= 32
                        && v.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_+.".contains(&b)),
                    "label value {v:?} in {line}"
                );
            }
        }
    }
}
