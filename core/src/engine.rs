//! The shared engine behind [`crate::Client`] and [`crate::Server`]: authenticated streams,
//! handlers, dispatch, pending requests and events. Connections feed it; it never touches
//! sockets itself.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::event::{Event, Events, IncomingRequest};
use crate::message::{Message, Response};
use crate::options::Options;
use crate::outbox::Outbox;
use crate::peer::Peer;
use crate::protocol::{Identity, Keys};
use crate::shutdown::Shutdown;

/// A listener for one `op`: `(msg, uuid, peer)`.
pub type Listener = Arc<dyn Fn(&Message, &str, &Peer) + Send + Sync>;
/// A filter: `Ok(())` lets the message through, `Err(value)` refuses it (a refused request is
/// answered with `value` as its error).
pub type Filter = Arc<dyn Fn(&Message, &Peer) -> std::result::Result<(), Value> + Send + Sync>;
/// The future a request handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = std::result::Result<Value, Value>> + Send>>;
/// A request handler.
pub type Handler = Arc<dyn Fn(Request) -> HandlerFuture + Send + Sync>;

/// Computes the uuids announced as reachable through an instance, at each handshake.
pub(crate) type RouteProvider = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// A request as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request body.
    pub msg: Message,
    /// The sender (`_r.uuid` when routed, else the stream's uuid).
    pub uuid: String,
    /// The stream it came on.
    pub peer: Peer,
}

/// Holds one unit of a counter for its lifetime.
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub(crate) fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A snapshot of an instance's resources, for monitoring and leak checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Open connections (TCP up), authenticated or not.
    pub connections: usize,
    /// Connections still in TLS or authentication (servers).
    pub unauthenticated: usize,
    /// Authenticated streams.
    pub streams: usize,
    /// Requests awaiting an answer, over all streams.
    pub pending: usize,
    /// Bytes queued for writing, over all streams.
    pub queued_bytes: usize,
    /// Background tasks alive (accept loop, connections, reconnect loops, pinger).
    pub tasks: usize,
}

/// Identifies a registered listener, handler, filter or digest, for removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandlerId(u64);

#[derive(Default)]
struct Handlers {
    next_id: u64,
    listeners: HashMap<String, Arc<Vec<(HandlerId, Listener)>>>,
    digests: Arc<Vec<(HandlerId, Listener)>>,
    filters: Arc<Vec<(HandlerId, Filter)>>,
    requests: HashMap<String, Arc<Vec<(HandlerId, Handler)>>>,
}

impl Handlers {
    fn id(&mut self) -> HandlerId {
        self.next_id += 1;
        HandlerId(self.next_id)
    }
}

fn remove_from<T: Clone>(list: &mut Arc<Vec<(HandlerId, T)>>, id: HandlerId) -> bool {
    if list.iter().any(|(i, _)| *i == id) {
        Arc::make_mut(list).retain(|(i, _)| *i != id);
        true
    } else {
        false
    }
}

pub(crate) struct PendingEntry {
    req: Arc<str>,
    timeout_ms: u64,
    key: (Instant, u64),
    tx: oneshot::Sender<Result<Response>>,
}

#[derive(Default)]
pub(crate) struct Pending {
    map: HashMap<String, PendingEntry>,
    deadlines: BTreeMap<(Instant, u64), String>,
    seq: u64,
}

impl Pending {
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(t, _)| *t)
    }

    fn take(&mut self, id: &str) -> Option<PendingEntry> {
        let e = self.map.remove(id)?;
        self.deadlines.remove(&e.key);
        Some(e)
    }

    /// Removes and returns every entry whose deadline has passed.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<PendingEntry> {
        let mut out = Vec::new();
        while let Some((&(t, n), _)) = self.deadlines.iter().next() {
            if t > now {
                break;
            }
            if let Some(id) = self.deadlines.remove(&(t, n)) {
                if let Some(e) = self.map.remove(&id) {
                    out.push(e);
                }
            }
        }
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

