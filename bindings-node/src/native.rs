//! `NativePeer`: one core [`Client`] or [`Server`] behind a JavaScript object, and the pump
//! that carries its events to JavaScript in batches.
//!
//! Threads: everything runs on the core's shared runtime ([`iris_rpc::runtime::get`]); napi's
//! own tokio runtime is not used. JavaScript is reached only through one non-blocking
//! ThreadsafeFunction per object, owned by the pump task. The function is referenced (keeps
//! Node's event loop alive) while the object is open, and released when the pump ends, which
//! happens once the object is closed and every request it started has settled, so `node`
//! exits by itself after `close()`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use iris_rpc::{
    Client, Error, Event, Events, Message, Options, Peer, RawReply, Responder, Response, Server,
};
use napi::bindgen_prelude::{Function, Status};
use napi::threadsafe_function::{
    ThreadsafeFunction, ThreadsafeFunctionCallMode, UnknownReturnValue,
};
use napi_derive::napi;
use tokio::sync::{mpsc, Semaphore};

use crate::batch::{self, Batch};

/// The most events (or settled requests) put into one batch.
const MAX_BATCH: usize = 1024;
/// Batches handed to JavaScript and not yet processed there. Waiting for a free slot is the
/// back-pressure: while JavaScript is busy the pump stops draining the core's event queue,
/// which in turn pauses reading from peers instead of buffering without bound.
const IN_FLIGHT: usize = 4;

pub(crate) type BatchFn =
    ThreadsafeFunction<String, UnknownReturnValue, String, Status, false, false, 0>;

enum Role {
    Client(Client),
    /// Set once the asynchronous bind has succeeded.
    Server(OnceLock<Server>),
}

/// Runs `$body` with `$x` bound to the Client or the bound Server, else evaluates `$none`.
macro_rules! with_api {
    ($role:expr, |$x:ident| $body:expr, $none:expr) => {
        match $role {
            Role::Client($x) => $body,
            Role::Server(cell) => match cell.get() {
                Some($x) => $body,
                None => $none,
            },
        }
    };
}

enum Settled {
    Request {
        call: u32,
        result: Result<Response, Error>,
    },
    Closed,
}

/// Authenticated streams by the small ids JavaScript knows them by.
#[derive(Default)]
struct Streams {
    next: u32,
    by_id: HashMap<u32, Peer>,
    by_uuid: HashMap<String, Vec<u32>>,
}

impl Streams {
    fn add(&mut self, peer: Peer) -> u32 {
        self.next = self.next.wrapping_add(1);
        let id = self.next;
        self.by_uuid
            .entry(peer.uuid().to_owned())
            .or_default()
            .push(id);
        self.by_id.insert(id, peer);
        id
    }

    fn find(&self, peer: &Peer) -> Option<u32> {
        self.by_uuid
            .get(peer.uuid())?
            .iter()
            .copied()
            .find(|id| self.by_id.get(id).is_some_and(|p| p.same_stream(peer)))
    }

    /// The id of `peer`, registering it if the Connect event was never seen.
    fn id_of(&mut self, peer: &Peer) -> u32 {
        match self.find(peer) {
            Some(id) => id,
            None => self.add(peer.clone()),
        }
    }

    fn remove(&mut self, peer: &Peer) -> Option<u32> {
        let id = self.find(peer)?;
        self.by_id.remove(&id);
        if let Some(ids) = self.by_uuid.get_mut(peer.uuid()) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_uuid.remove(peer.uuid());
            }
        }
        Some(id)
    }
}

#[derive(Default)]
struct Responders {
    next: u32,
    /// Request id -> (stream id, responder).
    open: HashMap<u32, (u32, Responder)>,
}

struct Shared {
    role: Role,
    streams: Mutex<Streams>,
    responders: Mutex<Responders>,
    /// Dropped by `close()` (or a failed bind): the pump ends once every clone is gone too.
    settled_tx: Mutex<Option<mpsc::UnboundedSender<Settled>>>,
    closing: AtomicBool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn js_error(e: &Error) -> napi::Error {
    napi::Error::new(
        Status::GenericFailure,
        format!("{}: {e}", e.kind().as_str()),
    )
}

pub(crate) fn runtime() -> napi::Result<Arc<tokio::runtime::Runtime>> {
    crate::init_logging();
    iris_rpc::runtime::get().map_err(|e| js_error(&e))
}

pub(crate) fn parse_options(json: &str) -> napi::Result<Options> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        napi::Error::new(
            Status::InvalidArg,
            format!("config: options are not JSON: {e}"),
        )
    })?;
    Options::from_json(&v).map_err(|e| js_error(&e))
}

