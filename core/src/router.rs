//! [`Router`]: a frontend [`Server`] relaying to a backend [`Client`] (router in front of a
//! server) or backend [`Server`] (clients on both sides meet in the middle).
//!
//! Routing table: each side's engine maps every uuid reachable through a peer to that peer
//! (`rpc::online`/`rpc::offline` and the `routes` of `rpc::init` keep it current). The router
//! announces the frontend's peers and routes to the backend and the backend's to the frontend,
//! never back to the side a uuid came from, and a uuid already held by another stream is
//! refused, so routers chain without loops and no peer can take over another's route.
//! Events from the frontend reach the backend with `_r: {uuid, designation}`; backend messages
//! with `_uuid` go to that peer only, others to every frontend peer. Requests relay both ways
//! and settle exactly once (answer, error, timeout, disconnect).
//!
//! Cluster (feature `cluster`, [`Router::start_clustered`], `cluster.rs`): many routers act
//! as one over NATS; a uuid this router does not hold is looked for there, and broadcasts and
//! presence reach the other routers' peers (`docs/CLUSTER.md`).
//!
//! Legacy peers: of the control messages a router sends (`rpc::online`, `rpc::offline`, the
//! `rpc::init` of the handshake, `ping`), iris-rpc 0.2.20 takes all but `rpc::offline`, whose
//! handler throws and ends the stream; legacy-mode peers never get it. Nor
//! are they relayed events that legacy would run as one of its own handlers
//! ([`crate::protocol::message::misread_by_legacy`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use serde_json::{json, Value};

use crate::client::Client;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::event::{Event, IncomingRequest};
use crate::link::Link;
use crate::message::Message;
use crate::options::Options;
use crate::peer::Peer;
use crate::protocol::message::{body_meta, legacy_handles, misread_by_legacy, ops, rewrite};
use crate::protocol::Mode;
use crate::server::Server;

#[cfg(feature = "cluster")]
use crate::cluster::{Cluster, ClusterOptions};
#[cfg(not(feature = "cluster"))]
use absent::Cluster;

/// Without the `cluster` feature there is no cluster: a type with no values, so every path
/// that would use one is provably never taken.
#[cfg(not(feature = "cluster"))]
mod absent {
    use super::*;

    pub(crate) enum Cluster {}

    impl Cluster {
        pub(crate) fn hold(&self, _: Side, _: &str) {
            match *self {}
        }
        pub(crate) fn release(&self, _: Side, _: &str, _: bool) {
            match *self {}
        }
        pub(crate) fn tell_roster(&self, _: Side, _: Arc<Engine>, _: String) {
            match *self {}
        }
        pub(crate) fn send_to(&self, _: Side, _: &str, _: &Message) {
            match *self {}
        }
        pub(crate) fn broadcast(&self, _: Side, _: &Message) {
            match *self {}
        }
        pub(crate) fn skips(&self, _: Side, _: &str) -> bool {
            match *self {}
        }
        pub(crate) async fn held_elsewhere(&self, _: Side, _: &str) -> bool {
            match *self {}
        }
        pub(crate) async fn request(
            &self,
            _: Side,
            _: &str,
            _: &Message,
        ) -> std::result::Result<(Option<String>, Option<String>), Value> {
            match *self {}
        }
        pub(crate) async fn leave(&self) {
            match *self {}
        }
    }
}

/// The router's other side.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Connect to a server (options with `address`).
    Client(Options),
    /// Listen for more clients (options with `port`).
    Server(Options),
}

/// Which side of a router something happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The frontend server.
    Frontend,
    /// The backend client or server.
    Backend,
}

/// What a router reports: peers coming and going, and connection errors.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RouterEvent {
    /// A peer authenticated on one side.
    Connect {
        /// Which side.
        side: Side,
        /// The peer.
        peer: Peer,
    },
    /// A peer left one side.
    Disconnect {
        /// Which side.
        side: Side,
        /// The peer.
        peer: Peer,
        /// Why.
        reason: String,
    },
    /// A peer was refused: it claimed a uuid the other side holds.
    Refused {
        /// The peer.
        peer: Peer,
    },
    /// In a cluster: another router now holds this uuid (the newest holder wins), so this
    /// router no longer serves it to the cluster; its own stream, if still up, stays.
    Yielded {
        /// Which side.
        side: Side,
        /// The uuid.
        uuid: String,
    },
    /// A connection failed on one side.
    Error {
        /// Which side.
        side: Side,
        /// What went wrong.
        error: Error,
        /// The remote address, when known.
        address: Option<String>,
    },
}

