//! `iris-rpc bench`: the Rust sides of the benchmark (`serve`, `client`) and the driver (`all`)
//! that runs every pairing of the table in `bench/pairings.json` side by side.
//!
//! Every side, whatever its language, speaks the same small contract, so a pairing is one entry
//! in the table (a command line for each side):
//! - a server side takes `--port HOST:PORT --auth S --key F --cert F [--no-cipher]`, prints
//!   `{"ready":true,"port":P,"pid":PID}` once listening, and serves until stdin ends. It counts
//!   `bench.ev` events (acknowledging every `ack`-th with `bench.ack`, and answering `bench.end`
//!   with `bench.done`), and answers `bench.echo` requests with `{"ok":true}`.
//! - a client side takes `--address HOST:PORT --auth S --key F --cert F [--no-cipher]
//!   --workload events|requests|openloop|idle` and the workload's parameters, and prints one
//!   `{"result":{..}}` line (`idle` prints it once all are connected, then holds the
//!   connections until stdin ends).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use iris_rpc::{
    Backend, Certificates, Client, ClusterOptions, Error, Message, Options, Router, Security,
    Server, Side,
};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

mod nats;
use nats::find as find_program;

/// `iris-rpc bench ...`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Run every workload for every pairing of the table and print the medians as tables.
    All(AllArgs),
    /// The Rust server side of a pairing (serves until stdin ends).
    Serve(ServeArgs),
    /// The Rust client side of a pairing (runs one workload, prints one JSON result line).
    Client(ClientArgs),
    /// The open-loop pacer alone, against an in-process future that is ready at once: what the
    /// client harness costs per request (prints one JSON result line).
    Pacer(PacerArgs),
    /// The NATS reference server side: starts `nats-server` (TLS on) and serves the contract
    /// through it (serves until stdin ends).
    NatsServe(ServeArgs),
    /// The NATS reference client side (runs one workload, prints one JSON result line).
    NatsClient(ClientArgs),
}

#[derive(Args)]
struct PacerArgs {
    /// Requests per second.
    #[arg(long, default_value_t = 100_000.0)]
    rate: f64,
    /// Seconds to run for.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
}

#[derive(Args)]
struct SideCommon {
    /// The shared secret.
    #[arg(long, default_value = "bench-secret")]
    auth: String,
    /// Turn the legacy line cipher off.
    #[arg(long)]
    no_cipher: bool,
    /// Session modes: legacy, prefer-v2 or require-v2.
    #[arg(long, default_value = "prefer-v2", value_parser = crate::parse_security)]
    security: Security,
    /// Private key PEM file.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Certificate PEM file.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Count metrics in this process (on, as every instance does by default) or not (off,
    /// `iris_rpc::metrics::set_enabled(false)`): the pairing `rust-rust-v2-metrics-off` runs
    /// both sides off, to compare with `rust-rust-v2`.
    #[arg(long, value_enum, default_value = "on")]
    metrics: OnOff,
}

/// A switch on the command line.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

impl SideCommon {
    /// Applies the process-wide switches (metrics) before anything starts.
    fn apply(&self) {
        iris_rpc::metrics::set_enabled(self.metrics == OnOff::On);
    }

    fn options(&self) -> Options {
        let mut o = Options::new(self.auth.clone())
            .cipher(!self.no_cipher)
            .security(self.security);
        if let (Some(k), Some(c)) = (&self.key, &self.cert) {
            o = o.certificates(Certificates::new(
                k.display().to_string(),
                c.display().to_string(),
            ));
        }
        o
    }
}

#[derive(Args)]
struct ServeArgs {
    /// host:port to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    port: String,
    #[command(flatten)]
    common: SideCommon,
    /// The tokio runtime this side runs on.
    #[arg(long, value_enum, default_value = "multi")]
    runtime: Flavor,
    /// Put a Router (in this process) before the server: clients connect to the router's
    /// frontend and the router relays to the server, to measure what one router costs.
    #[arg(long, conflicts_with = "via_cluster")]
    via_router: bool,
    /// Put two routers of one cluster (in this process, on a nats-server this side starts
    /// and stops) between clients and the server: clients connect to router A's frontend, the
    /// server is behind router B, so what clients address to the server's uuid crosses NATS.
    #[arg(long)]
    via_cluster: bool,
    /// This server's uuid (random when absent); clients address it with `--to-uuid`.
    #[arg(long)]
    uuid: Option<String>,
}

/// Which tokio runtime a side runs on: the CLI's multi-thread runtime (one worker per CPU, what
/// `#[tokio::main]` gives), or a current-thread runtime (no cross-thread wake-ups).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Flavor {
    /// Multi-thread runtime, one worker per CPU.
    Multi,
    /// Current-thread runtime on a thread of its own.
    Current,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// One-way events of `--size` bytes for `--duration` seconds.
    Events,
    /// Requests, `--inflight` at a time, for `--duration` seconds.
    Requests,
    /// Requests at a fixed `--rate` per second for `--duration` seconds (open loop).
    Openloop,
    /// `--connections` idle authenticated connections, held until stdin ends.
    Idle,
}

#[derive(Args)]
struct ClientArgs {
    /// Server address, host:port.
    #[arg(long)]
    address: String,
    #[command(flatten)]
    common: SideCommon,
    /// What to measure.
    #[arg(long, value_enum)]
    workload: Workload,
    /// Event body size in bytes (the JSON text without `_sig`).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds to run for.
    #[arg(long, default_value_t = 1.5)]
    duration: f64,
    /// Requests in flight (closed loop).
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Requests per second (open loop).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Idle connections to open.
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// Idle connections being established at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// The tokio runtime this side runs on.
    #[arg(long, value_enum, default_value = "multi")]
    runtime: Flavor,
    /// Address every event and request to this uuid (`_uuid`), for a server that is not the
    /// router this client is on (`bench serve --via-cluster --uuid U`).
    #[arg(long)]
    to_uuid: Option<String>,
}

#[derive(Args)]
struct AllArgs {
    /// Runs of each measurement; the tables show medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per throughput or latency run.
    #[arg(long, default_value_t = 1.5)]
    duration: f64,
    /// Idle connections per server.
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// Only these pairings (comma-separated names, as in the table).
    #[arg(long, value_delimiter = ',')]
    pairings: Vec<String>,
    /// Only these workloads (comma-separated: events, requests, idle, curve).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// The latency curve's points, in % of each curve pairing's 256-in-flight rate.
    #[arg(long, value_delimiter = ',', default_values_t = [10.0, 25.0, 50.0, 75.0, 90.0])]
    curve_points: Vec<f64>,
    /// The one open-loop rate (requests/s) every pairing runs at, to compare at equal load.
    #[arg(long, default_value_t = 5000.0)]
    fixed_rate: f64,
    /// Write the latency curve as an SVG picture here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Event body sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 1024, 65536])]
    sizes: Vec<usize>,
    /// Cipher settings to run: on, off.
    #[arg(long, value_delimiter = ',', default_values = ["on", "off"])]
    cipher: Vec<String>,
    /// The pairing table (JSON); relative commands run from `--root`.
    #[arg(long)]
    table: Option<PathBuf>,
    /// Repository root the table's commands run from.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Replace the text between `<!-- bench:begin -->` and `<!-- bench:end -->` in this file.
    #[arg(long)]
    update: Option<PathBuf>,
    /// Also write every run's raw result here, as JSON.
    #[arg(long)]
    raw: Option<PathBuf>,
}

