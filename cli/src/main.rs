//! `iris-rpc`: run a demo, a server, a client, or make certificates.

mod bench;
mod demo;
mod observe;
mod router;
#[cfg(feature = "otel")]
mod traces;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use iris_rpc::{Certificates, Client, Error, Event, Options, Peer, Security, Server};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(
    name = "iris-rpc",
    version,
    about = "iris-rpc: JSON RPC over TLS, compatible with iris-rpc 0.2.20"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr as text or as one JSON object per line. Filter with IRIS_RPC_LOG or
    /// RUST_LOG (`warn` by default; e.g. `iris_rpc=debug`).
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: observe::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Start a server and a client on loopback and show them talking (no setup needed).
    Demo,
    /// Write a self-signed key.pem and cert.pem.
    Cert {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Host names or IP addresses the certificate is for.
        #[arg(long = "name", default_values = ["localhost", "127.0.0.1", "::1"])]
        names: Vec<String>,
    },
    /// Serve until interrupted, printing connects, disconnects and messages as JSON lines.
    Server(ServerArgs),
    /// Send JSON objects read from stdin, one per line, printing what comes back as JSON lines.
    Client(ClientArgs),
    /// Relay a frontend port to a backend server (--to) or a second port (--backend-port).
    Router(router::RouterArgs),
    /// Benchmarks: every pairing of implementations side by side (`bench all`).
    Bench(bench::BenchArgs),
    /// Print a new 256-bit shared secret (64 hex characters) from the system's generator.
    Secret,
}

#[derive(Args)]
struct Common {
    /// The shared secret.
    #[arg(long, env = "IRIS_RPC_AUTH")]
    auth: String,
    /// Turn the legacy line cipher off (a server then accepts clients either way).
    #[arg(long)]
    no_cipher: bool,
    /// Session modes: legacy (exactly as iris-rpc 0.2.20), prefer-v2 (v2 with new peers,
    /// legacy with old ones), require-v2 (refuse legacy peers). See docs/PROTOCOL-V2.md.
    #[arg(long, default_value = "prefer-v2", value_parser = parse_security)]
    security: Security,
    /// This instance's uuid (random when absent).
    #[arg(long)]
    uuid: Option<String>,
    /// Designation announced to peers.
    #[arg(long, default_value = "")]
    designation: String,
    /// Refuse to start with a weak --auth secret (below 128 bits by a conservative estimate)
    /// instead of warning. `iris-rpc secret` makes a strong one.
    #[arg(long)]
    refuse_weak_secret: bool,
    /// Private key PEM file, with --cert. A server without --key and --cert makes a fresh
    /// self-signed pair (clients accept it unless they verify certificates).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Certificate PEM file, with --key (see --key).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[command(flatten)]
    limits: HandshakeLimits,
    #[command(flatten)]
    metrics: observe::MetricsArgs,
}

/// The limits on connections that have not authenticated yet (shared with the router).
#[derive(Args, Clone, Copy)]
pub(crate) struct HandshakeLimits {
    /// Longest line before the peer proves the secret, in bytes.
    #[arg(long, default_value_t = iris_rpc::Limits::default().max_handshake_line)]
    max_handshake_line: usize,
    /// Bytes all unauthenticated connections of a server may hold together.
    #[arg(long, default_value_t = iris_rpc::Limits::default().max_unauthenticated_bytes)]
    max_unauthenticated_bytes: usize,
}

impl HandshakeLimits {
    /// `o` with these limits.
    pub(crate) fn apply(self, mut o: Options) -> Options {
        o.limits.max_handshake_line = self.max_handshake_line;
        o.limits.max_unauthenticated_bytes = self.max_unauthenticated_bytes;
        o
    }
}

impl Common {
    fn options(&self) -> Result<Options, Error> {
        let mut o = Options::new(self.auth.clone())
            .cipher(!self.no_cipher)
            .security(self.security)
            .refuse_weak_secret(self.refuse_weak_secret)
            .designation(self.designation.clone());
        o = self.limits.apply(o);
        if let Some(u) = &self.uuid {
            o = o.uuid(u.clone());
        }
        if let (Some(k), Some(c)) = (&self.key, &self.cert) {
            o = o.certificates(Certificates::new(
                k.display().to_string(),
                c.display().to_string(),
            ));
        }
        Ok(o)
    }
}

/// `--echo`: the op answered with an error, the op not answered, and how many of those the
/// server holds.
const ECHO_ERROR: &str = "echo::error";
const ECHO_IGNORE: &str = "echo::ignore";
const ECHO_IGNORED_MAX: usize = 1024;