/// The receiver of a router's events (see [`Router::events`]).
pub type RouterEvents = tokio::sync::mpsc::Receiver<RouterEvent>;

/// A running router.
pub struct Router {
    frontend: Server,
    backend: Link,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    events: std::sync::Mutex<Option<RouterEvents>>,
    report: Arc<Reporter>,
    cluster: Option<Arc<Cluster>>,
}

/// Where the relays report events: a bounded queue that never makes a relay wait (a relay
/// that waited for a slow or absent reader would stop relaying).
pub(crate) struct Reporter {
    /// Taken by [`Router::close`], so the receiver ends then (an adapter forwarding the events
    /// waits for that end).
    tx: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<RouterEvent>>>,
    dropped: AtomicU64,
    /// Whether [`Router::events`] was taken (only then is a drop worth a warning).
    taken: AtomicBool,
}

impl Reporter {
    pub(crate) fn send(&self, ev: RouterEvent) {
        let tx = self.tx.lock().ok().and_then(|t| t.clone());
        let Some(tx) = tx else { return };
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = tx.try_send(ev) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Logged at 1, 2, 4, 8, ... drops, so a reader that stalls cannot flood the log.
            if n.is_power_of_two() {
                if self.taken.load(Ordering::Relaxed) {
                    tracing::warn!(
                        dropped = n,
                        capacity = tx.max_capacity(),
                        "router: event queue full (router_event_queue), events dropped"
                    );
                } else {
                    tracing::debug!(dropped = n, "router: nobody reads the events; dropped");
                }
            }
        }
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("frontend", &self.frontend.local_addr())
            .finish_non_exhaustive()
    }
}

/// Uuids reachable through an engine: its peers and their routes.
fn reachable(engine: &Weak<Engine>) -> Vec<String> {
    let Some(e) = engine.upgrade() else {
        return Vec::new();
    };
    let mut out: Vec<String> = e.peers().iter().map(|p| p.uuid().to_owned()).collect();
    out.extend(e.route_table().into_iter().map(|(u, _)| u));
    out
}

fn control(op: &str, uuid: &str) -> Option<Message> {
    Message::new(&json!({ "op": op, "uuid": uuid })).ok()
}

/// Whether a peer may be sent what a legacy peer cannot take. A peer in the legacy session
/// mode may be the iris-rpc 0.2.20 package or ours with `security: legacy`: the handshake is
/// the same byte for byte, so they cannot be told apart, and both are treated as the package.
fn speaks_ours(p: &Peer) -> bool {
    p.mode() != Mode::Legacy
}

/// Sends `m` to each peer of `to` that `keep` accepts.
fn send_where(to: &Engine, m: &Message, keep: impl Fn(&Peer) -> bool) {
    for p in to.peers().iter().filter(|p| keep(p)) {
        let _ = to.dispatch_to(p.uuid(), m);
    }
}

/// `rpc::online`/`rpc::offline` for `uuids` to every peer of `to`. Legacy's `rpc::offline`
/// handler throws (it reads an undefined variable), which ends its stream, so legacy-mode
/// peers never get one: they keep the route, as legacy itself does (it never reads its
/// routes); our peers in legacy mode drop it when the router's stream ends.
pub(crate) fn announce(to: &Engine, op: &str, uuids: &[String]) {
    for u in uuids {
        if let Some(m) = control(op, u) {
            if op == ops::OFFLINE {
                send_where(to, &m, speaks_ours);
            } else {
                let _ = to.dispatch(&m);
            }
        }
    }
}

/// True when `uuid` is reached (directly or through a route) over a legacy-mode stream.
fn reached_over_legacy(engine: &Engine, uuid: &str) -> bool {
    let via = match engine.stream(uuid) {
        Some(s) => return !speaks_ours(&s.peer),
        None => engine
            .route_table()
            .into_iter()
            .find_map(|(u, via)| (u == uuid).then_some(via)),
    };
    via.and_then(|v| engine.stream(&v))
        .is_some_and(|s| !speaks_ours(&s.peer))
}

impl Router {
    /// Starts the frontend server and the backend on the current tokio runtime.
    pub async fn start(frontend: Options, backend: Backend) -> Result<Router> {
        Self::start_inner(frontend, backend, None).await
    }

    /// [`Router::start`], joined to the cluster of routers that `cluster` names (see
    /// `docs/CLUSTER.md`): peers on any router of the cluster reach each other as through one
    /// router. Fails with a clear error when NATS is unreachable (nothing is left listening).
    #[cfg(feature = "cluster")]
    pub async fn start_clustered(
        frontend: Options,
        backend: Backend,
        cluster: ClusterOptions,
    ) -> Result<Router> {
        Self::start_inner(frontend, backend, Some(cluster)).await
    }