/// Runs `iris-rpc bench ...`.
pub async fn run(a: BenchArgs) -> Result<(), Error> {
    match a.command {
        BenchCommand::Serve(s) if s.runtime == Flavor::Current => on_current_thread(serve(s)).await,
        BenchCommand::Serve(s) => serve(s).await,
        BenchCommand::Client(c) if c.runtime == Flavor::Current => {
            on_current_thread(client(c)).await
        }
        BenchCommand::Client(c) => client(c).await,
        BenchCommand::Pacer(p) => on_current_thread(pacer(p)).await,
        BenchCommand::NatsServe(s) => nats::serve(s).await,
        BenchCommand::NatsClient(c) if c.runtime == Flavor::Current => {
            on_current_thread(nats::client(c)).await
        }
        BenchCommand::NatsClient(c) => nats::client(c).await,
        BenchCommand::All(d) => tokio::task::spawn_blocking(move || drive(d))
            .await
            .map_err(|e| Error::Config(format!("benchmark driver failed: {e}")))?,
    }
}

/// Runs `fut` on a current-thread runtime on a thread of its own.
async fn on_current_thread<F>(fut: F) -> Result<(), Error>
where
    F: std::future::Future<Output = Result<(), Error>> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| bench_error(format!("cannot start a runtime: {e}")))?
            .block_on(fut)
    })
    .await
    .map_err(|e| bench_error(format!("runtime thread failed: {e}")))?
}

fn bench_error(what: impl std::fmt::Display) -> Error {
    Error::Config(what.to_string())
}