#[derive(Args)]
struct ServerArgs {
    /// Port, or host:port, to listen on.
    #[arg(long)]
    port: String,
    #[command(flatten)]
    common: Common,
    /// Answer each request with {"echo": <request>} and send each event back to its sender.
    /// A request with op "echo::error" is answered with that as its error instead, and one
    /// with op "echo::ignore" is not answered (its sender sees a timeout; the 1024 latest are
    /// held): a peer to try error and timeout handling, and metrics, against.
    #[arg(long)]
    echo: bool,
    /// Require client certificates signed by this CA (PEM file); repeat for several.
    #[arg(long = "client-ca")]
    client_ca: Vec<PathBuf>,
    /// Bind each client's uuid to its certificate (needs --client-ca): the uuid a client
    /// claims must be a DNS name of its certificate, or urn:uuid:<uuid> among its URIs.
    #[arg(long, requires = "client_ca")]
    client_cert_uuid: bool,
}

#[derive(Args)]
struct ClientArgs {
    /// Server address, host:port.
    #[arg(long)]
    address: String,
    #[command(flatten)]
    common: Common,
    /// Send each line as a request instead of an event.
    #[arg(long)]
    request: bool,
    /// Request timeout in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    timeout: u64,
    /// How long to wait for the connection, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    connect_timeout: u64,
    /// After stdin ends and requests settle, how long to keep printing incoming events (ms).
    #[arg(long, default_value_t = 200)]
    linger: u64,
    /// Refuse a server whose certificate key does not match this pin (sha256/<base64>, as
    /// `iris-rpc cert` prints); repeat for several. Nothing is sent to a server that fails it.
    #[arg(long = "server-pin")]
    server_pins: Vec<String>,
    /// Trust on first use: record the server's key pin for this address in FILE on the first
    /// connection, and refuse another key at this address afterwards.
    #[arg(long)]
    pin_store: Option<PathBuf>,
    /// Refuse a server that authenticates as another uuid; repeat to allow several.
    #[arg(long = "expect-server-uuid")]
    expect_server_uuid: Vec<String>,
}

/// Why a command failed: an iris-rpc error, or input to the command that it could not use.
enum Failure {
    Iris(Error),
    Input(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Iris(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Iris(e) => e.fmt(f),
            Failure::Input(what) => f.write_str(what),
        }
    }
}

pub(crate) fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn peer_json(event: &str, peer: &Peer) -> Value {
    json!({
        "event": event,
        "uuid": peer.uuid(),
        "address": peer.address(),
        "designation": peer.designation(),
        "mode": peer.mode().as_str(),
    })
}