    #[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
    async fn start_inner(
        frontend: Options,
        backend: Backend,
        #[cfg(feature = "cluster")] cluster: Option<ClusterOptions>,
        #[cfg(not(feature = "cluster"))] cluster: Option<std::convert::Infallible>,
    ) -> Result<Router> {
        let (frontend, fev) = Server::bind_with_events(frontend).await?;
        let fe = frontend.engine().clone();
        let backend_is_server = matches!(backend, Backend::Server(_));
        let started = match backend {
            Backend::Client(mut o) => {
                if o.designation.is_empty() {
                    o.designation = "router".into();
                }
                Client::connect_with_events(o).map(|(c, ev)| (Link::Client(c), ev))
            }
            Backend::Server(o) => Server::bind_with_events(o)
                .await
                .map(|(s, ev)| (Link::Server(s), ev)),
        };
        let backend: (Link, crate::event::Events) = match started {
            Ok(b) => b,
            Err(e) => {
                // Do not leave the frontend listening behind a failed start.
                frontend.close().await;
                return Err(e);
            }
        };
        let (backend, bev) = backend;
        let be = backend.engine().clone();
        let (tx, rx) = tokio::sync::mpsc::channel(fe.opts.limits.router_event_queue);
        let report = Arc::new(Reporter {
            tx: std::sync::Mutex::new(Some(tx)),
            dropped: AtomicU64::new(0),
            taken: AtomicBool::new(false),
        });
        #[cfg(feature = "cluster")]
        let cluster = match cluster {
            None => None,
            Some(o) => {
                match Cluster::join(&o, &fe, &be, !backend_is_server, report.clone()).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        frontend.close().await;
                        backend.close().await;
                        return Err(e);
                    }
                }
            }
        };
        #[cfg(not(feature = "cluster"))]
        let cluster: Option<Arc<Cluster>> = None;
        let (wf, wb) = (Arc::downgrade(&fe), Arc::downgrade(&be));
        fe.set_route_provider(Arc::new(move || reachable(&wb)));
        be.set_route_provider(Arc::new(move || reachable(&wf)));
        let tasks = vec![
            tokio::spawn(relay(
                fev,
                fe.clone(),
                be.clone(),
                Side::Frontend,
                true,
                report.clone(),
                cluster.clone(),
            )),
            tokio::spawn(relay(
                bev,
                be.clone(),
                fe.clone(),
                Side::Backend,
                backend_is_server,
                report.clone(),
                cluster.clone(),
            )),
        ];
        Ok(Router {
            frontend,
            backend,
            tasks,
            events: std::sync::Mutex::new(Some(rx)),
            report,
            cluster,
        })
    }

    /// The frontend's listen address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.frontend.local_addr()
    }

    /// The backend server's listen address, when the backend is a server.
    pub fn backend_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.backend {
            Link::Server(s) => Some(s.local_addr()),
            Link::Client(_) => None,
        }
    }

    /// This router's uuid on one side.
    pub fn uuid(&self, side: Side) -> &str {
        &self.engine(side).identity.uuid
    }

    /// Peers on one side.
    pub fn peers(&self, side: Side) -> Vec<Peer> {
        self.engine(side).peers()
    }

    /// Routes known on one side: `(uuid, peer that reaches it)`.
    pub fn routes(&self, side: Side) -> Vec<(String, String)> {
        self.engine(side).route_table()
    }

    /// Resources on one side.
    pub fn stats(&self, side: Side) -> crate::engine::Stats {
        self.engine(side).stats()
    }

    fn engine(&self, side: Side) -> &Arc<Engine> {
        match side {
            Side::Frontend => self.frontend.engine(),
            Side::Backend => self.backend.engine(),
        }
    }

    /// The router's events (peers coming and going, errors); the first call takes them. At
    /// most `router_event_queue` wait to be read; past that, new ones are dropped.
    pub fn events(&self) -> Option<RouterEvents> {
        let events = self.events.lock().ok().and_then(|mut e| e.take());
        if events.is_some() {
            self.report.taken.store(true, Ordering::Relaxed);
        }
        events
    }

    /// Events dropped so far because the queue was full (nobody reading, or too slowly).
    pub fn dropped_events(&self) -> u64 {
        self.report.dropped.load(Ordering::Relaxed)
    }

    /// Stops both sides.
    pub async fn close(&self) {
        if let Some(c) = &self.cluster {
            c.leave().await;
        }
        self.frontend.close().await;
        self.backend.close().await;
        for t in &self.tasks {
            t.abort();
        }
        // Nothing more to report: the events end.
        if let Ok(mut tx) = self.report.tx.lock() {
            tx.take();
        }
    }
}

