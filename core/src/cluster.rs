//! A cluster of routers over NATS: one [`crate::Router`], spread over many processes.
//!
//! Addressing rides on NATS subjects, never on a table of our own (`PREFIX` is
//! [`ClusterOptions::name`], `S` a side, `f` or `b`, `HEX` the uuid's bytes in hex so that no
//! uuid can forge a subject):
//!
//! - `PREFIX.S.u.HEX`: the peer `uuid` on side `S`, subscribed (queue group `h`, so one
//!   delivery however many subscribe) by the router that holds it, while it holds it. Events
//!   are published there, requests go there as NATS requests: no subscriber is NATS's
//!   no-responders, an immediate "nobody holds that uuid" error.
//! - `PREFIX.S.all`: messages without address for side `S`'s peers; every router delivers to
//!   its own peers of that side.
//! - `PREFIX.presence`: `rpc::online`/`rpc::offline` of a uuid on one side; every router
//!   announces it to its peers of the other side, as one router does between its two sides.
//! - `PREFIX.roster.S`: asked when a peer connects; every router answers with the uuids it
//!   holds on side `S`, which the new peer is told are online.
//!
//! One holder per uuid: the newest. A router that connects a peer claims its uuid with
//! `rpc::online` on `PREFIX.presence`; a router that held the same uuid on the same side stops
//! serving it to the cluster (its local peer stays connected and reachable from its own
//! router, as in one router). This is legacy's own rule in one process (its `streams[uuid]`
//! is the newest stream), and it is what a peer that fails over from a dead router needs.
//! When the newest holder lets go, a router that still holds the uuid takes it back.
//! A message without address from a uuid whose claim this router lost is left to the winner,
//! so a server that several routers connect to (`--to`) is relayed once, not once per router.
//!
//! NATS down: at start, [`crate::Router::start_clustered`] fails with a clear error (a router
//! that silently ran alone would split the cluster with nobody told). Later, async-nats
//! reconnects without end while every router keeps delivering between its own peers; what it
//! sends to other routers meanwhile is buffered up to async-nats's capacity, and requests to
//! peers on other routers fail with an error.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::{HeaderMap, Message as NatsMessage};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::protocol::hex;
use crate::router::Side;

/// How a router reaches NATS.
#[derive(Clone, Default)]
pub struct ClusterOptions {
    /// NATS servers, `nats://HOST:PORT` (or `tls://`); any of them will do, NATS tells the
    /// client about the others.
    pub servers: Vec<String>,
    /// Subject prefix: routers with the same name form one cluster (default `iris`).
    pub name: String,
    /// Token authentication.
    pub token: Option<String>,
    /// User and password authentication.
    pub user_password: Option<(String, String)>,
    /// NKey authentication: the seed (`SU...`).
    pub nkey_seed: Option<String>,
    /// A `.creds` file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// Require TLS to NATS (`tls://` addresses imply it).
    pub require_tls: bool,
    /// A PEM file of CA certificates to trust for NATS.
    pub root_certificates: Option<PathBuf>,
    /// Client certificate and key PEM files, for NATS servers that verify clients.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
    /// How long a router waits for the other routers' rosters when a peer connects
    /// (default 2 s: answers are used as they come, so a longer wait delays none; it only lets
    /// a router under load answer late). Past it, later answers are dropped.
    pub roster_wait: Duration,
    /// Messages to other routers that may wait to be handed to NATS (default 65536); past it,
    /// new ones are dropped with a warning (NATS down for long, or far slower than the peers).
    pub queue: usize,
}

impl std::fmt::Debug for ClusterOptions {
    // No secret in logs: credentials show as present or absent only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("servers", &self.servers)
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "user",
                &self.user_password.as_ref().map(|(u, _)| u.as_str()),
            )
            .field("nkey_seed", &self.nkey_seed.as_ref().map(|_| "<redacted>"))
            .field("credentials_file", &self.credentials_file)
            .field("require_tls", &self.require_tls)
            .field("root_certificates", &self.root_certificates)
            .finish_non_exhaustive()
    }
}

impl ClusterOptions {
    /// Options for `servers`, a comma-separated list (`nats://a:4222,nats://b:4222`).
    pub fn new(servers: &str) -> ClusterOptions {
        ClusterOptions {
            servers: servers
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            name: "iris".into(),
            roster_wait: Duration::from_secs(2),
            queue: 65536,
            ..ClusterOptions::default()
        }
    }