fn print_line(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// A JSON object `{"op":op,"d":"xxx.."}` (with `"_uuid":to` after `op` when addressed)
/// exactly `size` bytes long (or the shortest such object when `size` is smaller).
fn padded_body(op: &str, size: usize, to: Option<&str>) -> String {
    let to = to.map_or(String::new(), |u| format!(",\"_uuid\":{}", json!(u)));
    let head = format!("{{\"op\":\"{op}\"{to},\"d\":\"");
    let fill = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + fill + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', fill));
    s.push_str("\"}");
    s
}

async fn stdin_closed() {
    let mut buf = [0u8; 256];
    let mut stdin = tokio::io::stdin();
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}

// ---- server side -------------------------------------------------------------------------

async fn serve(a: ServeArgs) -> Result<(), Error> {
    a.common.apply();
    let mut opts = a.common.options().port(a.port.as_str());
    if opts.certificates.is_none() {
        opts = opts.certificates(Certificates::self_signed()?);
    }
    if let Some(u) = &a.uuid {
        opts = opts.uuid(u.clone());
    }
    let server = Arc::new(Server::bind(opts).await?);
    let count = Arc::new(AtomicU64::new(0));
    let ack_every = Arc::new(AtomicU64::new(u64::MAX));

    let (c, k) = (count.clone(), ack_every.clone());
    server.on("bench.start", move |msg, _, _| {
        let ack = msg.value()["ack"].as_u64().unwrap_or(u64::MAX).max(1);
        k.store(ack, Ordering::SeqCst);
        c.store(0, Ordering::SeqCst);
    });
    // Answers go to the sender's uuid: the peer itself, or a client behind a router.
    let (c, k, s) = (count.clone(), ack_every.clone(), Arc::downgrade(&server));
    server.on("bench.ev", move |_, uuid, _| {
        let n = c.fetch_add(1, Ordering::Relaxed) + 1;
        if n % k.load(Ordering::Relaxed) == 0 {
            if let Some(s) = s.upgrade() {
                let _ = s.dispatch_to(uuid, json!({"op": "bench.ack", "n": n}));
            }
        }
    });
    let (c, s) = (count.clone(), Arc::downgrade(&server));
    server.on("bench.end", move |_, uuid, _| {
        let n = c.load(Ordering::SeqCst);
        if let Some(s) = s.upgrade() {
            let _ = s.dispatch_to(uuid, json!({"op": "bench.done", "n": n}));
        }
    });
    server.handle("bench.echo", |_req| async { Ok(json!({"ok": true})) });

    if a.via_cluster {
        return serve_via_cluster(&a, &server).await;
    }
    let router = if a.via_router {
        let frontend = a.common.options().port("127.0.0.1:0");
        let frontend = match frontend.certificates {
            Some(_) => frontend,
            None => frontend.certificates(Certificates::self_signed()?),
        };
        let backend = a.common.options().address(server.local_addr().to_string());
        let router = Router::start(frontend, Backend::Client(backend)).await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while router.peers(Side::Backend).is_empty() {
            if std::time::Instant::now() > deadline {
                return Err(bench_error("the router did not reach the server in 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Some(router)
    } else {
        None
    };
    let port = router
        .as_ref()
        .map_or(server.local_addr().port(), |r| r.local_addr().port());
    print_line(&json!({
        "ready": true,
        "port": port,
        "pid": std::process::id(),
    }));
    stdin_closed().await;
    if let Some(r) = router {
        r.close().await;
    }
    server.close().await;
    Ok(())
}

/// A nats-server on a free loopback port, stopped when dropped.
struct NatsServer {
    child: Child,
    url: String,
}

impl NatsServer {
    fn start() -> Result<NatsServer, Error> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| bench_error(format!("no free port for nats-server: {e}")))?
            .port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                bench_error(format!(
                    "the cluster pairing needs nats-server ({e}); install it \
                     (apt-get install nats-server, or tests/cluster/nats-server.sh)"
                ))
            })?;
        let nats = NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(bench_error("nats-server did not listen within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nats)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve --via-cluster`: router B's backend is a client of `server`, router A's backend a
/// server nobody joins, both in one cluster on a nats-server of our own; clients connect to
/// A. The port printed is A's, once a request addressed to the server crosses.
async fn serve_via_cluster(a: &ServeArgs, server: &Server) -> Result<(), Error> {
    let uuid = a
        .uuid
        .clone()
        .ok_or_else(|| bench_error("--via-cluster needs --uuid (clients give it as --to-uuid)"))?;
    let nats = NatsServer::start()?;
    let cluster = ClusterOptions::new(&nats.url);
    let side = |port: &str| -> Result<Options, Error> {
        let o = a.common.options().port(port);
        Ok(match o.certificates {
            Some(_) => o,
            None => o.certificates(Certificates::self_signed()?),
        })
    };
    let to_server = a.common.options().address(server.local_addr().to_string());
    let b = Router::start_clustered(
        side("127.0.0.1:0")?,
        Backend::Client(to_server),
        cluster.clone(),
    )
    .await?;
    let front = Router::start_clustered(
        side("127.0.0.1:0")?,
        Backend::Server(side("127.0.0.1:0")?),
        cluster,
    )
    .await?;
    // Ready once a request to the server crosses from A (B's subscription of its uuid is up).
    let probe = Client::connect(a.common.options().address(front.local_addr().to_string()))?;
    probe.wait_connected(Duration::from_secs(10)).await?;
    let ask = Message::from_json(&json!({"op": "bench.echo", "_uuid": uuid}).to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe.request_raw(None, &ask).await.is_err() {
        if Instant::now() > deadline {
            return Err(bench_error(
                "a request from router A did not reach the server behind router B in 10 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    probe.close().await;
    print_line(&json!({
        "ready": true,
        "port": front.local_addr().port(),
        "pid": std::process::id(),
    }));
    stdin_closed().await;
    front.close().await;
    b.close().await;
    server.close().await;
    drop(nats);
    Ok(())
}

// ---- client side -------------------------------------------------------------------------

async fn client(a: ClientArgs) -> Result<(), Error> {
    a.common.apply();
    if a.workload == Workload::Idle {
        return idle(&a).await;
    }
    let opts = a.common.options().address(a.address.clone());
    let client = Arc::new(Client::connect(opts)?);
    client.wait_connected(Duration::from_secs(10)).await?;
    let duration = Duration::from_secs_f64(a.duration.clamp(0.01, 600.0));
    let to = a.to_uuid.as_deref();
    let result = match a.workload {
        Workload::Events => events(&client, a.size.max(16), duration, to).await,
        Workload::Requests => requests(&client, a.inflight.max(1), duration, to).await,
        _ => open_loop(&client, a.rate.max(1.0), duration, to).await,
    };
    client.close().await;
    print_line(&json!({ "result": result? }));
    Ok(())
}

#[derive(Default)]
struct Flow {
    acked: AtomicU64,
    done: AtomicU64,
    finished: AtomicU64,
    notify: Notify,
}

async fn events(
    client: &Client,
    size: usize,
    duration: Duration,
    to: Option<&str>,
) -> Result<Value, Error> {
    let window = event_window(size);
    let flow = Arc::new(Flow::default());
    let f = flow.clone();
    client.on("bench.ack", move |msg, _, _| {
        if let Some(n) = msg.value()["n"].as_u64() {
            f.acked(n);
        }
    });
    let f = flow.clone();
    client.on("bench.done", move |msg, _, _| {
        f.done(msg.value()["n"].as_u64().unwrap_or(0));
    });
    let msg = Message::from_json(&padded_body("bench.ev", size, to))?;
    // Addressed to the server's uuid when it sits behind a cluster (every event crosses NATS).
    let control = |mut v: Value| {
        if let Some(u) = to {
            v["_uuid"] = json!(u);
        }
        v
    };
    client.dispatch(control(
        json!({"op": "bench.start", "ack": (window / 4).max(1)}),
    ))?;
    send_events(
        &flow,
        window,
        size,
        duration,
        || std::future::ready(client.dispatch(&msg).map(drop)),
        |sent| {
            std::future::ready(
                client
                    .dispatch(control(json!({"op": "bench.end", "sent": sent})))
                    .map(drop),
            )
        },
    )
    .await
}

/// Credit-based flow: at most this many events (about 4 MiB of bodies) are unacknowledged, so
/// the sender measures the pipe, not how fast it can grow a queue. The server acknowledges
/// every quarter of it.
fn event_window(size: usize) -> u64 {
    ((4usize << 20) / size).clamp(64, 65_536) as u64
}

impl Flow {
    fn acked(&self, n: u64) {
        self.acked.store(n, Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn done(&self, n: u64) {
        self.done.store(n, Ordering::SeqCst);
        self.finished.store(1, Ordering::SeqCst);
        self.notify.notify_one();
    }
}

/// The events workload once `bench.start` is sent, whatever carries the events: `send` sends
/// one event, `end` the `bench.end` (with the count sent); `flow` is fed by the server's
/// `bench.ack` and `bench.done`.
async fn send_events<S, SF, D, DF>(
    flow: &Flow,
    window: u64,
    size: usize,
    duration: Duration,
    mut send: S,
    end: D,
) -> Result<Value, Error>
where
    S: FnMut() -> SF,
    SF: std::future::Future<Output = Result<(), Error>>,
    D: FnOnce(u64) -> DF,
    DF: std::future::Future<Output = Result<(), Error>>,
{
    let start = Instant::now();
    let until = start + duration;
    let mut sent = 0u64;
    loop {
        while sent.saturating_sub(flow.acked.load(Ordering::SeqCst)) >= window {
            if tokio::time::timeout(Duration::from_secs(30), flow.notify.notified())
                .await
                .is_err()
            {
                return Err(bench_error("no acknowledgement from the server for 30 s"));
            }
        }
        send().await?;
        sent += 1;
        if sent % 256 == 0 && Instant::now() >= until {
            break;
        }
    }
    end(sent).await?;
    let waited = Instant::now();
    while flow.finished.load(Ordering::SeqCst) == 0 {
        if waited.elapsed() > Duration::from_secs(60) {
            return Err(bench_error("no bench.done from the server within 60 s"));
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), flow.notify.notified()).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let count = flow.done.load(Ordering::SeqCst);
    Ok(json!({
        "sent": sent,
        "count": count,
        "secs": secs,
        "size": size,
        "msgs_per_s": count as f64 / secs,
        "mb_per_s": (count as f64 * size as f64) / secs / 1e6,
    }))
}

fn histogram() -> Result<Histogram<u64>, Error> {
    // Nanoseconds, 1 ns to 1 hour, three significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
        .map_err(|e| bench_error(format!("histogram: {e}")))
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(ns);
}

fn latency_json(h: &Histogram<u64>) -> Value {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "p50_us": us(0.5),
        "p99_us": us(0.99),
        "p999_us": us(0.999),
        "max_us": h.max() as f64 / 1000.0,
    })
}

fn merge(into: &mut Value, extra: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), extra) {
        a.extend(b);
    }
}

fn request_message(to: Option<&str>) -> Result<Message, Error> {
    Message::from_json(&padded_body("bench.echo", 64, to))
}

async fn requests(
    client: &Arc<Client>,
    inflight: usize,
    duration: Duration,
    to: Option<&str>,
) -> Result<Value, Error> {
    let msg = request_message(to)?;
    let c = client.clone();
    closed_loop(inflight, duration, move || c.request_raw(None, &msg)).await
}

/// `inflight` request loops (closed loop) of requests made by `make`, for `duration`. A failed
/// request ends its loop.
async fn closed_loop<F, Fut, T, E>(
    inflight: usize,
    duration: Duration,
    make: F,
) -> Result<Value, Error>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
{
    let make = Arc::new(make);
    let start = Instant::now();
    let end = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..inflight {
        let m = make.clone();
        let mut h = histogram()?;
        workers.spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            while Instant::now() < end {
                let t = Instant::now();
                match m().await {
                    Ok(_) => {
                        record(&mut h, t.elapsed());
                        ok += 1;
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (ok, errors, h)
        });
    }
    let (mut ok, mut errors, mut all) = (0u64, 0u64, histogram()?);
    while let Some(r) = workers.join_next().await {
        let (o, e, h) = r.map_err(|e| bench_error(format!("request worker: {e}")))?;
        ok += o;
        errors += e;
        let _ = all.add(&h);
    }
    let secs = start.elapsed().as_secs_f64();
    let mut v = json!({
        "count": ok,
        "errors": errors,
        "secs": secs,
        "inflight": inflight,
        "req_per_s": ok as f64 / secs,
    });
    merge(&mut v, latency_json(&all));
    Ok(v)
}

/// The open loop of the Iris client: `bench.echo` requests at `rate` per second.
async fn open_loop(
    client: &Arc<Client>,
    rate: f64,
    duration: Duration,
    to: Option<&str>,
) -> Result<Value, Error> {
    let msg = request_message(to)?;
    let c = client.clone();
    paced(rate, duration, move || c.request_raw(None, &msg)).await
}

/// This process's CPU time so far (user and system, every thread, including threads that have
/// ended), from `/proc/self/stat` in clock ticks of 10 ms.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let utime: f64 = f.nth(11)?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Requests made by `make` at `rate` per second for `duration`, at fixed intended send times
/// whatever the answers do; latency is measured from each request's intended send time. The
/// result also gives this process's CPU time per request (`cpu_us_per_req`).
///
/// A pacer thread (tokio's timer has millisecond resolution) wakes at the next send time and
/// hands the range of requests that are due to one task in one message; that task makes the
/// requests and keeps them in one `FuturesUnordered`, recording each answer's latency into one
/// histogram. So the harness costs one channel message (and at most one wake) per pacer pass,
/// not a task and a wake per request. A late pacer, or the task busy with answers, delays the
/// send but not the intended send time, so it shows in the latency (no coordinated omission).
async fn paced<F, Fut, T, E>(rate: f64, duration: Duration, make: F) -> Result<Value, Error>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
    T: 'static,
    E: 'static,
{
    let cpu_before = cpu_secs();
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let interval = 1e9 / rate;
    let start = Instant::now();
    let at = move |i: u64| start + Duration::from_nanos((i as f64 * interval) as u64);
    let (tx, due_rx) = tokio::sync::mpsc::unbounded_channel::<std::ops::Range<u64>>();
    let pacer = std::thread::spawn(move || {
        let mut i = 0u64;
        while i < total {
            let now = Instant::now();
            let due = at(i);
            if due > now {
                std::thread::sleep(due - now);
            }
            let now = Instant::now();
            let first = i;
            while i < total && at(i) <= now {
                i += 1;
            }
            if tx.send(first..i).is_err() {
                break;
            }
        }
    });
    // A task of its own, not this (possibly `block_on`) future: the answers' wake-ups then stay
    // on the runtime's local queue. Unconstrained by tokio's cooperative budget: it does the
    // work of every request (first poll, answer) that a task per request would have done with
    // a budget each, and it returns to the runtime as soon as nothing is ready.
    let drain = tokio::spawn(tokio::task::unconstrained(drain_paced(due_rx, at, make)));
    let limit = duration + Duration::from_secs(60);
    let (hist, sent, errors) = match tokio::time::timeout(limit, drain).await {
        Ok(r) => r.map_err(|e| bench_error(format!("open-loop task: {e}")))??,
        Err(_) => return Err(bench_error("open-loop requests did not settle in time")),
    };
    tokio::task::spawn_blocking(move || pacer.join())
        .await
        .map_err(|e| bench_error(format!("pacer: {e}")))?
        .map_err(|_| bench_error("pacer thread panicked"))?;
    let secs = start.elapsed().as_secs_f64();
    let mut v = json!({
        "count": sent - errors,
        "errors": errors,
        "secs": secs,
        "rate": rate,
    });
    if let (Some(a), Some(b)) = (cpu_before, cpu_secs()) {
        merge(
            &mut v,
            json!({"cpu_us_per_req": (b - a) * 1e6 / sent.max(1) as f64}),
        );
    }
    merge(&mut v, latency_json(&hist));
    Ok(v)
}

/// The task of [`paced`]: makes the requests of each due range as it arrives and records their
/// latencies from the intended send times (`at`) until the pacer is done and all have settled.
/// Returns the histogram, the requests made, and how many failed.
async fn drain_paced<F, Fut, T, E>(
    mut due: tokio::sync::mpsc::UnboundedReceiver<std::ops::Range<u64>>,
    at: impl Fn(u64) -> Instant,
    mut make: F,
) -> Result<(Histogram<u64>, u64, u64), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut hist = histogram()?;
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut inflight = futures_util::stream::FuturesUnordered::new();
    let mut pacing = true;
    while pacing || !inflight.is_empty() {
        tokio::select! {
            biased;
            range = due.recv(), if pacing => match range {
                Some(range) => {
                    for i in range {
                        let due = at(i);
                        // Made here, so a request that sends in the call leaves now.
                        let reply = make();
                        sent += 1;
                        inflight.push(async move {
                            let r = reply.await;
                            (r.is_ok(), due.elapsed())
                        });
                    }
                }
                None => pacing = false,
            },
            Some((ok, took)) = futures_util::StreamExt::next(&mut inflight) => {
                if ok {
                    record(&mut hist, took);
                } else {
                    errors += 1;
                }
            }
        }
    }
    Ok((hist, sent, errors))
}

/// `bench pacer`: the open loop against an in-process future that is ready at once, on the
/// client's current-thread runtime: what the harness itself costs per request, and the latency
/// it adds, with no connection at all.
async fn pacer(a: PacerArgs) -> Result<(), Error> {
    let duration = Duration::from_secs_f64(a.duration.clamp(0.01, 600.0));
    let v = paced(a.rate.max(1.0), duration, || {
        std::future::ready(Ok::<(), Error>(()))
    })
    .await?;
    print_line(&json!({ "result": v }));
    Ok(())
}

async fn idle(a: &ClientArgs) -> Result<(), Error> {
    let start = Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    let mut clients = Vec::with_capacity(a.connections);
    let mut failed = 0usize;
    let mut collect = |r: Option<Result<Result<Client, Error>, tokio::task::JoinError>>| match r {
        Some(Ok(Ok(c))) => clients.push(c),
        Some(_) => failed += 1,
        None => {}
    };
    for _ in 0..a.connections {
        while pending.len() >= a.concurrency.max(1) {
            collect(pending.join_next().await);
        }
        let opts = a.common.options().address(a.address.clone());
        pending.spawn(async move {
            let c = Client::connect(opts)?;
            c.wait_connected(Duration::from_secs(60)).await?;
            Ok::<_, Error>(c)
        });
    }
    while let Some(r) = pending.join_next().await {
        collect(Some(r));
    }
    let secs = start.elapsed().as_secs_f64();
    let connected = clients.len();
    print_line(&json!({"result": {
        "connected": connected,
        "failed": failed,
        "secs": secs,
        "handshakes_per_s": connected as f64 / secs,
    }}));
    stdin_closed().await;
    // Exiting drops the connections; closing 5,000 clients one by one would only add time.
    Ok(())
}

// ---- driver ------------------------------------------------------------------------------

const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";

/// One entry of the pairing table.
struct Pairing {
    name: String,
    client: Vec<String>,
    server: Vec<String>,
    pending: Option<String>,
    /// Workloads this pairing does not run (`"skip": ["idle"]`).
    skip: Vec<String>,
    /// On the latency curve (the table's top-level `"curve"` list).
    curve: bool,
    /// No cipher setting of its own (`"tls_only": true`): run once, in the first cipher pass.
    tls_only: bool,
    /// Programs it needs (`"requires": ["nats-server"]`); without them it is skipped.
    requires: Vec<String>,
}

fn load_table(path: Option<&Path>, iris: &str) -> Result<Vec<Pairing>, Error> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| bench_error(format!("cannot read {}: {e}", p.display())))?,
        None => include_str!("../../bench/pairings.json").to_owned(),
    };
    let v: Value =
        serde_json::from_str(&text).map_err(|e| bench_error(format!("pairing table: {e}")))?;
    let list = v["pairings"]
        .as_array()
        .ok_or_else(|| bench_error("pairing table: no \"pairings\" array"))?;
    let argv = |x: &Value| -> Vec<String> {
        x.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|s| s.replace("{iris}", iris))
                    .collect()
            })
            .unwrap_or_default()
    };
    let curve: Vec<&str> = v["curve"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let strings = |x: &Value| -> Vec<String> {
        x.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for p in list {
        let name = p["name"].as_str().unwrap_or("?").to_owned();
        let (client, server) = (argv(&p["client"]), argv(&p["server"]));
        let pending = p["pending"].as_str().map(str::to_owned);
        let skip = strings(&p["skip"]);
        if pending.is_none() && (client.is_empty() || server.is_empty()) {
            return Err(bench_error(format!(
                "pairing {name}: needs \"client\" and \"server\" command lines"
            )));
        }
        out.push(Pairing {
            client,
            server,
            pending,
            skip,
            curve: curve.contains(&name.as_str()),
            tls_only: p["tls_only"].as_bool().unwrap_or(false),
            requires: strings(&p["requires"]),
            name,
        });
    }
    Ok(out)
}

/// A child process whose stdout lines arrive on a channel.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    what: String,
}

impl Proc {
    fn spawn(argv: &[String], extra: &[String], root: &Path) -> Result<Proc, Error> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| bench_error("empty command line"))?;
        let what = format!("{} {}", argv.join(" "), extra.join(" "));
        let mut child = Command::new(prog)
            .args(args)
            .args(extra)
            .current_dir(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| bench_error(format!("cannot start {what}: {e}")))?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            let tail = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut t) = tail.lock() {
                        if t.len() >= 20 {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Proc {
            child,
            stdin,
            lines,
            stderr,
            what,
        })
    }

    /// The first stdout line that is a JSON object with `key`.
    fn wait_for(&mut self, key: &str, timeout: Duration) -> Result<Value, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v.get(key).is_some() {
                            return Ok(v);
                        }
                    }
                }
                Err(e) => {
                    let tail = self
                        .stderr
                        .lock()
                        .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
                        .unwrap_or_default();
                    let why = match e {
                        mpsc::RecvTimeoutError::Timeout => "timed out",
                        mpsc::RecvTimeoutError::Disconnected => "exited",
                    };
                    return Err(bench_error(format!(
                        "{} {why} before printing {key:?}; stderr:\n{tail}",
                        self.what
                    )));
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes stdin, waits briefly for a clean exit, then kills.
    fn stop(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn field_median(runs: &[Value], key: &str) -> Option<f64> {
    median(runs.iter().filter_map(|r| r[key].as_f64()).collect())
}

fn thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn fmt_opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "n/a".into(), f)
}