impl PendingEntry {
    pub(crate) fn settle_timeout(self) {
        let _ = self.tx.send(Err(Error::Timeout {
            timeout_ms: self.timeout_ms,
            req: self.req,
        }));
    }
}

/// An authenticated stream as the engine sees it.
pub(crate) struct Stream {
    pub(crate) peer: Peer,
    pub(crate) out: Arc<Outbox>,
    pub(crate) queued: Arc<AtomicUsize>,
    pub(crate) pending: Mutex<Pending>,
    pub(crate) pending_changed: Notify,
    pub(crate) close_reason: Mutex<Option<String>>,
    max_queue: usize,
    max_pending: usize,
}

impl Stream {
    pub(crate) fn new(
        peer: Peer,
        out: Arc<Outbox>,
        queued: Arc<AtomicUsize>,
        opts: &Options,
    ) -> Self {
        Stream {
            peer,
            out,
            queued,
            pending: Mutex::new(Pending::default()),
            pending_changed: Notify::new(),
            close_reason: Mutex::new(None),
            max_queue: opts.limits.max_queue_bytes,
            max_pending: opts.limits.max_pending,
        }
    }

    /// Closes the stream, remembering the first reason given.
    pub(crate) fn close(&self, reason: impl Into<String>) {
        if let Ok(mut r) = self.close_reason.lock() {
            if r.is_none() {
                *r = Some(reason.into());
            }
        }
        self.peer.end();
    }

    /// Queues a message text for the writer.
    pub(crate) fn send(&self, text: Arc<str>) -> Result<()> {
        let n = text.len() + 1;
        let queued = self.queued.fetch_add(n, Ordering::Relaxed) + n;
        if queued > self.max_queue {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            let why = format!(
                "outbound queue over {} bytes: peer is not reading",
                self.max_queue
            );
            self.close(why.clone());
            return Err(Error::LimitExceeded(why));
        }
        self.out.push(text).map_err(|_| {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            Error::NotConnected { req: None }
        })
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Settles every pending request with `err` (disconnect or close).
    pub(crate) fn fail_pending(&self, closed: bool) {
        let entries: Vec<PendingEntry> = {
            let mut p = self.lock_pending();
            p.deadlines.clear();
            p.map.drain().map(|(_, e)| e).collect()
        };
        for e in entries {
            let err = if closed {
                Error::Closed
            } else {
                Error::Disconnected { req: e.req }
            };
            let _ = e.tx.send(Err(err));
        }
    }

    pub(crate) fn settle(&self, id: &str, err: Option<&RawValue>, resp: Option<&RawValue>) -> bool {
        let Some(entry) = self.lock_pending().take(id) else {
            return false;
        };
        // The answer as sent; `request_with` turns an error in it into `Error::Remote`.
        let _ = entry.tx.send(Ok(Response {
            resp: resp.map(|r| r.to_owned()),
            err: err.map(|e| e.to_owned()),
        }));
        true
    }
}

/// Polls a handler's future, turning a panic into an error answer.
fn poll_catching(
    fut: Pin<&mut (dyn Future<Output = std::result::Result<Value, Value>> + Send)>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<std::result::Result<Value, Value>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
        Ok(p) => p,
        Err(_) => std::task::Poll::Ready(Err(serde_json::json!({
            "error": "the request handler panicked"
        }))),
    }
}

/// Answers one incoming request exactly once; answers "No such handler" if dropped unanswered.
pub struct Responder {
    stream: Option<Arc<Stream>>,
    id: Box<RawValue>,
    op: Option<String>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("id", &self.id.get())
            .finish()
    }
}

impl Responder {
    /// Answers with a value or an error value.
    pub fn respond(mut self, result: std::result::Result<Value, Value>) {
        let (err, resp) = match result {
            Ok(v) => ("null".to_owned(), Some(v.to_string())),
            Err(e) => (e.to_string(), None),
        };
        self.send(Some(&err), resp.as_deref());
    }