    /// Options from a JSON object, as the Node, Python and C adapters pass them: `servers`
    /// (a string, comma-separated, or an array), `name`, `token`, `user` and `password`,
    /// `nkeySeed`, `credentialsFile`, `requireTls`, `rootCertificates`, `clientCertificate`
    /// and `clientKey`, `rosterWaitMs`, `queue` (snake_case spellings too). A bare string is
    /// the servers. An unknown member is an error, so a misspelt credential is not ignored.
    pub fn from_json(text: &str) -> Result<ClusterOptions> {
        let bad = |m: String| Error::Config(format!("cluster options: {m}"));
        let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let obj = match v {
            Value::String(s) => return Ok(ClusterOptions::new(&s)),
            Value::Object(o) => o,
            _ => return Err(bad("expected an object or a string of servers".into())),
        };
        let mut o = ClusterOptions::new("");
        let text_of = |k: &str, v: &Value| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("'{k}' must be a string")))
        };
        let (mut user, mut password, mut cert, mut key) = (None, None, None, None);
        for (k, v) in &obj {
            match k.as_str() {
                "servers" => {
                    o.servers = match v {
                        Value::String(s) => ClusterOptions::new(s).servers,
                        Value::Array(a) => a
                            .iter()
                            .map(|x| text_of(k, x))
                            .collect::<Result<Vec<_>>>()?,
                        _ => return Err(bad("'servers' must be a string or an array".into())),
                    }
                }
                "name" => o.name = text_of(k, v)?,
                "token" => o.token = Some(text_of(k, v)?),
                "user" => user = Some(text_of(k, v)?),
                "password" => password = Some(text_of(k, v)?),
                "nkeySeed" | "nkey_seed" => o.nkey_seed = Some(text_of(k, v)?),
                "credentialsFile" | "credentials_file" => {
                    o.credentials_file = Some(text_of(k, v)?.into())
                }
                "requireTls" | "require_tls" => {
                    o.require_tls = v
                        .as_bool()
                        .ok_or_else(|| bad(format!("'{k}' must be a boolean")))?
                }
                "rootCertificates" | "root_certificates" => {
                    o.root_certificates = Some(text_of(k, v)?.into())
                }
                "clientCertificate" | "client_certificate" => cert = Some(text_of(k, v)?),
                "clientKey" | "client_key" => key = Some(text_of(k, v)?),
                "rosterWaitMs" | "roster_wait_ms" => {
                    o.roster_wait = Duration::from_millis(
                        v.as_u64()
                            .ok_or_else(|| bad(format!("'{k}' must be a number of ms")))?,
                    )
                }
                "queue" => {
                    o.queue = v
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| bad("'queue' must be a count".into()))?
                }
                other => return Err(bad(format!("unknown member '{other}'"))),
            }
        }
        match (user, password) {
            (Some(u), Some(p)) => o.user_password = Some((u, p)),
            (None, None) => {}
            _ => return Err(bad("'user' and 'password' go together".into())),
        }
        match (cert, key) {
            (Some(c), Some(k)) => o.client_certificate = Some((c.into(), k.into())),
            (None, None) => {}
            _ => return Err(bad("'clientCertificate' and 'clientKey' go together".into())),
        }
        o.check()?;
        Ok(o)
    }

    fn check(&self) -> Result<()> {
        if self.servers.is_empty() {
            return Err(Error::Config(
                "cluster: give at least one NATS server (nats://HOST:PORT)".into(),
            ));
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if self.name.is_empty() || !self.name.chars().all(ok) {
            return Err(Error::Config(format!(
                "cluster: the name must be letters, digits, '_' or '-', got {:?}",
                self.name
            )));
        }
        let auths = [
            self.token.is_some(),
            self.user_password.is_some(),
            self.nkey_seed.is_some(),
            self.credentials_file.is_some(),
        ];
        if auths.iter().filter(|a| **a).count() > 1 {
            return Err(Error::Config(
                "cluster: give one of token, user and password, NKey or credentials file".into(),
            ));
        }
        Ok(())
    }

    async fn connect_options(&self) -> Result<async_nats::ConnectOptions> {
        let mut o = async_nats::ConnectOptions::new();
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let Some((u, p)) = &self.user_password {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(s) = &self.nkey_seed {
            o = o.nkey(s.clone());
        }
        if let Some(path) = &self.credentials_file {
            o = o.credentials_file(path).await.map_err(|e| {
                Error::Config(format!("cluster: credentials file {}: {e}", path.display()))
            })?;
        }
        if let Some(ca) = &self.root_certificates {
            o = o.add_root_certificates(ca.clone());
        }
        if let Some((c, k)) = &self.client_certificate {
            o = o.add_client_certificate(c.clone(), k.clone());
        }
        Ok(o.require_tls(self.require_tls)
            // Our own publications never come back: a router delivers locally itself.
            .no_echo()
            .name("iris-rpc router")
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5)))
    }
}