fn message(json: &str) -> napi::Result<Message> {
    Message::from_json(json).map_err(|e| js_error(&e))
}

pub(crate) fn batch_fn(
    on_batch: &Function<'_, String, UnknownReturnValue>,
) -> napi::Result<BatchFn> {
    on_batch
        .build_threadsafe_function::<String>()
        .callee_handled::<false>()
        .build()
}

/// A core Client or Server as the JavaScript `Client`/`Server` classes use it.
#[napi]
pub struct NativePeer {
    shared: Arc<Shared>,
}

#[napi]
impl NativePeer {
    /// Starts a client (it connects and reconnects by itself). `onBatch(text)` receives the
    /// batches described in `batch.rs`.
    #[napi(factory, catch_unwind)]
    pub fn client(
        options_json: String,
        on_batch: Function<'_, String, UnknownReturnValue>,
    ) -> napi::Result<NativePeer> {
        let opts = parse_options(&options_json)?;
        let rt = runtime()?;
        let client = {
            let _guard = rt.enter();
            Client::connect(opts).map_err(|e| js_error(&e))?
        };
        // Taken at once, so that no event is emitted before there is a receiver for it.
        let events = client.events();
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            role: Role::Client(client),
            streams: Mutex::default(),
            responders: Mutex::default(),
            settled_tx: Mutex::new(Some(tx)),
            closing: AtomicBool::new(false),
        });
        let tsfn = batch_fn(&on_batch)?;
        rt.spawn(pump(shared.clone(), Some(events), rx, tsfn, Batch::new()));
        Ok(NativePeer { shared })
    }

    /// Starts binding a server; the outcome arrives as the batch's listen entry.
    #[napi(factory, catch_unwind)]
    pub fn server(
        options_json: String,
        on_batch: Function<'_, String, UnknownReturnValue>,
    ) -> napi::Result<NativePeer> {
        let opts = parse_options(&options_json)?;
        let rt = runtime()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            role: Role::Server(OnceLock::new()),
            streams: Mutex::default(),
            responders: Mutex::default(),
            settled_tx: Mutex::new(Some(tx)),
            closing: AtomicBool::new(false),
        });
        let tsfn = batch_fn(&on_batch)?;
        rt.spawn(bind_then_pump(shared.clone(), opts, rx, tsfn));
        Ok(NativePeer { shared })
    }

    /// Sends a message (JSON object text) to every connected stream; returns how many.
    #[napi(catch_unwind)]
    pub fn dispatch(&self, msg_json: String) -> napi::Result<u32> {
        let msg = message(&msg_json)?;
        let sent = with_api!(&self.shared.role, |x| x.dispatch(msg), Ok(0));
        match sent {
            Ok(n) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(Error::NotConnected { .. }) => Ok(0),
            Err(e) => Err(js_error(&e)),
        }
    }

    /// Sends a message to the stream of peer `uuid`; false when there is no such stream.
    #[napi(catch_unwind)]
    pub fn dispatch_to(&self, uuid: String, msg_json: String) -> napi::Result<bool> {
        let msg = message(&msg_json)?;
        let sent = with_api!(
            &self.shared.role,
            |x| x.dispatch_to(&uuid, msg),
            Err(Error::NoSuchStream(uuid.clone()))
        );
        match sent {
            Ok(()) => Ok(true),
            Err(Error::NoSuchStream(_)) | Err(Error::NotConnected { .. }) => Ok(false),
            Err(e) => Err(js_error(&e)),
        }
    }

    /// True when peer `uuid` is reachable: a stream of its own or a route through a peer (a
    /// router).
    #[napi(catch_unwind)]
    pub fn reaches(&self, uuid: String) -> bool {
        with_api!(
            &self.shared.role,
            |x| x.peers().iter().any(|p| p.uuid() == uuid)
                || x.routes().iter().any(|(u, _)| *u == uuid),
            false
        )
    }

    /// Sends a request; its outcome arrives as a settled entry carrying `call`.
    #[napi(catch_unwind)]
    pub fn request(&self, call: u32, uuid: Option<String>, msg_json: String) -> napi::Result<()> {
        let msg = message(&msg_json)?;
        let tx = lock(&self.shared.settled_tx)
            .clone()
            .ok_or_else(|| js_error(&Error::Closed))?;
        // Sent here, on the JS thread, so it keeps its place among this caller's sends (legacy
        // writes each message in the call); only the wait for the answer is spawned.
        let reply = with_api!(
            &self.shared.role,
            |x| x.request_answer(uuid.as_deref(), &msg),
            RawReply::failed(Error::NotConnected {
                req: Some(msg.text().clone())
            })
        );
        runtime()?.spawn(async move {
            let result = reply.await;
            let _ = tx.send(Settled::Request { call, result });
        });
        Ok(())
    }

    /// Answers incoming request `rid` with JSON texts, an absent one left out of the answer
    /// as legacy's `JSON.stringify` leaves out `undefined` (`cb()` is `{"_resp":ID}`). Unknown
    /// or already answered ids are ignored.
    #[napi(catch_unwind)]
    pub fn respond(&self, rid: u32, err_json: Option<String>, resp_json: Option<String>) {
        let responder = lock(&self.shared.responders).open.remove(&rid);
        if let Some((_, r)) = responder {
            r.respond_exact(err_json.as_deref(), resp_json.as_deref());
        }
    }

    /// Closes one stream (legacy `stream.end()`).
    #[napi(catch_unwind)]
    pub fn end_stream(&self, sid: u32) {
        if let Some(p) = lock(&self.shared.streams).by_id.get(&sid) {
            p.end();
        }
    }

    /// Server: stops accepting connections, keeping the streams that are up (legacy
    /// `tlsServer.close()`). False when this is not a bound server.
    #[napi(catch_unwind)]
    pub fn stop_listening(&self) -> bool {
        match &self.shared.role {
            Role::Server(cell) => cell.get().map(|s| s.stop_listening()).is_some(),
            Role::Client(_) => false,
        }
    }

    /// True while any stream is authenticated and up.
    #[napi(catch_unwind)]
    pub fn is_connected(&self) -> bool {
        with_api!(&self.shared.role, |x| x.is_connected(), false)
    }

    /// Closes everything; the closed entry follows once it is done. Idempotent.
    #[napi(catch_unwind)]
    pub fn close(&self) -> napi::Result<()> {
        if self.shared.closing.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let shared = self.shared.clone();
        runtime()?.spawn(async move {
            with_api!(&shared.role, |x| x.close().await, ());
            lock(&shared.responders).open.clear();
            let tx = lock(&shared.settled_tx).take();
            if let Some(tx) = tx {
                let _ = tx.send(Settled::Closed);
            }
        });
        Ok(())
    }
}