fn size_label(size: usize) -> String {
    if size >= 1024 && size % 1024 == 0 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

struct Ctx {
    root: PathBuf,
    key: String,
    cert: String,
    runs: usize,
    duration: f64,
    raw: Vec<Value>,
}

impl Ctx {
    fn tls_args(&self, cipher: bool) -> Vec<String> {
        let mut v = vec![
            "--auth".to_owned(),
            "bench-secret".to_owned(),
            "--key".to_owned(),
            self.key.clone(),
            "--cert".to_owned(),
            self.cert.clone(),
        ];
        if !cipher {
            v.push("--no-cipher".into());
        }
        v
    }

    fn start_server(&self, p: &Pairing, cipher: bool) -> Result<(Proc, u16), Error> {
        let mut args = vec!["--port".to_owned(), "127.0.0.1:0".to_owned()];
        args.extend(self.tls_args(cipher));
        let mut server = Proc::spawn(&p.server, &args, &self.root)?;
        let ready = server.wait_for("ready", Duration::from_secs(30))?;
        let port = ready["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| bench_error(format!("{}: ready line without port", p.name)))?;
        Ok((server, port))
    }

    /// Runs one client to completion and returns its result object.
    fn client_run(
        &mut self,
        p: &Pairing,
        port: u16,
        cipher: bool,
        workload: &[String],
        label: &str,
    ) -> Result<Value, Error> {
        let mut args = vec!["--address".to_owned(), format!("127.0.0.1:{port}")];
        args.extend(self.tls_args(cipher));
        args.extend(workload.iter().cloned());
        let mut c = Proc::spawn(&p.client, &args, &self.root)?;
        let limit = Duration::from_secs_f64(self.duration * 4.0 + 60.0);
        let v = c.wait_for("result", limit)?;
        c.stop();
        let result = v["result"].clone();
        self.raw.push(json!({
            "pairing": p.name, "cipher": cipher, "workload": label, "result": result,
            "load": loadavg(),
        }));
        Ok(result)
    }

    fn runs_of(
        &mut self,
        p: &Pairing,
        port: u16,
        cipher: bool,
        workload: &[String],
        label: &str,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        for i in 0..self.runs {
            match self.client_run(p, port, cipher, workload, label) {
                Ok(v) => {
                    eprintln!("  {label} run {}: {v}", i + 1);
                    out.push(v);
                }
                Err(e) => eprintln!("  {label} run {} failed: {e}", i + 1),
            }
        }
        out
    }
}

#[derive(Default)]
struct Tables {
    events: Vec<String>,
    requests: Vec<String>,
    idle: Vec<String>,
    curve: Vec<String>,
    fixed: Vec<String>,
    points: Vec<CurvePoint>,
}

/// One point of the latency curve (medians of the runs), for the picture.
struct CurvePoint {
    pairing: String,
    load_pct: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p999_us: Option<f64>,
}

fn drive(a: AllArgs) -> Result<(), Error> {
    let iris = std::env::current_exe()
        .map_err(|e| bench_error(format!("cannot find this executable: {e}")))?
        .display()
        .to_string();
    let root = a.root.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    });
    let table = load_table(a.table.as_deref(), &iris)?;
    let dir = std::env::temp_dir().join(format!("iris-rpc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| bench_error(format!("cannot create {}: {e}", dir.display())))?;
    let (key, cert) = iris_rpc::tls::self_signed_pem(&["localhost", "127.0.0.1"])?;
    let (key_path, cert_path) = (dir.join("key.pem"), dir.join("cert.pem"));
    for (path, text) in [(&key_path, key), (&cert_path, cert)] {
        std::fs::write(path, text)
            .map_err(|e| bench_error(format!("cannot write {}: {e}", path.display())))?;
    }
    let mut ctx = Ctx {
        root,
        key: key_path.display().to_string(),
        cert: cert_path.display().to_string(),
        runs: a.runs.max(1),
        duration: a.duration.clamp(0.05, 120.0),
        raw: Vec::new(),
    };
    let wants_all = |w: &str| a.workloads.is_empty() || a.workloads.iter().any(|x| x == w);
    let ciphers: Vec<bool> = a.cipher.iter().map(|c| c != "off").collect();
    let started = Instant::now();
    let load_start = loadavg();
    let mut t = Tables::default();
    let mut pending = Vec::new();
    for p in &table {
        if !a.pairings.is_empty() && !a.pairings.iter().any(|n| n == &p.name) {
            continue;
        }
        if let Some(why) = &p.pending {
            pending.push(format!("| {} | pending: {why} |", p.name));
            continue;
        }
        if let Some(missing) = p.requires.iter().find(|r| find_program(r).is_none()) {
            eprintln!("== {}: skipped, {missing} is not installed", p.name);
            pending.push(format!(
                "| {} | skipped: {missing} is not installed |",
                p.name
            ));
            continue;
        }
        let wants = |w: &str| wants_all(w) && !p.skip.iter().any(|x| x == w);
        for (pass, &cipher) in ciphers.iter().enumerate() {
            if !(wants("events") || wants("requests") || wants("curve")) {
                break;
            }
            if p.tls_only && pass > 0 {
                break;
            }
            let c_label = match (p.tls_only, cipher) {
                (true, _) => "TLS only",
                (false, true) => "on",
                (false, false) => "off",
            };
            eprintln!("== {} cipher {c_label} (load {})", p.name, loadavg());
            let (server, port) = match ctx.start_server(p, cipher) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("  server failed: {e}");
                    continue;
                }
            };
            if wants("events") {
                let mut cells = Vec::new();
                for &size in &a.sizes {
                    let w = [
                        "--workload".into(),
                        "events".into(),
                        "--size".into(),
                        size.to_string(),
                        "--duration".into(),
                        ctx.duration.to_string(),
                    ];
                    let runs = ctx.runs_of(p, port, cipher, &w, &format!("events {size}"));
                    cells.push(fmt_opt(field_median(&runs, "msgs_per_s"), thousands));
                    cells.push(fmt_opt(field_median(&runs, "mb_per_s"), |x| {
                        format!("{x:.1}")
                    }));
                }
                t.events.push(format!(
                    "| {} | {c_label} | {} | {} |",
                    p.name,
                    cells.join(" | "),
                    loadavg()
                ));
            }
            let secs = ctx.duration;
            let closed = |n: usize| {
                vec![
                    "--workload".to_owned(),
                    "requests".to_owned(),
                    "--inflight".to_owned(),
                    n.to_string(),
                    "--duration".to_owned(),
                    secs.to_string(),
                ]
            };
            let open_at = |rate: f64, secs: f64| {
                vec![
                    "--workload".to_owned(),
                    "openloop".to_owned(),
                    "--rate".to_owned(),
                    format!("{rate:.0}"),
                    "--duration".to_owned(),
                    secs.to_string(),
                ]
            };
            // The 256-in-flight rate and the open loop at half of it, for the curve.
            let mut measured: Option<(Option<f64>, Vec<Value>)> = None;
            if wants("requests") {
                let (w1, w256) = (closed(1), closed(256));
                let one = ctx.runs_of(p, port, cipher, &w1, "requests 1");
                let many = ctx.runs_of(p, port, cipher, &w256, "requests 256");
                let max = field_median(&many, "req_per_s");
                let mut open = Vec::new();
                let rate = max.map(|m| (m * 0.5).max(1.0));
                if let Some(rate) = rate {
                    let w = open_at(rate, ctx.duration * 2.0);
                    open = ctx.runs_of(p, port, cipher, &w, "openloop");
                }
                let us = |x: f64| format!("{x:.0}");
                t.requests.push(format!(
                    "| {} | {c_label} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    p.name,
                    fmt_opt(field_median(&one, "req_per_s"), thousands),
                    fmt_opt(field_median(&one, "p50_us"), us),
                    fmt_opt(max, thousands),
                    fmt_opt(rate, thousands),
                    fmt_opt(field_median(&open, "p50_us"), us),
                    fmt_opt(field_median(&open, "p99_us"), us),
                    fmt_opt(field_median(&open, "p999_us"), us),
                    loadavg()
                ));
                measured = Some((max, open));
            }
            if wants("curve") && (cipher || p.tls_only) {
                let mut known_max = measured.as_ref().and_then(|m| m.0);
                if p.curve {
                    let (max, half) = match measured {
                        Some(m) => m,
                        None => {
                            let many = ctx.runs_of(p, port, cipher, &closed(256), "requests 256");
                            (field_median(&many, "req_per_s"), Vec::new())
                        }
                    };
                    known_max = max;
                    for &pct in a.curve_points.iter().filter(|_| max.is_some()) {
                        let rate = (max.unwrap_or(0.0) * pct / 100.0).max(1.0);
                        // The 50% point is the requests table's open loop when it ran.
                        let runs = if pct == 50.0 && !half.is_empty() {
                            half.clone()
                        } else {
                            let w = open_at(rate, ctx.duration * 2.0);
                            ctx.runs_of(p, port, cipher, &w, &format!("curve {pct}%"))
                        };
                        let point = CurvePoint {
                            pairing: p.name.clone(),
                            load_pct: pct,
                            p50_us: field_median(&runs, "p50_us"),
                            p99_us: field_median(&runs, "p99_us"),
                            p999_us: field_median(&runs, "p999_us"),
                        };
                        let us = |x: f64| format!("{x:.0}");
                        t.curve.push(format!(
                            "| {} | {c_label} | {} | {pct}% | {} | {} | {} | {} | {} |",
                            p.name,
                            fmt_opt(max, thousands),
                            thousands(rate),
                            fmt_opt(point.p50_us, us),
                            fmt_opt(point.p99_us, us),
                            fmt_opt(point.p999_us, us),
                            loadavg()
                        ));
                        t.points.push(point);
                    }
                }
                // At 5,000/s a run of --duration seconds has enough samples for p99.9.
                let w = open_at(a.fixed_rate, ctx.duration);
                let runs = ctx.runs_of(p, port, cipher, &w, "fixed rate");
                let us = |x: f64| format!("{x:.0}");
                t.fixed.push(format!(
                    "| {} | {c_label} | {} | {} | {} | {} | {} | {} | {} |",
                    p.name,
                    thousands(a.fixed_rate),
                    // Where the 256-in-flight rate was measured in this run.
                    known_max.map_or_else(
                        || "-".to_owned(),
                        |m| format!("{:.0}%", a.fixed_rate / m * 100.0)
                    ),
                    fmt_opt(field_median(&runs, "p50_us"), us),
                    fmt_opt(field_median(&runs, "p99_us"), us),
                    fmt_opt(field_median(&runs, "p999_us"), us),
                    fmt_opt(field_median(&runs, "errors"), thousands),
                    loadavg()
                ));
            }
            server.stop();
        }
        if wants("idle") {
            eprintln!("== {} idle connections (load {})", p.name, loadavg());
            let mut runs = Vec::new();
            for i in 0..ctx.runs {
                match idle_run(&mut ctx, p, a.connections) {
                    Ok(v) => {
                        eprintln!("  idle run {}: {v}", i + 1);
                        runs.push(v);
                    }
                    Err(e) => eprintln!("  idle run {} failed: {e}", i + 1),
                }
            }
            t.idle.push(format!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                p.name,
                fmt_opt(field_median(&runs, "connected"), thousands),
                fmt_opt(field_median(&runs, "rss_before_kib"), |x| format!(
                    "{:.1}",
                    x / 1024.0
                )),
                fmt_opt(field_median(&runs, "rss_after_kib"), |x| format!(
                    "{:.1}",
                    x / 1024.0
                )),
                fmt_opt(field_median(&runs, "kib_per_conn"), |x| format!("{x:.1}")),
                fmt_opt(field_median(&runs, "secs"), |x| format!("{x:.2}")),
                fmt_opt(field_median(&runs, "handshakes_per_s"), thousands),
            ));
        }
    }
    let report = render(&a, &ctx, &t, &pending, &load_start, started.elapsed());
    println!("{report}");
    if let (Some(path), false) = (&a.svg, t.points.is_empty()) {
        std::fs::write(path, curve_svg(&t.points))
            .map_err(|e| bench_error(format!("cannot write {}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &a.update {
        update_file(path, &report)?;
        eprintln!("updated {}", path.display());
    }
    if let Some(path) = &a.raw {
        let text = serde_json::to_string_pretty(&ctx.raw).unwrap_or_default();
        std::fs::write(path, text)
            .map_err(|e| bench_error(format!("cannot write {}: {e}", path.display())))?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn idle_run(ctx: &mut Ctx, p: &Pairing, connections: usize) -> Result<Value, Error> {
    let (server, port) = ctx.start_server(p, true)?;
    // Let the server settle (JIT, allocator) before the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let before = vm_rss_kib(server.pid()).unwrap_or(0);
    let mut args = vec!["--address".to_owned(), format!("127.0.0.1:{port}")];
    args.extend(ctx.tls_args(true));
    args.extend([
        "--workload".into(),
        "idle".into(),
        "--connections".into(),
        connections.to_string(),
    ]);
    let mut client = Proc::spawn(&p.client, &args, &ctx.root)?;
    let v = client.wait_for("result", Duration::from_secs(180))?;
    std::thread::sleep(Duration::from_millis(1000));
    let after = vm_rss_kib(server.pid()).unwrap_or(0);
    client.stop();
    server.stop();
    let mut r = v["result"].clone();
    let connected = r["connected"].as_f64().unwrap_or(0.0);
    let per = if connected > 0.0 {
        (after as f64 - before as f64) / connected
    } else {
        f64::NAN
    };
    merge(
        &mut r,
        json!({"rss_before_kib": before, "rss_after_kib": after, "kib_per_conn": per}),
    );
    ctx.raw
        .push(json!({"pairing": p.name, "workload": "idle", "result": r, "load": loadavg()}));
    Ok(r)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown", str::trim)
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} CPUs ({model}), {mem_gib:.1} GiB memory, Linux {}",
        kernel.trim()
    )
}

fn render(
    a: &AllArgs,
    ctx: &Ctx,
    t: &Tables,
    pending: &[String],
    load_start: &str,
    took: Duration,
) -> String {
    let mut s = String::new();
    let mut line = |x: String| {
        s.push_str(&x);
        s.push('\n');
    };
    line(format!(
        "Machine: {}. Load average (1/5/15 min) at start {load_start}, at end {}. \
         {} run(s) per cell, medians shown; {} s per run; whole run took {:.0} s.",
        machine(),
        loadavg(),
        ctx.runs,
        ctx.duration,
        took.as_secs_f64()
    ));
    line(String::new());
    if !t.events.is_empty() {
        line("### One-way events, one connection (msg/s and MB/s of message bodies)".into());
        line(String::new());
        let mut head = "| pairing (client-server) | cipher |".to_owned();
        let mut rule = "|---|---|".to_owned();
        for &size in &a.sizes {
            let l = size_label(size);
            head.push_str(&format!(" {l} msg/s | {l} MB/s |"));
            rule.push_str("---:|---:|");
        }
        line(format!("{head} load after |"));
        line(format!("{rule}---|"));
        for r in &t.events {
            line(r.clone());
        }
        line(String::new());
    }
    if !t.requests.is_empty() {
        line(
            "### Requests, one connection (closed loop: 1 and 256 in flight; open loop at 50% \
             of the 256-in-flight rate, latency from the intended send time, µs)"
                .into(),
        );
        line(String::new());
        line(
            "| pairing (client-server) | cipher | 1 in flight req/s | ping-pong p50 µs | \
             256 in flight req/s | open-loop rate/s | p50 µs | p99 µs | p99.9 µs | load after |"
                .into(),
        );
        line("|---|---|---:|---:|---:|---:|---:|---:|---:|---|".into());
        for r in &t.requests {
            line(r.clone());
        }
        line(String::new());
    }
    if !t.curve.is_empty() {
        line(section(
            "### Latency against load (open loop, one connection, cipher on: % of the \
             pairing's 256-in-flight rate, latency from the intended send time, µs)",
            "| pairing (client-server) | cipher | 256 in flight req/s | load | rate/s | p50 µs | \
             p99 µs | p99.9 µs | load after |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
            &t.curve,
        ));
    }
    if !t.fixed.is_empty() {
        line(section(
            &format!(
                "### Every pairing at {} requests/s (open loop, one connection, cipher on, µs)",
                thousands(a.fixed_rate)
            ),
            "| pairing (client-server) | cipher | rate/s | % of its 256-in-flight rate | p50 µs | \
             p99 µs | p99.9 µs | errors | load after |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
            &t.fixed,
        ));
    }
    if !t.idle.is_empty() {
        line(format!(
            "### {} idle authenticated connections on one server (cipher on)",
            thousands(a.connections as f64)
        ));
        line(String::new());
        line(
            "| pairing (client-server) | connected | server RSS before MiB | after MiB | \
             KiB per connection | time to connect all s | handshakes/s |"
                .into(),
        );
        line("|---|---:|---:|---:|---:|---:|---:|".into());
        for r in &t.idle {
            line(r.clone());
        }
        line(String::new());
    }
    if !pending.is_empty() {
        line("### Pending and skipped pairings".into());
        line(String::new());
        line("| pairing | status |".into());
        line("|---|---|".into());
        for r in pending {
            line(r.clone());
        }
        line(String::new());
    }
    s
}

/// A markdown section: heading, table head and rule, rows (ends with a line break, so the
/// caller's next line is the blank line after the table).
fn section(heading: &str, head: &str, rule: &str, rows: &[String]) -> String {
    let mut s = format!("{heading}\n\n{head}\n{rule}");
    for r in rows {
        s.push('\n');
        s.push_str(r);
    }
    s.push('\n');
    s
}

/// The latency curve as an SVG picture: load on x, latency on a log scale on y, a colour per
/// pairing and a dash pattern per percentile.
fn curve_svg(points: &[CurvePoint]) -> String {
    const COLOURS: [&str; 8] = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
    ];
    const PERCENTILES: [(&str, &str); 3] = [("p50", ""), ("p99", "7 4"), ("p99.9", "2 3")];
    let (left, top, width, height) = (80.0, 40.0, 520.0, 380.0);
    let value = |p: &CurvePoint, k: usize| [p.p50_us, p.p99_us, p.p999_us][k];
    let all: Vec<f64> = points
        .iter()
        .flat_map(|p| (0..3).filter_map(move |k| value(p, k)))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(1.0)
        .log10()
        .floor();
    let hi = all
        .iter()
        .copied()
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let x = |pct: f64| left + pct / 100.0 * width;
    let y = |us: f64| top + height - (us.max(1.0).log10() - lo) / (hi - lo) * height;
    let mut names: Vec<&str> = Vec::new();
    for p in points {
        if !names.contains(&p.pairing.as_str()) {
            names.push(&p.pairing);
        }
    }
    let mut s = String::new();
    let mut out = |t: String| {
        s.push_str(&t);
        s.push('\n');
    };
    out(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"820\" height=\"480\" \
         viewBox=\"0 0 820 480\" font-family=\"sans-serif\" font-size=\"12\">"
            .into(),
    );
    out("<rect width=\"820\" height=\"480\" fill=\"white\"/>".into());
    out(format!(
        "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">Open-loop latency \
         against load (one connection, cipher on)</text>",
        left + width / 2.0
    ));
    for d in (lo as i32)..=(hi as i32) {
        let us = 10f64.powi(d);
        let label = match us {
            u if u >= 1e6 => format!("{} s", u / 1e6),
            u if u >= 1e3 => format!("{} ms", u / 1e3),
            u => format!("{u} µs"),
        };
        out(format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            left + width,
            left - 6.0,
            y(us) + 4.0,
            y = y(us)
        ));
    }
    for pct in [0, 10, 25, 50, 75, 90, 100] {
        let px = x(f64::from(pct));
        out(format!(
            "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#eee\"/>\
             <text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{pct}%</text>",
            top + height,
            top + height + 16.0
        ));
    }
    out(format!(
        "<rect x=\"{left}\" y=\"{top}\" width=\"{width}\" height=\"{height}\" fill=\"none\" \
         stroke=\"#444\"/>"
    ));
    out(format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">load: % of the pairing's maximum \
         (256 requests in flight, closed loop)</text>",
        left + width / 2.0,
        top + height + 36.0
    ));
    out(format!(
        "<text transform=\"translate(18 {}) rotate(-90)\" text-anchor=\"middle\">latency \
         from the intended send time (log scale)</text>",
        top + height / 2.0
    ));
    for (i, name) in names.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        for (k, (_, dash)) in PERCENTILES.iter().enumerate() {
            let pts: Vec<String> = points
                .iter()
                .filter(|p| p.pairing == *name)
                .filter_map(|p| value(p, k).map(|v| format!("{:.1},{:.1}", x(p.load_pct), y(v))))
                .collect();
            if pts.is_empty() {
                continue;
            }
            out(format!(
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" \
                 stroke-width=\"1.8\" stroke-dasharray=\"{dash}\"/>",
                pts.join(" ")
            ));
            for pt in &pts {
                let (px, py) = pt.split_once(',').unwrap_or(("0", "0"));
                out(format!(
                    "<circle cx=\"{px}\" cy=\"{py}\" r=\"2.5\" fill=\"{colour}\"/>"
                ));
            }
        }
        let ly = top + 10.0 + i as f64 * 20.0;
        out(format!(
            "<line x1=\"620\" x2=\"650\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" \
             stroke-width=\"3\"/><text x=\"656\" y=\"{}\">{}</text>",
            ly + 4.0,
            xml_escape(name)
        ));
    }
    for (k, (label, dash)) in PERCENTILES.iter().enumerate() {
        let ly = top + 30.0 + (names.len() + k) as f64 * 20.0;
        out(format!(
            "<line x1=\"620\" x2=\"650\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"#444\" \
             stroke-width=\"1.8\" stroke-dasharray=\"{dash}\"/><text x=\"656\" \
             y=\"{}\">{label}</text>",
            ly + 4.0
        ));
    }
    out("</svg>".into());
    s
}

fn xml_escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn update_file(path: &Path, report: &str) -> Result<(), Error> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{report}{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{block}{}", &old[..b], &old[e + END.len()..])
        }
        _ => format!("{old}\n{block}\n"),
    };
    std::fs::write(path, new)
        .map_err(|e| bench_error(format!("cannot write {}: {e}", path.display())))
}