fn side_token(side: Side) -> &'static str {
    match side {
        Side::Frontend => "f",
        Side::Backend => "b",
    }
}

fn side_of(token: &str) -> Option<Side> {
    match token {
        "f" => Some(Side::Frontend),
        "b" => Some(Side::Backend),
        _ => None,
    }
}

/// The header naming what a message on a peer subject is.
const KIND: &str = "Iris-Kind";
/// The header naming the router that published (for logs and claims).
const ORIGIN: &str = "Iris-Origin";
/// Bytes left for the headers of a message (`KIND`, `ORIGIN` and the framing need about 80)
/// when checking its size against NATS's max_payload.
const HEADER_ROOM: usize = 256;

/// What the outbox task does, one at a time, so that NATS sees it in call order: one peer's
/// events stay in order, and a claim never overtakes the subscription it announces nor the
/// release that follows it.
enum Cmd {
    Publish(String, HeaderMap, String),
    Hold(Side, String),
    Release(Side, String),
}

/// The subscription of a held uuid's subject.
struct Holding {
    task: tokio::task::JoinHandle<()>,
    /// Ends it by draining: what NATS already routed here is still answered, so a request
    /// that raced the release settles (with the answer or "no such stream") instead of
    /// waiting for its timeout.
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Holding {
    fn stop(self) {
        let _ = self.stop.send(());
    }
}

/// A router's part of the cluster.
pub(crate) struct Cluster {
    nats: async_nats::Client,
    prefix: String,
    /// This router's id in the cluster.
    id: String,
    engines: [Weak<Engine>; 2],
    /// Uuids this router serves to the cluster, with the task that holds the subscription.
    held: Mutex<HashMap<(Side, String), Holding>>,
    /// Uuids held here whose claim another router took (newest wins).
    lost: Mutex<HashSet<(Side, String)>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The backend connects to servers, which several routers may reach (see [`Cluster::skips`]).
    backend_is_client: bool,
    report: Arc<crate::router::Reporter>,
    /// Everything this router tells NATS, in order (see [`Cmd`]).
    outbox: tokio::sync::mpsc::Sender<Cmd>,
    /// Commands dropped because the outbox was full.
    dropped: std::sync::atomic::AtomicU64,
    roster_wait: Duration,
    /// The time a request may take on the far side plus a margin; the backstop when the far
    /// router dies with the request.
    request_timeout: Duration,
}

fn idx(side: Side) -> usize {
    match side {
        Side::Frontend => 0,
        Side::Backend => 1,
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::Frontend => Side::Backend,
        Side::Backend => Side::Frontend,
    }
}

impl Cluster {
    /// Connects to NATS and subscribes the router-wide subjects.
    pub(crate) async fn join(
        opts: &ClusterOptions,
        frontend: &Arc<Engine>,
        backend: &Arc<Engine>,
        backend_is_client: bool,
        report: Arc<crate::router::Reporter>,
    ) -> Result<Arc<Cluster>> {
        opts.check()?;
        let co = opts.connect_options().await?;
        let nats = co.connect(opts.servers.clone()).await.map_err(|e| {
            // async-nats's error names the failure, never the credentials.
            Error::Io(Arc::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!(
                    "cluster: NATS unreachable at {}: {e}",
                    opts.servers.join(",")
                ),
            )))
        })?;
        let timeout = frontend.opts.timeout.max(backend.opts.timeout) + Duration::from_secs(2);
        let (outbox, rx) = tokio::sync::mpsc::channel(opts.queue.max(1));
        let c = Arc::new(Cluster {
            backend_is_client,
            report,
            outbox,
            dropped: std::sync::atomic::AtomicU64::new(0),
            nats,
            prefix: opts.name.clone(),
            id: uuid::Uuid::new_v4().to_string(),
            engines: [Arc::downgrade(frontend), Arc::downgrade(backend)],
            held: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashSet::new()),
            tasks: Mutex::new(Vec::new()),
            roster_wait: if opts.roster_wait.is_zero() {
                Duration::from_secs(2)
            } else {
                opts.roster_wait
            },
            request_timeout: timeout,
        });
        let subjects = [
            (format!("{}.f.all", c.prefix), Side::Frontend),
            (format!("{}.b.all", c.prefix), Side::Backend),
        ];
        for (subject, side) in subjects {
            let sub = c.subscribe(subject).await?;
            let weak = Arc::downgrade(&c);
            c.spawn(Self::each(sub, weak, move |c, m| c.on_broadcast(side, m)));
        }
        c.spawn(Self::run_outbox(rx, Arc::downgrade(&c)));
        let sub = c.subscribe(format!("{}.presence", c.prefix)).await?;
        c.spawn(Self::each(sub, Arc::downgrade(&c), |c, m| c.on_presence(m)));
        for side in [Side::Frontend, Side::Backend] {
            let sub = c
                .subscribe(format!("{}.roster.{}", c.prefix, side_token(side)))
                .await?;
            c.spawn(Self::each(sub, Arc::downgrade(&c), move |c, m| {
                c.on_roster(side, m)
            }));
        }
        // Subscriptions are registered before anyone is told this router exists.
        c.nats
            .flush()
            .await
            .map_err(|e| Error::Protocol(format!("cluster: NATS flush: {e}")))?;
        tracing::info!(servers = ?opts.servers, name = %opts.name, id = %c.id, "cluster: joined");
        Ok(c)
    }

    async fn subscribe(&self, subject: String) -> Result<async_nats::Subscriber> {
        self.nats
            .subscribe(subject)
            .await
            .map_err(|e| Error::Protocol(format!("cluster: NATS subscribe: {e}")))
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let t = tokio::spawn(f);
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(t);
        }
    }

    async fn each(
        mut sub: async_nats::Subscriber,
        c: Weak<Cluster>,
        f: impl Fn(&Arc<Cluster>, NatsMessage),
    ) {
        while let Some(m) = sub.next().await {
            let Some(c) = c.upgrade() else { return };
            f(&c, m);
        }
    }

    /// Serves a held uuid's subject until told to stop, then drains it.
    async fn serve(
        mut sub: async_nats::Subscriber,
        mut stopped: tokio::sync::oneshot::Receiver<()>,
        c: Weak<Cluster>,
        side: Side,
        uuid: String,
    ) {
        let mut draining = false;
        loop {
            let m = tokio::select! {
                _ = &mut stopped, if !draining => {
                    draining = true;
                    if sub.drain().await.is_err() {
                        return;
                    }
                    continue;
                }
                m = sub.next() => m,
            };
            let (Some(m), Some(c)) = (m, c.upgrade()) else {
                return;
            };
            c.on_addressed(side, &uuid, m);
        }
    }

    fn engine(&self, side: Side) -> Option<Arc<Engine>> {
        self.engines[idx(side)].upgrade()
    }

    fn peer_subject(&self, side: Side, uuid: &str) -> String {
        format!(
            "{}.{}.u.{}",
            self.prefix,
            side_token(side),
            hex::encode(uuid.as_bytes())
        )
    }

    fn headers(&self, kind: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(KIND, kind);
        h.insert(ORIGIN, self.id.as_str());
        h
    }

    /// Whether this router leaves `uuid` on `side` to another: a server (the backend side of
    /// routers that connect to servers) whose claim another router holds. Clients with one
    /// uuid on two routers are two peers, as legacy keeps two streams with one uuid.
    pub(crate) fn skips(&self, side: Side, uuid: &str) -> bool {
        side == Side::Backend && self.backend_is_client && self.lost(side, uuid)
    }

    /// Whether the claim of `uuid` on `side` went to another router.
    pub(crate) fn lost(&self, side: Side, uuid: &str) -> bool {
        self.lost
            .lock()
            .map(|l| l.contains(&(side, uuid.to_owned())))
            .unwrap_or(false)
    }

    fn queue(&self, cmd: Cmd) {
        if self.outbox.try_send(cmd).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "cluster: queue to NATS full (ClusterOptions::queue), messages dropped"
                );
            }
        }
    }

    async fn run_outbox(mut rx: tokio::sync::mpsc::Receiver<Cmd>, c: Weak<Cluster>) {
        while let Some(cmd) = rx.recv().await {
            let Some(c) = c.upgrade() else { return };
            match cmd {
                Cmd::Publish(subject, headers, body) => {
                    if let Err(e) = c
                        .nats
                        .publish_with_headers(subject, headers, body.into())
                        .await
                    {
                        if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded {
                            // Never silent: this peer's message reached nobody on other routers.
                            tracing::warn!(error = %e, "cluster: a message larger than NATS's max_payload was dropped (raise max_payload in nats-server)");
                        } else {
                            tracing::debug!(error = %e, "cluster: publish failed");
                        }
                    }
                }
                Cmd::Hold(side, uuid) => c.do_hold(side, uuid).await,
                Cmd::Release(side, uuid) => c.do_release(side, uuid),
            }
        }
    }

    /// `uuid` (a peer or a route) is now held on `side` here: serve it to the cluster and
    /// claim it.
    pub(crate) fn hold(&self, side: Side, uuid: &str) {
        self.queue(Cmd::Hold(side, uuid.to_owned()));
    }

    async fn do_hold(self: &Arc<Self>, side: Side, uuid: String) {
        let key = (side, uuid.clone());
        if let Ok(mut l) = self.lost.lock() {
            l.remove(&key);
        }
        let sub = match self
            .nats
            .queue_subscribe(self.peer_subject(side, &uuid), "h".into())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: could not subscribe a peer's subject");
                return;
            }
        };
        let weak = Arc::downgrade(self);
        let u = uuid.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(Self::serve(sub, stopped, weak, side, u));
        if let Ok(mut h) = self.held.lock() {
            if let Some(old) = h.insert(key, Holding { task, stop }) {
                old.stop();
            }
        }
        // The subscription went out before the claim, on one connection: whoever hears the
        // claim can already reach the uuid.
        let (subject, headers, body) = self.presence("rpc::online", side, &uuid);
        let _ = self
            .nats
            .publish_with_headers(subject, headers, body.into())
            .await;
    }

    /// `uuid` is no longer held on `side` here (`still_local`: another local stream has it).
    pub(crate) fn release(&self, side: Side, uuid: &str, still_local: bool) {
        if !still_local {
            self.queue(Cmd::Release(side, uuid.to_owned()));
        }
    }

    fn do_release(&self, side: Side, uuid: String) {
        let key = (side, uuid);
        let was_lost = self
            .lost
            .lock()
            .map(|mut l| l.remove(&key))
            .unwrap_or(false);
        let held = self.held.lock().ok().and_then(|mut h| h.remove(&key));
        if let Some(h) = held {
            h.stop();
        }
        if !was_lost {
            // Not lost: nobody newer holds it, so it is offline (receivers check again).
            let (subject, headers, body) = self.presence("rpc::offline", side, &key.1);
            self.queue(Cmd::Publish(subject, headers, body));
        }
    }

    fn presence(&self, op: &str, side: Side, uuid: &str) -> (String, HeaderMap, String) {
        let body = json!({"op": op, "side": side_token(side), "uuid": uuid}).to_string();
        (
            format!("{}.presence", self.prefix),
            self.headers("presence"),
            body,
        )
    }

    /// Publishes an event for `uuid` on `side` (held by another router).
    pub(crate) fn send_to(&self, side: Side, uuid: &str, m: &Message) {
        self.queue(Cmd::Publish(
            self.peer_subject(side, uuid),
            self.headers("event"),
            m.as_str().to_owned(),
        ));
    }

    /// Publishes a message without address for `side`'s peers on other routers.
    pub(crate) fn broadcast(&self, side: Side, m: &Message) {
        self.queue(Cmd::Publish(
            format!("{}.{}.all", self.prefix, side_token(side)),
            self.headers("event"),
            m.as_str().to_owned(),
        ));
    }

    /// A request to `uuid` on `side` held by another router: `Ok((err, resp))` as the peer
    /// answered, or the error that settles it (nobody holds the uuid, timeout, NATS down).
    pub(crate) async fn request(
        &self,
        side: Side,
        uuid: &str,
        m: &Message,
    ) -> std::result::Result<(Option<String>, Option<String>), Value> {
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            // Not to wait for the backstop while NATS is away: the peer is elsewhere or nowhere,
            // and neither can be asked now.
            return Err(json!({
                "error": format!("cluster: NATS not connected, no route to peer {uuid:?}"),
                "disconnected": true,
            }));
        }
        // async-nats checks no size on a request: NATS would take one over its max_payload as
        // a protocol violation and drop this router's connection. (The room is for headers,
        // which count towards the limit.)
        let max = self.nats.server_info().max_payload;
        if max > 0 && m.as_str().len() + HEADER_ROOM > max {
            return Err(json!({
                "error": format!(
                    "cluster: the request ({} bytes) is larger than NATS's max_payload ({max} bytes) allows",
                    m.as_str().len()
                ),
            }));
        }
        let req = async_nats::Request::new()
            .headers(self.headers("request"))
            .payload(m.as_str().to_owned().into())
            .timeout(Some(self.request_timeout));
        match self
            .nats
            .send_request(self.peer_subject(side, uuid), req)
            .await
        {
            Ok(reply) => {
                let v: Value = serde_json::from_slice(&reply.payload).map_err(
                    |e| json!({"error": format!("cluster: bad reply from a router: {e}")}),
                )?;
                let raw = |k: &str| v.get(k).map(|x| x.to_string());
                Ok((raw("err"), raw("resp")))
            }
            Err(e) => Err(match e.kind() {
                async_nats::RequestErrorKind::NoResponders => json!({
                    "error": format!("no peer {uuid:?} in the cluster"),
                    "disconnected": true,
                    "req": serde_json::from_str::<Value>(m.as_str()).unwrap_or(Value::Null),
                }),
                async_nats::RequestErrorKind::TimedOut => json!({
                    "error": "Connection Timed Out",
                    "timeout": u64::try_from(self.request_timeout.as_millis()).unwrap_or(u64::MAX),
                    "req": serde_json::from_str::<Value>(m.as_str()).unwrap_or(Value::Null),
                }),
                async_nats::RequestErrorKind::Other => {
                    json!({"error": format!("cluster: {e}"), "disconnected": true})
                }
            }),
        }
    }

    /// Whether another router serves `uuid` on `side` (a probe on its subject; no-responders
    /// says no at once). With NATS away nobody can be asked: no.
    pub(crate) async fn held_elsewhere(&self, side: Side, uuid: &str) -> bool {
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return false;
        }
        let probe = async_nats::Request::new()
            .headers(self.headers("probe"))
            .timeout(Some(Duration::from_secs(1)));
        self.nats
            .send_request(self.peer_subject(side, uuid), probe)
            .await
            .is_ok()
    }

    /// Asks every router for the uuids it holds on `side` and tells `peer` (on the other
    /// side of this router) they are online.
    pub(crate) fn tell_roster(self: &Arc<Self>, side: Side, to: Arc<Engine>, peer: String) {
        let c = self.clone();
        tokio::spawn(async move {
            let inbox = c.nats.new_inbox();
            let Ok(mut sub) = c.nats.subscribe(inbox.clone()).await else {
                return;
            };
            let subject = format!("{}.roster.{}", c.prefix, side_token(side));
            if c.nats
                .publish_with_reply(subject, inbox, "".into())
                .await
                .is_err()
            {
                return;
            }
            let wait = tokio::time::sleep(c.roster_wait);
            tokio::pin!(wait);
            loop {
                let m = tokio::select! {
                    _ = &mut wait => break,
                    m = sub.next() => m,
                };
                let Some(m) = m else { break };
                let Ok(uuids) = serde_json::from_slice::<Vec<String>>(&m.payload) else {
                    continue;
                };
                for u in uuids.iter().filter(|u| **u != peer) {
                    if let Ok(msg) = Message::new(&json!({"op": "rpc::online", "uuid": u})) {
                        let _ = to.dispatch_to(&peer, &msg);
                    }
                }
            }
        });
    }

    fn on_roster(&self, side: Side, m: NatsMessage) {
        let Some(reply) = m.reply else { return };
        let uuids: Vec<String> = self
            .held
            .lock()
            .map(|h| {
                h.keys()
                    .filter(|(s, _)| *s == side)
                    .map(|(_, u)| u.clone())
                    .collect()
            })
            .unwrap_or_default();
        let lost = self.lost.lock().map(|l| l.clone()).unwrap_or_default();
        let uuids: Vec<&String> = uuids
            .iter()
            .filter(|u| !lost.contains(&(side, (*u).clone())))
            .collect();
        let body = serde_json::to_string(&uuids).unwrap_or_else(|_| "[]".into());
        let nats = self.nats.clone();
        tokio::spawn(async move {
            let _ = nats.publish(reply, body.into()).await;
        });
    }

    fn on_broadcast(&self, side: Side, m: NatsMessage) {
        let (Some(to), Ok(msg)) = (
            self.engine(side),
            std::str::from_utf8(&m.payload)
                .map_err(|_| ())
                .and_then(|t| Message::from_json(t).map_err(|_| ())),
        ) else {
            return;
        };
        crate::router::deliver(&to, &msg, None, &|p| self.skips(side, p.uuid()));
    }

    fn on_addressed(self: &Arc<Self>, side: Side, uuid: &str, m: NatsMessage) {
        let kind = m
            .headers
            .as_ref()
            .and_then(|h| h.get(KIND))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let Some(to) = self.engine(side) else { return };
        let msg = std::str::from_utf8(&m.payload)
            .ok()
            .and_then(|t| Message::from_json(t).ok());
        match (kind.as_str(), msg) {
            ("event", Some(msg)) => crate::router::deliver(&to, &msg, Some(uuid), &|_| false),
            ("request", Some(msg)) => {
                let Some(reply) = m.reply else { return };
                let nats = self.nats.clone();
                let uuid = uuid.to_owned();
                tokio::spawn(async move {
                    let body = match to.start_answer(Some(&uuid), &msg, None).await {
                        Ok(a) => answer_body(a.sent_err(), a.sent_resp()),
                        Err(e) => json!({"err": e.to_legacy_value()}).to_string(),
                    };
                    // An answer NATS refuses (larger than its max_payload) still settles the
                    // request, with an error, instead of leaving it to the asker's timeout.
                    if let Err(e) = nats.publish(reply.clone(), body.into()).await {
                        let err = json!({"err": {"error": format!(
                            "cluster: the answer could not cross to the asking router: {e} (NATS max_payload)"
                        )}});
                        let _ = nats.publish(reply, err.to_string().into()).await;
                    }
                });
            }
            ("probe", _) => {
                if let Some(reply) = m.reply {
                    let nats = self.nats.clone();
                    tokio::spawn(async move {
                        let _ = nats.publish(reply, "1".into()).await;
                    });
                }
            }
            _ => tracing::debug!("cluster: unreadable message on a peer subject dropped"),
        }
    }

    fn on_presence(self: &Arc<Self>, m: NatsMessage) {
        let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
            return;
        };
        let (Some(op), Some(side), Some(uuid)) = (
            v["op"].as_str(),
            v["side"].as_str().and_then(side_of),
            v["uuid"].as_str(),
        ) else {
            return;
        };
        let key = (side, uuid.to_owned());
        if op == "rpc::online" {
            // Another router claimed a uuid held here: the newest holder wins.
            let held = self.held.lock().ok().and_then(|mut h| h.remove(&key));
            if let Some(h) = held {
                h.stop();
                if let Ok(mut l) = self.lost.lock() {
                    l.insert(key);
                }
                tracing::info!(%uuid, "cluster: another router now holds this uuid");
                self.report.send(crate::router::RouterEvent::Yielded {
                    side,
                    uuid: uuid.to_owned(),
                });
                self.watch_winner(side, uuid.to_owned());
            }
            if let Some(to) = self.engine(other(side)) {
                crate::router::announce(&to, op, &[uuid.to_owned()]);
            }
            return;
        }
        let held_here = self.engine(side).is_some_and(|e| e.holds(uuid));
        if held_here {
            // The newest holder let go and a stream here still has it: take it back.
            self.hold(side, uuid);
            return;
        }
        // Offline from one router may cross the claim of another (a peer that moved): tell our
        // peers only when nobody in the cluster serves the uuid.
        let c = self.clone();
        let uuid = uuid.to_owned();
        tokio::spawn(async move {
            let probe = async_nats::Request::new()
                .headers(c.headers("probe"))
                .timeout(Some(Duration::from_secs(2)));
            if c.nats
                .send_request(c.peer_subject(side, &uuid), probe)
                .await
                .is_ok()
            {
                return;
            }
            if let Some(to) = c.engine(other(side)) {
                crate::router::announce(&to, "rpc::offline", &[uuid]);
            }
        });
    }

    /// While a claim is lost and the uuid still held here, checks now and then that the
    /// winner still serves it: a router that is killed tells nobody, and a peer connected to
    /// several routers (legacy's one stream per address) does not reconnect to this one.
    fn watch_winner(self: &Arc<Self>, side: Side, uuid: String) {
        let weak = Arc::downgrade(self);
        self.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let Some(c) = weak.upgrade() else { return };
                if !c.lost(side, &uuid) {
                    return;
                }
                let probe = async_nats::Request::new()
                    .headers(c.headers("probe"))
                    .timeout(Some(Duration::from_secs(2)));
                match c.nats.send_request(c.peer_subject(side, &uuid), probe).await {
                    Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        tracing::info!(%uuid, "cluster: the router that held this uuid is gone; holding it again");
                        c.hold(side, &uuid);
                        return;
                    }
                    _ => {}
                }
            }
        });
    }

    /// Leaves the cluster: every subscription ends.
    pub(crate) async fn leave(&self) {
        let held: Vec<_> = self
            .held
            .lock()
            .map(|mut h| h.drain().map(|(_, h)| h.task).collect())
            .unwrap_or_default();
        for t in held {
            t.abort();
        }
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in tasks {
            t.abort();
        }
        let _ = self.nats.flush().await;
    }
}

