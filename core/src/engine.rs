//! The shared engine behind [`crate::Client`] and [`crate::Server`]: what one instance holds
//! and its lifecycle. Connections feed it; it never touches sockets itself.
//!
//! The jobs live in files of their own, each an `impl Engine` block: `streams.rs` (who holds
//! which uuid), `routes.rs` (uuids reachable through peers), `dispatch.rs` (sending, requests),
//! `delivery.rs` (what arrives), `handlers.rs` (what users registered).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::error::Result;
use crate::event::{Event, Events};
use crate::handlers::Handlers;
use crate::message::Message;
use crate::options::Options;
use crate::peer::Peer;
use crate::protocol::{Identity, Keys};
use crate::route_table::RouteTable;
use crate::routes::RouteProvider;
use crate::shutdown::Shutdown;
use crate::stream::Stream;

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
    /// Bytes their line buffers hold (against `max_unauthenticated_bytes`).
    pub unauthenticated_bytes: usize,
    /// Authenticated streams.
    pub streams: usize,
    /// Requests awaiting an answer, over all streams.
    pub pending: usize,
    /// Bytes queued for writing, over all streams.
    pub queued_bytes: usize,
    /// Background tasks alive (accept loop, connections, reconnect loops, pinger).
    pub tasks: usize,
}

/// The event receiver, if one is installed, and its generation: each new receiver is told of
/// the streams already up, once (see [`Engine::events`]).
#[derive(Default)]
pub(crate) struct EventSink {
    tx: Option<mpsc::Sender<Event>>,
    generation: u64,
}

pub(crate) struct Engine {
    pub(crate) opts: Options,
    pub(crate) identity: Identity,
    pub(crate) keys: Arc<Keys>,
    /// Authenticated streams by uuid (see `streams.rs`).
    pub(crate) streams: RwLock<HashMap<String, Arc<Stream>>>,
    /// Streams set aside by a newer stream with the same uuid (oldest first), still connected.
    pub(crate) older: Mutex<HashMap<String, Vec<Arc<Stream>>>>,
    /// Uuids reachable through a stream (`rpc::online`, `routes`), mapped to that stream's uuid.
    pub(crate) remote_routes: RwLock<RouteTable>,
    /// Extra uuids announced as reachable through us (a router's other side).
    pub(crate) route_provider: RwLock<Option<RouteProvider>>,
    pub(crate) handlers: Handlers,
    events: Mutex<EventSink>,
    ping_data: RwLock<Option<Value>>,
    pub(crate) shutdown: Shutdown,
    pub(crate) live_tasks: AtomicUsize,
    pub(crate) tasks_done: Notify,
    pub(crate) unauthenticated: AtomicUsize,
    pub(crate) unauthenticated_bytes: AtomicUsize,
    pub(crate) connections: AtomicUsize,
    /// Legacy peers already warned about (bounded by [`LEGACY_WARNED_MAX`]).
    legacy_warned: Mutex<HashSet<String>>,
}