async fn bind_then_pump(
    shared: Arc<Shared>,
    opts: Options,
    rx: mpsc::UnboundedReceiver<Settled>,
    tsfn: BatchFn,
) {
    let mut first = Batch::new();
    let Role::Server(cell) = &shared.role else {
        return;
    };
    match Server::bind(opts).await {
        Ok(server) => {
            let events = server.events();
            let address = server.local_addr().to_string();
            let _ = cell.set(server);
            first.begin(batch::LISTEN).raw("null").str(&address).end();
            // close() may have run before the server was stored; it could not close it then.
            if shared.closing.load(Ordering::SeqCst) {
                if let Some(s) = cell.get() {
                    s.close().await;
                }
            }
            pump(shared.clone(), Some(events), rx, tsfn, first).await;
        }
        Err(e) => {
            first.begin(batch::LISTEN).error(&e).end();
            // Nothing is open: let the pump end (and Node exit) once requests have settled.
            lock(&shared.settled_tx).take();
            pump(shared.clone(), None, rx, tsfn, first).await;
        }
    }
}

async fn next_events(events: &mut Option<Events>, out: &mut Vec<Event>) -> usize {
    match events {
        Some(e) => e.next_batch(out, MAX_BATCH).await,
        None => std::future::pending().await,
    }
}