/// Relays what happens on `from` (the `side` of the router) to `to`.
async fn relay(
    mut events: crate::event::Events,
    from: Arc<Engine>,
    to: Arc<Engine>,
    side: Side,
    tag_sender: bool,
    report: Arc<Reporter>,
    cluster: Option<Arc<Cluster>>,
) {
    let frontend = side == Side::Frontend;
    let to_side = other(side);
    while let Some(ev) = events.next().await {
        match ev {
            Event::Connect { peer } => {
                let elsewhere = match &cluster {
                    Some(c) if frontend => c.held_elsewhere(to_side, peer.uuid()).await,
                    _ => false,
                };
                if frontend && (to.holds(peer.uuid()) || elsewhere) {
                    tracing::warn!(uuid = %peer.uuid(), "router: refused a peer claiming a uuid held on the other side");
                    peer.end();
                    report.send(RouterEvent::Refused { peer });
                    continue;
                }
                report.send(RouterEvent::Connect {
                    side,
                    peer: peer.clone(),
                });
                tracing::info!(uuid = %peer.uuid(), address = %peer.address(), frontend, "router: peer connected");
                announce(&to, "rpc::online", &[peer.uuid().to_owned()]);
                // The peer's handshake carried the other side's routes as they were when it
                // began; re-announce them now that the stream is up, so none is missed.
                for u in reachable(&Arc::downgrade(&to)) {
                    if let Some(m) = control("rpc::online", &u) {
                        let _ = from.dispatch_to(peer.uuid(), &m);
                    }
                }
                if let Some(c) = &cluster {
                    c.hold(side, peer.uuid());
                    // And what the other routers hold on the other side.
                    c.tell_roster(to_side, from.clone(), peer.uuid().to_owned());
                }
            }
            Event::Disconnect { peer, reason } => {
                tracing::info!(uuid = %peer.uuid(), frontend, "router: peer disconnected");
                report.send(RouterEvent::Disconnect {
                    side,
                    peer: peer.clone(),
                    reason,
                });
                if !to.holds(peer.uuid()) {
                    announce(&to, "rpc::offline", &[peer.uuid().to_owned()]);
                }
                if let Some(c) = &cluster {
                    c.release(side, peer.uuid(), from.holds(peer.uuid()));
                }
            }
            Event::Routes {
                online, offline, ..
            } => {
                announce(&to, "rpc::online", &online);
                announce(&to, "rpc::offline", &offline);
                if let Some(c) = &cluster {
                    for u in &online {
                        c.hold(side, u);
                    }
                    for u in &offline {
                        c.release(side, u, from.holds(u));
                    }
                }
            }
            Event::Message { msg, uuid, peer } => {
                crate::metrics::get().relayed(false);
                forward_event(
                    &to,
                    to_side,
                    msg,
                    &uuid,
                    &peer,
                    tag_sender,
                    cluster.as_deref(),
                )
            }
            Event::Request(req) => {
                crate::metrics::get().relayed(true);
                let to = to.clone();
                // The relay is a child of the request's handling here, and what it sends on
                // carries the relay's trace (src/trace.rs).
                #[cfg(feature = "otel")]
                let span = crate::trace::relay_span(
                    req.responder.span(),
                    match to_side {
                        Side::Frontend => "frontend",
                        Side::Backend => "backend",
                    },
                );
                let relay =
                    forward_request(to, to_side, req, frontend, tag_sender, cluster.clone());
                #[cfg(feature = "otel")]
                let relay = tracing::Instrument::instrument(relay, span);
                tokio::spawn(relay);
            }
            Event::Error { error, address } => {
                tracing::debug!(%error, ?address, frontend, "router: connection error");
                report.send(RouterEvent::Error {
                    side,
                    error,
                    address,
                });
            }
            _ => {}
        }
    }
}

/// The body to send on: `_uuid` removed, `_r` set to the original sender when `tag_sender`
/// (messages from the frontend, and from the backend when it is a server of clients), kept as
/// is when it already names a routed sender.
fn relayed_body(
    text: &str,
    uuid: &str,
    peer: &Peer,
    tag_sender: bool,
) -> Result<(String, Option<String>)> {
    let meta = body_meta(text).map_err(|e| Error::Protocol(e.to_string()))?;
    let target = meta.target.map(|t| t.into_owned());
    let tag = (tag_sender && uuid == peer.uuid())
        .then(|| json!({ "uuid": uuid, "designation": peer.designation().unwrap_or("") }));
    let set: Vec<(&str, Value)> = tag.into_iter().map(|t| ("_r", t)).collect();
    let body = rewrite(text, &["_uuid"], &set).map_err(|e| Error::Protocol(e.to_string()))?;
    Ok((body, target))
}