/// How many legacy peers' uuids are remembered so each is warned about once.
const LEGACY_WARNED_MAX: usize = 4096;

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
        let engine = Arc::new(Engine {
            opts,
            identity,
            keys,
            streams: RwLock::new(HashMap::new()),
            older: Mutex::new(HashMap::new()),
            remote_routes: RwLock::new(RouteTable::default()),
            route_provider: RwLock::new(None),
            handlers: Handlers::default(),
            events: Mutex::new(EventSink::default()),
            ping_data,
            shutdown: Shutdown::default(),
            live_tasks: AtomicUsize::new(0),
            tasks_done: Notify::new(),
            unauthenticated: AtomicUsize::new(0),
            unauthenticated_bytes: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            legacy_warned: Mutex::new(HashSet::new()),
        });
        crate::metrics::track(&engine);
        Ok(engine)
    }

    // ---- events ----------------------------------------------------------------------------

    fn sink(&self) -> std::sync::MutexGuard<'_, EventSink> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs a new event receiver (replacing any other). It starts with a `Connect` for
    /// each stream already up, so a receiver installed after streams came up misses none and
    /// sees none twice; every stream it saw connect, it sees disconnect exactly once. This is
    /// the one place that makes up for streams that came up early: adapters rely on it.
    pub(crate) fn events(&self) -> Events {
        let mut sink = self.sink();
        let streams = self.all_streams();
        // Room for every replayed `Connect`, whatever the queue's configured size.
        let (tx, rx) = mpsc::channel(self.opts.limits.event_queue.max(streams.len() + 1));
        if self.shutdown.is_triggered() {
            sink.tx = None;
            return Events { rx };
        }
        sink.generation += 1;
        let generation = sink.generation;
        for s in streams {
            if s.announced.swap(generation, Ordering::SeqCst) != generation {
                let _ = tx.try_send(Event::Connect {
                    peer: s.peer.clone(),
                });
            }
        }
        sink.tx = Some(tx);
        Events { rx }
    }

    pub(crate) fn has_receiver(&self) -> bool {
        self.sink().tx.is_some()
    }

    /// Queues an event for the receiver; waits while its queue is full (backpressure), but
    /// never past close.
    pub(crate) async fn emit(&self, ev: Event) {
        let tx = self.sink().tx.clone();
        let Some(tx) = tx else { return };
        self.send_event(tx, ev).await;
    }

    async fn send_event(&self, tx: mpsc::Sender<Event>, ev: Event) {
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

    /// Tells the receiver that `stream` is up, unless it was told already (see
    /// [`Engine::events`]).
    pub(crate) async fn announce_connect(&self, stream: &Stream) {
        let tx = {
            let sink = self.sink();
            match &sink.tx {
                Some(tx)
                    if stream.announced.swap(sink.generation, Ordering::SeqCst)
                        != sink.generation =>
                {
                    Some(tx.clone())
                }
                _ => None,
            }
        };
        if let Some(tx) = tx {
            self.send_event(
                tx,
                Event::Connect {
                    peer: stream.peer.clone(),
                },
            )
            .await;
        }
    }

    /// Tells the receiver that `stream` (unregistered already) is gone, if that receiver was
    /// told it was up.
    pub(crate) async fn announce_disconnect(&self, stream: &Stream, reason: String) {
        let tx = {
            let sink = self.sink();
            match &sink.tx {
                Some(tx) if stream.announced.swap(0, Ordering::SeqCst) == sink.generation => {
                    Some(tx.clone())
                }
                _ => None,
            }
        };
        if let Some(tx) = tx {
            self.send_event(
                tx,
                Event::Disconnect {
                    peer: stream.peer.clone(),
                    reason,
                },
            )
            .await;
        }
    }

    // ---- ping ------------------------------------------------------------------------------

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

    // ---- resources and lifecycle -----------------------------------------------------------

    pub(crate) fn stats(&self) -> Stats {
        let streams = self.all_streams();
        Stats {
            connections: self.connections.load(Ordering::SeqCst),
            unauthenticated: self.unauthenticated.load(Ordering::SeqCst),
            unauthenticated_bytes: self.unauthenticated_bytes.load(Ordering::SeqCst),
            streams: streams.len(),
            pending: streams.iter().map(|s| s.pending().len()).sum(),
            queued_bytes: streams
                .iter()
                .map(|s| s.queued.load(Ordering::Relaxed))
                .sum(),
            tasks: self.live_tasks.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn task_started(&self) {
        self.live_tasks.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn task_finished(&self) {
        if self.live_tasks.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.tasks_done.notify_waiters();
        }
    }

    /// Stops everything: no new connections, every stream closed, every pending request
    /// settled with [`crate::Error::Closed`] (and every later one refused), then the event
    /// receiver ends.
    pub(crate) async fn close(&self) {
        self.shutdown.trigger();
        for s in self.all_streams() {
            s.close_pending(true);
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
        self.sink().tx = None;
    }
}