/// Parses `--security` (shared with the router and bench commands).
pub(crate) fn parse_security(s: &str) -> Result<Security, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other error of this command.
            let text = e.to_string();
            let what: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let what = what.join(" ");
            let what = what.trim_start_matches("error: ");
            eprintln!("iris-rpc: error: {what} (see --help)");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = observe::init_logs(cli.log_format) {
        eprintln!("iris-rpc: error: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iris-rpc: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), Failure> = rt.block_on(async {
        match cli.command {
            Command::Demo => demo::run().await.map_err(Failure::from),
            Command::Cert { out, names } => cert(&out, &names).map_err(Failure::from),
            Command::Server(a) => server(a).await.map_err(Failure::from),
            Command::Client(a) => client(a).await,
            Command::Router(a) => router::run(a).await.map_err(Failure::from),
            Command::Bench(a) => bench::run(a).await.map_err(Failure::from),
            Command::Secret => {
                println!("{}", iris_rpc::secret::generate());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iris-rpc: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cert(out: &std::path::Path, names: &[String]) -> Result<(), Error> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (key, cert) = iris_rpc::tls::self_signed_pem(&names)?;
    std::fs::create_dir_all(out)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", out.display())))?;
    let pin = iris_rpc::tls::spki_pin(&iris_rpc::Pem::new(cert.clone()))?;
    // The key is readable by its owner only (0600), also when it replaces an existing file.
    for (file, text, private) in [("key.pem", key, true), ("cert.pem", cert, false)] {
        let path = out.join(file);
        write_file(&path, text.as_bytes(), private)
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    println!("pin {pin} (clients: --server-pin {pin})");
    Ok(())
}

fn write_file(path: &std::path::Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        // `mode` applies to a new file only; an existing one would keep its bits. Narrowed
        // before the key is written.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    file.write_all(bytes)
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn server(a: ServerArgs) -> Result<(), Error> {
    let mut opts = a.common.options()?.port(a.port.as_str());
    if opts.certificates.is_none() {
        opts = opts.certificates(Certificates::self_signed()?);
    }
    if !a.client_ca.is_empty() {
        if let Some(c) = opts.certificates.as_mut() {
            c.ca.extend(
                a.client_ca
                    .iter()
                    .map(|p| iris_rpc::Pem::new(p.display().to_string())),
            );
        }
        opts = opts
            .reject_unauthorized(true)
            .client_cert_uuid(a.client_cert_uuid);
    }
    let server = Server::bind(opts).await?;
    let mut events = server.events();
    print_json(
        &json!({"event": "listen", "address": server.local_addr().to_string(), "uuid": server.uuid()}),
    );
    a.common.metrics.start().await?;
    let server = Arc::new(server);
    let mut ignored = std::collections::VecDeque::new();
    loop {
        let ev = tokio::select! {
            _ = shutdown_signal() => break,
            ev = events.next() => ev,
        };
        let Some(ev) = ev else { break };
        match ev {
            Event::Connect { peer } => print_json(&peer_json("connect", &peer)),
            Event::Disconnect { peer, reason } => {
                let mut v = peer_json("disconnect", &peer);
                v["reason"] = json!(reason);
                print_json(&v);
            }
            Event::Message { msg, uuid, peer } => {
                print_json(&json!({"event": "message", "uuid": uuid, "msg": msg.value()}));
                if a.echo {
                    if let Err(e) = server.dispatch_to(peer.uuid(), msg) {
                        print_json(&json!({"event": "error", "error": e.to_string()}));
                    }
                }
            }
            Event::Request(req) => {
                print_json(&json!({"event": "request", "uuid": req.uuid, "msg": req.msg.value()}));
                if a.echo {
                    let body = req.msg.value();
                    match body["op"].as_str() {
                        Some(ECHO_ERROR) => req.respond(Err(json!({ "echo": body }))),
                        Some(ECHO_IGNORE) => {
                            if ignored.len() == ECHO_IGNORED_MAX {
                                // The oldest is dropped: its peer gets "No such handler".
                                ignored.pop_front();
                            }
                            ignored.push_back(req);
                        }
                        _ => req.respond(Ok(json!({ "echo": body }))),
                    }
                }
                // Without --echo the request is dropped: the peer gets "No such handler".
            }
            Event::Error { error, address } => print_json(
                &json!({"event": "error", "error": error.to_string(), "address": address}),
            ),
            _ => {}
        }
    }
    server.close().await;
    Ok(())
}

async fn client(a: ClientArgs) -> Result<(), Failure> {
    let opts = a
        .common
        .options()?
        .address(a.address.clone())
        .timeout(Duration::from_millis(a.timeout));
    let opts = a
        .server_pins
        .iter()
        .fold(opts, |o, pin| o.server_pin(pin.clone()));
    let mut opts = a
        .expect_server_uuid
        .iter()
        .fold(opts, |o, u| o.expect_server_uuid(u.clone()));
    if let Some(p) = &a.pin_store {
        opts = opts.pin_store(p.clone());
    }
    a.common.metrics.start().await?;
    let client = Arc::new(Client::connect(opts)?);
    let mut events = client.events();
    // Connect first: the first failure (refused, TLS, wrong secret) ends the command.
    let deadline = tokio::time::sleep(Duration::from_millis(a.connect_timeout));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => {
                client.close().await;
                return Err(Failure::Input(format!("could not connect to {} in time", a.address)));
            }
            ev = events.next() => match ev {
                Some(Event::Connect { peer }) => {
                    print_json(&peer_json("connect", &peer));
                    break;
                }
                Some(Event::Error { error, .. }) => {
                    client.close().await;
                    return Err(Error::Auth(format!("cannot connect to {}: {error}", a.address)).into());
                }
                Some(_) => {}
                None => return Err(Error::Closed.into()),
            }
        }
    }
    // Print whatever arrives while stdin is being sent.
    let printer = tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            match ev {
                Event::Message { msg, uuid, .. } => {
                    print_json(&json!({"event": "message", "uuid": uuid, "msg": msg.value()}))
                }
                Event::Disconnect { peer, reason } => {
                    let mut v = peer_json("disconnect", &peer);
                    v["reason"] = json!(reason);
                    print_json(&v);
                }
                Event::Request(req) => print_json(
                    &json!({"event": "request", "uuid": req.uuid, "msg": req.msg.value()}),
                ),
                Event::Error { error, .. } => {
                    print_json(&json!({"event": "error", "error": error.to_string()}))
                }
                _ => {}
            }
        }
    });
    let mut bad_lines = 0u64;
    let mut requests = tokio::task::JoinSet::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut n = 0u64;
    while let Some(line) = lines.next_line().await.map_err(Error::from)? {
        n += 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let msg: Value = match serde_json::from_str(line) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                eprintln!("iris-rpc: stdin line {n}: not a JSON object, skipped");
                bad_lines += 1;
                continue;
            }
            Err(e) => {
                eprintln!("iris-rpc: stdin line {n}: invalid JSON ({e}), skipped");
                bad_lines += 1;
                continue;
            }
        };
        if a.request {
            let c = client.clone();
            requests.spawn(async move {
                match c.request(&msg).await {
                    Ok(resp) => print_json(&json!({"response": resp, "req": msg})),
                    Err(e) => print_json(&json!({"error": e.to_legacy_value(), "kind": e.kind().as_str(), "req": msg})),
                }
            });
        } else if let Err(e) = client.dispatch(&msg) {
            print_json(
                &json!({"error": e.to_legacy_value(), "kind": e.kind().as_str(), "req": msg}),
            );
        }
    }
    while requests.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_millis(a.linger)).await;
    client.close().await;
    let _ = printer.await;
    if bad_lines > 0 {
        return Err(Failure::Input(format!(
            "{bad_lines} stdin line{} not a JSON object (skipped; see above)",
            if bad_lines == 1 { " was" } else { "s were" }
        )));
    }
    Ok(())
}