async fn pump(
    shared: Arc<Shared>,
    mut events: Option<Events>,
    mut settled: mpsc::UnboundedReceiver<Settled>,
    tsfn: BatchFn,
    mut batch: Batch,
) {
    // A stream that authenticated before `events()` was called (the native thread can be
    // descheduled right after connect or bind) is announced all the same: the core's receiver
    // starts with a `Connect` for each stream already up.
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut evbuf: Vec<Event> = Vec::with_capacity(MAX_BATCH);
    let mut setbuf: Vec<Settled> = Vec::with_capacity(MAX_BATCH);
    let mut settled_open = true;
    loop {
        if batch.is_empty() {
            if events.is_none() && !settled_open {
                break;
            }
            tokio::select! {
                n = next_events(&mut events, &mut evbuf), if events.is_some() => {
                    if n == 0 {
                        events = None;
                    }
                }
                n = settled.recv_many(&mut setbuf, MAX_BATCH), if settled_open => {
                    if n == 0 {
                        settled_open = false;
                    }
                }
            }
        }
        // Whatever else is ready right now joins the same batch.
        if let Some(ev) = events.as_mut() {
            while evbuf.len() < MAX_BATCH {
                match ev.try_next() {
                    Some(e) => evbuf.push(e),
                    None => break,
                }
            }
        }
        while setbuf.len() < MAX_BATCH {
            match settled.try_recv() {
                Ok(s) => setbuf.push(s),
                Err(_) => break,
            }
        }
        if !evbuf.is_empty() {
            encode_events(&shared, evbuf.drain(..), &mut batch);
        }
        for s in setbuf.drain(..) {
            encode_settled(s, &mut batch);
        }
        if batch.is_empty() {
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let status = tsfn.call_with_return_value(
            batch.take(),
            ThreadsafeFunctionCallMode::NonBlocking,
            move |_, _| {
                drop(permit);
                Ok(())
            },
        );
        if status != Status::Ok {
            // Node is shutting down: nobody is left to deliver to.
            break;
        }
    }
    // Dropping the function releases it: it no longer keeps Node's event loop alive.
    drop(tsfn);
}

fn encode_events(shared: &Shared, evs: impl Iterator<Item = Event>, b: &mut Batch) {
    let mut streams = lock(&shared.streams);
    for ev in evs {
        match ev {
            // A Connect for a stream already announced (see `pump`) falls through, skipped.
            Event::Connect { peer } if streams.find(&peer).is_none() => {
                encode_connect(&mut streams, peer, b);
            }
            Event::Disconnect { peer, reason } => {
                let Some(sid) = streams.remove(&peer) else {
                    continue;
                };
                // Requests from that stream can no longer be answered.
                lock(&shared.responders).open.retain(|_, (s, _)| *s != sid);
                b.begin(batch::DISCONNECT)
                    .num(sid.into())
                    .str(&reason)
                    .end();
            }
            Event::Message { msg, uuid, peer } => {
                let sid = streams.id_of(&peer);
                b.begin(batch::MESSAGE)
                    .num(sid.into())
                    .str(&uuid)
                    .raw(msg.as_str())
                    .end();
            }
            Event::Request(req) => {
                let (msg, uuid, peer, responder) = req.into_parts();
                let sid = streams.id_of(&peer);
                let rid = {
                    let mut r = lock(&shared.responders);
                    r.next = r.next.wrapping_add(1);
                    let rid = r.next;
                    r.open.insert(rid, (sid, responder));
                    rid
                };
                b.begin(batch::REQUEST)
                    .num(sid.into())
                    .num(rid.into())
                    .str(&uuid)
                    .raw(msg.as_str())
                    .end();
            }
            Event::Error { error, address } => {
                b.begin(batch::CONN_ERROR)
                    .error(&error)
                    .opt_str(address.as_deref())
                    .end();
            }
            // Listen is reported by the bind task, which knows the address first.
            _ => {}
        }
    }
}

fn encode_connect(streams: &mut Streams, peer: Peer, b: &mut Batch) {
    let sid = streams.add(peer.clone());
    b.begin(batch::CONNECT)
        .num(sid.into())
        .str(peer.uuid())
        .str(peer.address())
        .opt_str(peer.designation())
        .opt_str(peer.mac())
        .raw(if peer.cipher() { "true" } else { "false" })
        .str(peer.mode().as_str())
        .end();
}

fn encode_settled(s: Settled, b: &mut Batch) {
    match s {
        Settled::Request { call, result } => {
            b.begin(batch::SETTLED).num(call.into());
            match result {
                Ok(answer) => b.num(1).answer(answer.sent_err(), answer.sent_resp()),
                Err(e) => b.num(0).error(&e),
            };
            b.end();
        }
        Settled::Closed => b.begin(batch::CLOSED).end(),
    }
}