/// A reply to a cluster request: `err` and `resp` as the peer sent them (absent stays absent).
fn answer_body(err: Option<&str>, resp: Option<&str>) -> String {
    let mut s = String::from("{");
    if let Some(e) = err {
        s.push_str("\"err\":");
        s.push_str(e);
    }
    if let Some(r) = resp {
        if err.is_some() {
            s.push(',');
        }
        s.push_str("\"resp\":");
        s.push_str(r);
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_json() {
        let o = ClusterOptions::from_json(
            r#"{"servers": ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"], "name": "prod",
                "user": "router", "password": "pw-not-logged", "requireTls": true, "queue": 10}"#,
        )
        .unwrap();
        assert_eq!(o.servers.len(), 2);
        assert_eq!(o.name, "prod");
        assert_eq!(o.queue, 10);
        assert!(o.require_tls);
        let shown = format!("{o:?}");
        assert!(
            shown.contains("router") && !shown.contains("pw-not-logged"),
            "{shown}"
        );
        let o = ClusterOptions::from_json(r#""nats://a:1,nats://b:2""#).unwrap();
        assert_eq!(o.servers, ["nats://a:1", "nats://b:2"]);
        assert_eq!(o.name, "iris");
        let o =
            ClusterOptions::from_json(r#"{"servers": "nats://a:1", "token": "t0ken"}"#).unwrap();
        assert!(!format!("{o:?}").contains("t0ken"));
    }

    #[test]
    fn bad_options_are_clear_errors() {
        for (text, says) in [
            (
                r#"{"servers": "nats://a:1", "tokn": "x"}"#,
                "unknown member 'tokn'",
            ),
            (r#"{"servers": "nats://a:1", "user": "u"}"#, "go together"),
            (r#"{"name": "x"}"#, "at least one NATS server"),
            (
                r#"{"servers": "nats://a:1", "name": "a.b"}"#,
                "the name must be",
            ),
            (
                r#"{"servers": "nats://a:1", "token": "t", "nkeySeed": "s"}"#,
                "give one of",
            ),
            ("42", "expected an object"),
        ] {
            let e = ClusterOptions::from_json(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