    /// Answers with JSON texts (`err` absent is written `"err":null`, `resp` absent is left
    /// out); an invalid text is answered as an error instead.
    pub fn respond_raw(self, err: Option<&str>, resp: Option<&str>) {
        self.respond_exact(Some(err.unwrap_or("null")), resp);
    }

    /// Answers with JSON texts written as given, an absent one left out, as legacy's
    /// `JSON.stringify` does for `cb(undefined, ..)`: `cb()` is `{"_resp":ID}`. An invalid text
    /// is answered as an error instead.
    pub fn respond_exact(mut self, err: Option<&str>, resp: Option<&str>) {
        let valid = |t: Option<&str>| {
            t.is_none_or(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok())
        };
        if valid(err) && valid(resp) {
            self.send(err, resp);
        } else {
            self.send(Some(r#"{"error":"invalid JSON in response"}"#), None);
        }
    }

    fn send(&mut self, err: Option<&str>, resp: Option<&str>) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let mut text = String::with_capacity(
            32 + self.id.get().len() + err.map_or(4, str::len) + resp.map_or(0, str::len),
        );
        text.push_str("{\"_resp\":");
        text.push_str(self.id.get());
        if let Some(e) = err {
            text.push_str(",\"err\":");
            text.push_str(e);
        }
        if let Some(r) = resp {
            text.push_str(",\"resp\":");
            text.push_str(r);
        }
        text.push('}');
        let _ = stream.send(Arc::from(text));
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.stream.is_some() {
            let op = self.op.take().unwrap_or_default();
            let err = serde_json::json!({ "error": format!("No such handler '{op}'") }).to_string();
            self.send(Some(&err), None);
        }
    }
}

pub(crate) struct Engine {
    pub(crate) opts: Options,
    pub(crate) identity: Identity,
    pub(crate) keys: Arc<Keys>,
    streams: RwLock<HashMap<String, Arc<Stream>>>,
    /// Streams set aside by a newer stream with the same uuid (oldest first), still connected.
    older: Mutex<HashMap<String, Vec<Arc<Stream>>>>,
    /// Uuids reachable through a stream (`rpc::online`, `routes`), mapped to that stream's uuid.
    remote_routes: RwLock<HashMap<String, String>>,
    /// Extra uuids announced as reachable through us (a router's other side).
    route_provider: RwLock<Option<RouteProvider>>,
    handlers: RwLock<Handlers>,
    events: Mutex<Option<mpsc::Sender<Event>>>,
    ping_data: RwLock<Option<Value>>,
    pub(crate) shutdown: Shutdown,
    pub(crate) live_tasks: AtomicUsize,
    pub(crate) tasks_done: Notify,
    pub(crate) unauthenticated: AtomicUsize,
    pub(crate) connections: AtomicUsize,
    closed_events: AtomicBool,
    /// Legacy peers already warned about (bounded by [`LEGACY_WARNED_MAX`]).
    legacy_warned: Mutex<std::collections::HashSet<String>>,
}

/// How many legacy peers' uuids are remembered so each is warned about once.
const LEGACY_WARNED_MAX: usize = 4096;

fn node_id() -> [u8; 6] {
    static NODE: std::sync::OnceLock<[u8; 6]> = std::sync::OnceLock::new();
    *NODE.get_or_init(|| {
        let mut n = [0u8; 6];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut n);
        n[0] |= 1; // multicast bit: a random node id, per RFC 4122
        n
    })
}

/// A UUID v1 string, as legacy uses for request ids.
fn request_id() -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::now_v1(&node_id())
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

impl Engine {
    pub(crate) fn new(opts: Options) -> Result<Arc<Self>> {
        opts.validate()?;
        let identity = Identity {
            uuid: opts
                .uuid
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            designation: opts.designation.clone(),
            mac: opts.mac.clone(),
        };
        let keys = Arc::new(Keys::new(&opts.auth));
        let ping_data = RwLock::new(opts.ping_data.clone());
        Ok(Arc::new(Engine {
            opts,
            identity,
            keys,
            streams: RwLock::new(HashMap::new()),
            older: Mutex::new(HashMap::new()),
            remote_routes: RwLock::new(HashMap::new()),
            route_provider: RwLock::new(None),
            handlers: RwLock::new(Handlers::default()),
            events: Mutex::new(None),
            ping_data,
            shutdown: Shutdown::default(),
            live_tasks: AtomicUsize::new(0),
            tasks_done: Notify::new(),
            unauthenticated: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            closed_events: AtomicBool::new(false),
            legacy_warned: Mutex::new(std::collections::HashSet::new()),
        }))
    }