fn other(side: Side) -> Side {
    match side {
        Side::Frontend => Side::Backend,
        Side::Backend => Side::Frontend,
    }
}

fn forward_event(
    to: &Engine,
    to_side: Side,
    msg: Message,
    uuid: &str,
    peer: &Peer,
    tag_sender: bool,
    cluster: Option<&Cluster>,
) {
    let (body, target) = match relayed_body(msg.as_str(), uuid, peer, tag_sender) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "router: message not relayed");
            return;
        }
    };
    let Ok(m) = Message::from_json(&body) else {
        return;
    };
    match (target, cluster) {
        // A server several routers connect to writes what it sends to every stream to each of
        // them: only the router that holds its uuid takes it to other routers.
        (Some(t), Some(c)) if !to.holds(&t) && c.skips(other(to_side), peer.uuid()) => {
            tracing::debug!(uuid = %t, "router: left to the router that holds the sender");
        }
        (Some(t), Some(c)) if !to.holds(&t) => c.send_to(to_side, &t, &m),
        (Some(t), _) => deliver(to, &m, Some(&t), &|_| false),
        (None, Some(c)) => {
            // A server several routers connect to sends its broadcasts to each: the router
            // that holds its uuid relays them, the others leave them.
            if c.skips(other(to_side), peer.uuid()) {
                return;
            }
            deliver(to, &m, None, &|p| c.skips(to_side, p.uuid()));
            c.broadcast(to_side, &m);
        }
        (None, None) => deliver(to, &m, None, &|_| false),
    }
}

/// Delivers a relayed message to `to`'s peers: the one `target` names, or every peer but those
/// `skip` names. What a legacy peer would run as one of its own handlers instead of
/// delivering (and that can end its stream) goes to our peers only.
pub(crate) fn deliver(
    to: &Engine,
    m: &Message,
    target: Option<&str>,
    skip: &dyn Fn(&Peer) -> bool,
) {
    let misread = match m.op() {
        Some(op) => legacy_handles(op),
        None => misread_by_legacy(m.as_str()),
    };
    let result = match target {
        Some(t) if misread && reached_over_legacy(to, t) => {
            tracing::debug!(uuid = %t, "router: not relayed to a legacy peer: its op names a legacy handler");
            Ok(())
        }
        Some(t) => to.dispatch_to(t, m),
        None if misread => {
            send_where(to, m, |p| speaks_ours(p) && !skip(p));
            Ok(())
        }
        None if to.peers().iter().any(skip) => {
            send_where(to, m, |p| !skip(p));
            Ok(())
        }
        None => to.dispatch(m).map(|_| ()),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "router: message not delivered");
    }
}

async fn forward_request(
    to: Arc<Engine>,
    to_side: Side,
    req: IncomingRequest,
    frontend: bool,
    tag_sender: bool,
    cluster: Option<Arc<Cluster>>,
) {
    let (msg, uuid, peer, responder) = req.into_parts();
    let (body, target) = match relayed_body(msg.as_str(), &uuid, &peer, tag_sender) {
        Ok(x) => x,
        Err(e) => return responder.respond(Err(json!({ "error": e.to_string() }))),
    };
    if !frontend && target.is_none() {
        // A request from the backend for the router itself: nobody here handles it.
        drop(responder);
        return;
    }
    let m = match Message::from_json(&body) {
        Ok(m) => m,
        Err(e) => return responder.respond(Err(json!({ "error": e.to_string() }))),
    };
    if let (Some(t), Some(c)) = (&target, &cluster) {
        if !to.holds(t) {
            // Held by another router, or by nobody (NATS's no-responders says so at once).
            return match c.request(to_side, t, &m).await {
                Ok((err, resp)) => responder.respond_exact(err.as_deref(), resp.as_deref()),
                Err(e) => responder.respond(Err(e)),
            };
        }
    }
    match to.start_answer(target.as_deref(), &m, None).await {
        // Relayed as answered, `err` and `resp` alike (a legacy callback gets both).
        Ok(answer) => responder.respond_exact(answer.sent_err(), answer.sent_resp()),
        Err(e) => responder.respond(Err(e.to_legacy_value())),
    }
}