    // ---- handlers -------------------------------------------------------------------------

    fn handlers_mut(&self) -> std::sync::RwLockWriteGuard<'_, Handlers> {
        self.handlers.write().unwrap_or_else(|p| p.into_inner())
    }

    fn handlers(&self) -> std::sync::RwLockReadGuard<'_, Handlers> {
        self.handlers.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn on(&self, op: &str, f: Listener) -> HandlerId {
        let mut h = self.handlers_mut();
        let id = h.id();
        Arc::make_mut(h.listeners.entry(op.to_owned()).or_default()).push((id, f));
        id
    }

    pub(crate) fn digest(&self, f: Listener) -> HandlerId {
        let mut h = self.handlers_mut();
        let id = h.id();
        Arc::make_mut(&mut h.digests).push((id, f));
        id
    }

    pub(crate) fn filter(&self, f: Filter) -> HandlerId {
        let mut h = self.handlers_mut();
        let id = h.id();
        Arc::make_mut(&mut h.filters).push((id, f));
        id
    }

    pub(crate) fn handle(&self, op: &str, f: Handler) -> HandlerId {
        let mut h = self.handlers_mut();
        let id = h.id();
        Arc::make_mut(h.requests.entry(op.to_owned()).or_default()).push((id, f));
        id
    }

    pub(crate) fn off(&self, id: HandlerId) -> bool {
        let mut h = self.handlers_mut();
        let h = &mut *h;
        let mut found = remove_from(&mut h.digests, id) || remove_from(&mut h.filters, id);
        for list in h.listeners.values_mut() {
            found |= remove_from(list, id);
        }
        for list in h.requests.values_mut() {
            found |= remove_from(list, id);
        }
        found
    }

    pub(crate) fn events(&self) -> Events {
        let (tx, rx) = mpsc::channel(self.opts.limits.event_queue);
        if self.closed_events.load(Ordering::SeqCst) {
            drop(tx);
        } else if let Ok(mut e) = self.events.lock() {
            *e = Some(tx);
        }
        Events { rx }
    }

    fn has_receiver(&self) -> bool {
        self.events.lock().ok().is_some_and(|e| e.is_some())
    }

    /// Queues an event for the receiver; waits while its queue is full (backpressure), but
    /// never past close.
    pub(crate) async fn emit(&self, ev: Event) {
        let tx = self.events.lock().ok().and_then(|e| e.clone());
        let Some(tx) = tx else { return };
        // Room in the queue is the common case; waiting for room is boxed so that every
        // caller's future (one per received line) stays small.
        if let Err(mpsc::error::TrySendError::Full(ev)) = tx.try_send(ev) {
            Box::pin(async move {
                tokio::select! {
                    _ = tx.send(ev) => {}
                    _ = self.shutdown.wait() => {}
                }
            })
            .await;
        }
    }

    pub(crate) fn set_ping_data(&self, v: Option<Value>) {
        if let Ok(mut p) = self.ping_data.write() {
            *p = v;
        }
    }

    pub(crate) fn ping_message(&self) -> Result<Message> {
        let data = self.ping_data.read().ok().and_then(|d| d.clone());
        match data {
            Some(d) => Message::new(&serde_json::json!({"op": "ping", "data": d})),
            None => Message::new(&serde_json::json!({"op": "ping"})),
        }
    }

    // ---- streams --------------------------------------------------------------------------

    fn streams(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Stream>>> {
        self.streams.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs once per peer uuid that it speaks only the legacy protocol (under `prefer-v2`).
    pub(crate) fn warn_legacy_peer(&self, peer: &Peer) {
        let first = match self.legacy_warned.lock() {
            Ok(mut seen) if seen.len() < LEGACY_WARNED_MAX => seen.insert(peer.uuid().to_owned()),
            Ok(seen) => !seen.contains(peer.uuid()),
            Err(_) => true,
        };
        if first {
            tracing::warn!(
                peer = %peer.uuid(),
                address = %peer.address(),
                "peer speaks only the legacy iris-rpc protocol (no mutual or channel-bound \
                 authentication, static-key cipher); upgrade it, then set security to require-v2"
            );
        }
    }

    fn older(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Stream>>>> {
        self.older.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an authenticated stream. As in legacy, a stream already registered with the
    /// same uuid stays connected: it is set aside (its own requests, answers and events go
    /// on), and `dispatch`/`request` to that uuid reach the newest stream.
    pub(crate) fn register(&self, stream: Arc<Stream>) {
        let uuid = stream.peer.uuid().to_owned();
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = streams.insert(uuid.clone(), stream) {
            self.older().entry(uuid).or_default().push(old);
        }
    }

    /// Removes a stream. When it was the registered one for its uuid, the newest stream set
    /// aside with that uuid takes its place, or else the routes through that uuid go away
    /// (returned).
    pub(crate) fn unregister(&self, stream: &Arc<Stream>) -> Vec<String> {
        let uuid = stream.peer.uuid();
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        let mut older = self.older();
        let current = streams.get(uuid).is_some_and(|s| Arc::ptr_eq(s, stream));
        let list = older.get_mut(uuid);
        let next = match list {
            Some(list) => {
                if !current {
                    list.retain(|s| !Arc::ptr_eq(s, stream));
                }
                let next = if current { list.pop() } else { None };
                if list.is_empty() {
                    older.remove(uuid);
                }
                next
            }
            None => None,
        };
        if !current {
            return Vec::new();
        }
        if let Some(next) = next {
            streams.insert(uuid.to_owned(), next);
            return Vec::new();
        }
        streams.remove(uuid);
        drop(older);
        drop(streams);
        let mut lost = Vec::new();
        if let Ok(mut r) = self.remote_routes.write() {
            r.retain(|u, via| {
                if via == uuid {
                    lost.push(u.clone());
                    false
                } else {
                    true
                }
            });
        }
        lost
    }

    /// Sets the uuids announced as reachable through this instance (beyond `routes`).
    pub(crate) fn set_route_provider(&self, f: RouteProvider) {
        if let Ok(mut p) = self.route_provider.write() {
            *p = Some(f);
        }
    }

    /// The `routes` announced in `rpc::init`.
    pub(crate) fn local_routes(&self) -> Vec<String> {
        let mut routes = self.opts.routes.clone();
        let provider = self.route_provider.read().ok().and_then(|p| p.clone());
        if let Some(f) = provider {
            routes.extend(f());
        }
        routes
    }

    /// Records uuids reachable through `peer`. A uuid that is this instance, a directly
    /// connected peer, or already reachable through another stream is refused: no peer can
    /// take over another's route.
    pub(crate) async fn add_routes(&self, peer: &Peer, routes: &[String]) {
        let via = peer.uuid();
        let mut added = Vec::new();
        {
            let streams = self.streams();
            let Ok(mut table) = self.remote_routes.write() else {
                return;
            };
            for u in routes {
                let taken = u == &self.identity.uuid
                    || u == via
                    || streams.contains_key(u)
                    || table.get(u).is_some_and(|v| v != via);
                if taken {
                    tracing::warn!(peer = %via, route = %u, "route refused: uuid already held");
                    continue;
                }
                if table.insert(u.clone(), via.to_owned()).is_none() {
                    added.push(u.clone());
                }
            }
        }
        if !added.is_empty() {
            self.emit(Event::Routes {
                peer: peer.clone(),
                online: added,
                offline: Vec::new(),
            })
            .await;
        }
    }

    pub(crate) async fn remove_route(&self, peer: &Peer, uuid: &str) {
        let removed = self.remote_routes.write().is_ok_and(|mut r| {
            if r.get(uuid).is_some_and(|v| v == peer.uuid()) {
                r.remove(uuid);
                true
            } else {
                false
            }
        });
        if removed {
            self.emit(Event::Routes {
                peer: peer.clone(),
                online: Vec::new(),
                offline: vec![uuid.to_owned()],
            })
            .await;
        }
    }

    /// The sender of a message from `peer`: `_r.uuid` when `peer` really routes that uuid (so
    /// `_r` cannot be spoofed), else the peer itself.
    pub(crate) fn sender<'a>(&self, peer: &'a Peer, routed_from: Option<&'a str>) -> &'a str {
        match routed_from {
            Some(u) if self.route_via_uuid(u).as_deref() == Some(peer.uuid()) => u,
            _ => peer.uuid(),
        }
    }

    fn route_via_uuid(&self, uuid: &str) -> Option<String> {
        self.remote_routes
            .read()
            .ok()
            .and_then(|r| r.get(uuid).cloned())
    }

    /// Routes known: `(uuid, uuid of the stream it is reachable through)`.
    pub(crate) fn route_table(&self) -> Vec<(String, String)> {
        self.remote_routes
            .read()
            .map(|r| r.iter().map(|(a, b)| (a.clone(), b.clone())).collect())
            .unwrap_or_default()
    }

    /// The stream for `uuid` and whether it is routed (then messages need `_uuid`).
    fn target(&self, uuid: &str) -> Option<(Arc<Stream>, bool)> {
        if let Some(s) = self.stream(uuid) {
            return Some((s, false));
        }
        let via = self.route_via_uuid(uuid)?;
        self.stream(&via).map(|s| (s, true))
    }

    pub(crate) fn stream(&self, uuid: &str) -> Option<Arc<Stream>> {
        self.streams().get(uuid).cloned()
    }

    pub(crate) fn peers(&self) -> Vec<Peer> {
        self.streams().values().map(|s| s.peer.clone()).collect()
    }

    pub(crate) fn is_connected(&self) -> bool {
        !self.streams().is_empty()
    }

    pub(crate) fn stats(&self) -> Stats {
        let streams = self.all_streams();
        Stats {
            connections: self.connections.load(Ordering::SeqCst),
            unauthenticated: self.unauthenticated.load(Ordering::SeqCst),
            streams: streams.len(),
            pending: streams.iter().map(|s| s.lock_pending().len()).sum(),
            queued_bytes: streams
                .iter()
                .map(|s| s.queued.load(Ordering::Relaxed))
                .sum(),
            tasks: self.live_tasks.load(Ordering::SeqCst),
        }
    }

    /// Every authenticated stream, those set aside by a newer one with the same uuid too.
    pub(crate) fn all_streams(&self) -> Vec<Arc<Stream>> {
        let streams = self.streams();
        let mut all: Vec<Arc<Stream>> = streams.values().cloned().collect();
        all.extend(self.older().values().flatten().cloned());
        all
    }

    // ---- sending ---------------------------------------------------------------------------

    /// Sends to every stream; `Err(NotConnected)` when there is none.
    pub(crate) fn dispatch(&self, msg: &Message) -> Result<usize> {
        // Sending only queues (it never waits), so it runs under the read lock: no Vec of
        // streams per message.
        let streams = self.streams();
        if streams.is_empty() {
            return Err(Error::NotConnected {
                req: Some(msg.text().clone()),
            });
        }
        Ok(streams
            .values()
            .filter(|s| s.send(msg.text().clone()).is_ok())
            .count())
    }

    /// Sends to the peer `uuid`, directly or through the router that reaches it (adding
    /// `_uuid` so the router can deliver it).
    pub(crate) fn dispatch_to(&self, uuid: &str, msg: &Message) -> Result<()> {
        let (s, routed) = self
            .target(uuid)
            .ok_or_else(|| Error::NoSuchStream(uuid.to_owned()))?;
        if routed {
            s.send(Arc::from(addressed(msg.as_str(), uuid)?))
        } else {
            s.send(msg.text().clone())
        }
    }

    /// The stream a request without uuid goes to: exactly one must be connected.
    fn only_stream(&self, msg: &Message) -> Result<Arc<Stream>> {
        let streams = self.streams();
        match streams.len() {
            0 => Err(Error::NotConnected {
                req: Some(msg.text().clone()),
            }),
            1 => streams
                .values()
                .next()
                .cloned()
                .ok_or(Error::NotConnected { req: None }),
            _ => Err(Error::MultipleStreams {
                req: msg.text().clone(),
            }),
        }
    }

    /// Sends a request and waits for its single settlement.
    pub(crate) async fn request(&self, uuid: Option<&str>, msg: &Message) -> Result<Response> {
        self.request_with(uuid, msg, None).await
    }

    /// A request with an explicit timeout (else `op_timeout`, else the `timeout` option).
    pub(crate) async fn request_with(
        &self,
        uuid: Option<&str>,
        msg: &Message,
        timeout: Option<Duration>,
    ) -> Result<Response> {
        self.request_answer(uuid, msg, timeout)
            .await
            .and_then(Response::checked)
    }

    /// [`Engine::request_with`] whose answer comes back whole, `err` included.
    pub(crate) async fn request_answer(
        &self,
        uuid: Option<&str>,
        msg: &Message,
        timeout: Option<Duration>,
    ) -> Result<Response> {
        if self.shutdown.is_triggered() {
            return Err(Error::Closed);
        }
        let (stream, routed) = match uuid {
            Some(u) => self
                .target(u)
                .ok_or_else(|| Error::NoSuchStream(u.to_owned()))?,
            None => (self.only_stream(msg)?, false),
        };
        let addressed_body;
        let body = match (routed, uuid) {
            (true, Some(u)) => {
                addressed_body = addressed(msg.as_str(), u)?;
                addressed_body.as_str()
            }
            _ => msg.as_str(),
        };
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        let timeout_ms = timeout
            .map(ms)
            .or_else(|| msg.op_timeout())
            .unwrap_or_else(|| ms(self.opts.timeout));
        let id = request_id();
        let (tx, rx) = oneshot::channel();
        {
            let mut p = stream.lock_pending();
            if p.len() >= stream.max_pending {
                return Err(Error::LimitExceeded(format!(
                    "{} requests already pending on this stream",
                    stream.max_pending
                )));
            }
            p.seq += 1;
            let key = (Instant::now() + Duration::from_millis(timeout_ms), p.seq);
            let earliest = p.next_deadline().is_none_or(|d| key.0 < d);
            p.deadlines.insert(key, id.clone());
            p.map.insert(
                id.clone(),
                PendingEntry {
                    req: msg.text().clone(),
                    timeout_ms,
                    key,
                    tx,
                },
            );
            if earliest {
                stream.pending_changed.notify_one();
            }
        }
        let mut guard = PendingGuard {
            stream: &stream,
            id: &id,
            armed: true,
        };
        let mut text = String::with_capacity(body.len() + id.len() + 20);
        text.push_str("{\"_req\":\"");
        text.push_str(&id);
        text.push_str("\",\"req\":");
        text.push_str(body);
        text.push('}');
        stream.send(Arc::from(text))?;
        let result = rx.await.unwrap_or(Err(Error::Disconnected {
            req: msg.text().clone(),
        }));
        // Whatever settled it (answer, timeout, close) removed the entry first.
        guard.armed = false;
        result
    }

    // ---- receiving -------------------------------------------------------------------------

    fn passes_filters(&self, msg: &Message, peer: &Peer) -> std::result::Result<(), Value> {
        let filters = self.handlers().filters.clone();
        for (_, f) in filters.iter() {
            f(msg, peer)?;
        }
        Ok(())
    }

    pub(crate) async fn on_event(&self, msg: Message, uuid: &str, peer: &Peer) {
        if self.passes_filters(&msg, peer).is_err() {
            return;
        }
        let (digests, listeners) = {
            let h = self.handlers();
            let l = msg.op().and_then(|op| h.listeners.get(op).cloned());
            (h.digests.clone(), l)
        };
        for (_, d) in digests.iter() {
            d(&msg, uuid, peer);
        }
        if let Some(ls) = listeners {
            for (_, l) in ls.iter() {
                l(&msg, uuid, peer);
            }
        }
        if !self.has_receiver() {
            return;
        }
        self.emit(Event::Message {
            msg,
            uuid: uuid.to_owned(),
            peer: peer.clone(),
        })
        .await;
    }

    pub(crate) async fn on_request(
        &self,
        stream: &Arc<Stream>,
        id: &RawValue,
        msg: Message,
        uuid: String,
    ) {
        let peer = stream.peer.clone();
        let mut responder = Responder {
            stream: Some(stream.clone()),
            id: id.to_owned(),
            op: msg.op().map(str::to_owned),
        };
        if let Err(refused) = self.passes_filters(&msg, &peer) {
            responder.send(Some(&refused.to_string()), None);
            return;
        }
        let handlers = msg
            .op()
            .and_then(|op| self.handlers().requests.get(op).cloned());
        match handlers.as_deref().map(Vec::as_slice) {
            Some([(_, h)]) => {
                // Polled once here, on the stream's reader: a handler that answers at once
                // costs no task, and its answer leaves with the others of this read. One that
                // has to wait goes on in a task of its own.
                // A handler that panics is answered with an error; the stream goes on.
                let req = Request { msg, uuid, peer };
                let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(req)));
                let Ok(mut fut) = made else {
                    responder.respond(Err(serde_json::json!({
                        "error": "the request handler panicked"
                    })));
                    return;
                };
                let first = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(match poll_catching(fut.as_mut(), cx) {
                        std::task::Poll::Ready(v) => Some(v),
                        std::task::Poll::Pending => None,
                    })
                })
                .await;
                match first {
                    Some(result) => responder.respond(result),
                    None => {
                        tokio::spawn(async move {
                            let result =
                                std::future::poll_fn(|cx| poll_catching(fut.as_mut(), cx)).await;
                            responder.respond(result);
                        });
                    }
                }
            }
            Some([_, _, ..]) => {
                let op = msg.op().unwrap_or_default();
                let err = serde_json::json!({ "error": format!("Too many handlers for '{op}'") });
                responder.send(Some(&err.to_string()), None);
            }
            _ => {
                if self.has_receiver() {
                    self.emit(Event::Request(IncomingRequest {
                        msg,
                        uuid,
                        peer,
                        responder,
                    }))
                    .await;
                }
                // Without a sink, dropping the responder answers "No such handler".
            }
        }
    }

    // ---- lifecycle -------------------------------------------------------------------------

    pub(crate) fn task_started(&self) {
        self.live_tasks.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn task_finished(&self) {
        if self.live_tasks.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.tasks_done.notify_waiters();
        }
    }

    /// Stops everything: no new connections, every stream closed, every pending request
    /// settled with [`Error::Closed`], then the event receiver ends.
    pub(crate) async fn close(&self) {
        self.shutdown.trigger();
        for s in self.all_streams() {
            s.fail_pending(true);
            s.close("closed locally");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let done = self.tasks_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.live_tasks.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                break;
            }
        }
        self.closed_events.store(true, Ordering::SeqCst);
        if let Ok(mut e) = self.events.lock() {
            *e = None;
        }
    }
}

/// `text` with `_uuid` set to `uuid`, for a peer reached through a router.
fn addressed(text: &str, uuid: &str) -> Result<String> {
    crate::protocol::message::rewrite(text, &[], &[("_uuid", Value::String(uuid.to_owned()))])
        .map_err(|e| Error::Config(e.to_string()))
}

/// Removes a pending entry if the request future is dropped before it settles.
struct PendingGuard<'a> {
    stream: &'a Arc<Stream>,
    id: &'a str,
    /// Cleared once the request settled: its entry is gone already.
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.stream.lock_pending().take(self.id);
        }
    }
}
