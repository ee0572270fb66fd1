//! `iris_rpc._native`: the pyo3 module under the Python package `iris_rpc`.
//!
//! It only translates: options arrive as legacy option JSON, message bodies cross as JSON text
//! (parsed by CPython's `json`), and everything the core reports (events, incoming requests,
//! answers to asynchronous requests) is pulled in batches by one Python thread through
//! `Native.next_batch`, with the GIL released while it waits. Rust never calls into Python
//! from the runtime's threads, so a busy interpreter cannot stall the network.

mod logs;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use iris_rpc::{
    Backend, Client, Error, Event, Events, Message, Options, Peer, RawReply, Response, Router,
    RouterEvent, Server, Side,
};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::IntoPyObjectExt;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// How often a blocking wait wakes up to let Python run its signal handlers (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// Item tags of [`Native::next_batch`]; mirrored in `python/iris_rpc/_native.pyi`.
const EV_LISTEN: u8 = 0;
const EV_CONNECT: u8 = 1;
const EV_DISCONNECT: u8 = 2;
const EV_MESSAGE: u8 = 3;
const EV_REQUEST: u8 = 4;
const EV_ERROR: u8 = 5;
const EV_DONE: u8 = 6;

/// Item tags of [`NativeRouter::next_batch`]; mirrored in `python/iris_rpc/_native.pyi`.
const RT_CONNECT: u8 = 0;
const RT_DISCONNECT: u8 = 1;
const RT_REFUSED: u8 = 2;
const RT_ERROR: u8 = 3;

/// The Python callable `(kind, message, value_json) -> exception` set by the package.
static ERROR_FACTORY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Builds the Python exception for a core error through the registered factory.
fn error_to_py(py: Python<'_>, e: &Error) -> PyErr {
    let value = match e {
        Error::Remote(text) => text.to_string(),
        other => other.to_legacy_value().to_string(),
    };
    error_parts_to_py(py, e.kind().as_str(), &e.to_string(), &value)
}

fn error_parts_to_py(py: Python<'_>, kind: &str, message: &str, value: &str) -> PyErr {
    match ERROR_FACTORY.get(py) {
        Some(factory) => match factory.bind(py).call1((kind, message, value)) {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        },
        None => PyRuntimeError::new_err(format!("{kind}: {message}")),
    }
}

fn config_error(py: Python<'_>, message: String) -> PyErr {
    error_to_py(py, &Error::Config(message))
}

fn duration_from_secs(py: Python<'_>, secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs.max(0.0))
        .map_err(|_| config_error(py, format!("invalid duration {secs} s")))
}

/// The wrapped core object: both kinds share the same API.
enum Obj {
    Client(Client),
    Server(Server),
}

macro_rules! on_obj {
    ($obj:expr, $o:ident => $body:expr) => {
        match $obj {
            Obj::Client($o) => $body,
            Obj::Server($o) => $body,
        }
    };
}

impl Obj {
    fn events(&self) -> Events {
        on_obj!(self, o => o.events())
    }
    fn uuid(&self) -> &str {
        on_obj!(self, o => o.uuid())
    }
    fn dispatch(&self, msg: Message) -> iris_rpc::Result<usize> {
        on_obj!(self, o => o.dispatch(msg))
    }
    fn dispatch_to(&self, uuid: &str, msg: Message) -> iris_rpc::Result<()> {
        on_obj!(self, o => o.dispatch_to(uuid, msg))
    }
    /// Sends the request now (so it keeps its place among this caller's sends) and returns
    /// the future of its answer.
    fn request_raw(&self, uuid: Option<&str>, msg: &Message) -> RawReply {
        on_obj!(self, o => o.request_raw(uuid, msg))
    }
    fn peers(&self) -> Vec<Peer> {
        on_obj!(self, o => o.peers())
    }
    fn is_connected(&self) -> bool {
        on_obj!(self, o => o.is_connected())
    }
    fn stats(&self) -> iris_rpc::Stats {
        on_obj!(self, o => o.stats())
    }
    fn ping(&self) -> iris_rpc::Result<usize> {
        on_obj!(self, o => o.ping())
    }
    fn set_ping_data(&self, data: Option<serde_json::Value>) {
        on_obj!(self, o => o.set_ping_data(data))
    }
    async fn close(&self) {
        on_obj!(self, o => o.close().await)
    }
}

/// A request's answer with an optional local time limit (on top of the core's
/// `op_timeout`/`timeout`).
async fn answer_within(
    reply: RawReply,
    req: &Message,
    limit: Option<Duration>,
) -> iris_rpc::Result<Response> {
    match limit {
        None => reply.await,
        Some(d) => match tokio::time::timeout(d, reply).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                timeout_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                req: req.text().clone(),
            }),
        },
    }
}

/// What [`Native::next_batch`] drains: the core's events and the answers of
/// [`Native::request_async`] requests.
struct Inbox {
    events: Option<Events>,
    /// Events the adapter announces itself, before any other: a server's `Listen`, which the
    /// core emits before the receiver exists.
    first: Option<Vec<Event>>,
    /// The core's `Listen` is dropped when the adapter announces it.
    drop_listen: bool,
    done: mpsc::UnboundedReceiver<(u64, iris_rpc::Result<Response>)>,
    /// Answers taken by a pull that could not take every event queued before them.
    held: Vec<(u64, iris_rpc::Result<Response>)>,
}

impl Inbox {
    /// Applies `first` and `drop_listen` to a batch taken from the core.
    fn adjust(&mut self, events: &mut Vec<Event>) {
        if self.drop_listen {
            events.retain(|e| !matches!(e, Event::Listen { .. }));
        }
        if let Some(first) = self.first.take() {
            events.splice(0..0, first);
        }
    }
}

/// The sender of the last message or request converted by one `next_batch`: a batch mostly
/// holds messages from one stream, which then share one `Peer` object and one uuid string
/// instead of building both for every message.
#[derive(Default)]
struct Recent {
    last: Option<(String, Peer, Py<PyString>, Py<PyPeer>)>,
}

impl Recent {
    /// The Python uuid and peer for a message from `peer` with sender `uuid`.
    fn get(
        &mut self,
        py: Python<'_>,
        uuid: String,
        peer: Peer,
    ) -> PyResult<(Py<PyString>, Py<PyPeer>)> {
        if let Some((u, p, pu, pp)) = &self.last {
            if *u == uuid && p.same_stream(&peer) {
                return Ok((pu.clone_ref(py), pp.clone_ref(py)));
            }
        }
        let pu = PyString::new(py, &uuid).unbind();
        let pp = Py::new(py, PyPeer { peer: peer.clone() })?;
        self.last = Some((uuid, peer, pu.clone_ref(py), pp.clone_ref(py)));
        Ok((pu, pp))
    }
}

/// The other end of one authenticated stream (legacy's `stream`).
#[pyclass(module = "iris_rpc._native", name = "Peer", frozen)]
pub struct PyPeer {
    peer: Peer,
}

#[pymethods]
impl PyPeer {
    /// The peer's uuid.
    #[getter]
    fn uuid(&self) -> &str {
        self.peer.uuid()
    }

    /// The remote address, `host:port`.
    #[getter]
    fn address(&self) -> &str {
        self.peer.address()
    }

    /// The designation the peer announced.
    #[getter]
    fn designation(&self) -> Option<&str> {
        self.peer.designation()
    }

    /// The MAC the peer announced.
    #[getter]
    fn mac(&self) -> Option<&str> {
        self.peer.mac()
    }

    /// Whether lines are encrypted on this stream (the legacy cipher, or v2 records).
    #[getter]
    fn cipher(&self) -> bool {
        self.peer.cipher()
    }

    /// The session mode negotiated with this peer: "v2", or "legacy" (an iris-rpc 0.2.20 peer,
    /// or `security="legacy"` on either side).
    #[getter]
    fn mode(&self) -> &'static str {
        self.peer.mode().as_str()
    }

    /// Closes this stream (legacy `stream.end()`); a client reconnects afterwards.
    fn end(&self) {
        self.peer.end()
    }

    /// True when both values describe the same stream.
    fn same_stream(&self, other: &PyPeer) -> bool {
        self.peer.same_stream(&other.peer)
    }

    /// Equal when both describe the same stream (a reconnect is another stream).
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<PyPeer>() {
            Ok(o) => self.peer.same_stream(&o.get().peer),
            Err(_) => false,
        }
    }

    /// Consistent with `__eq__`: the same stream always has the same uuid and address.
    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.peer.uuid().hash(&mut h);
        self.peer.address().hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        format!(
            "Peer(uuid={:?}, address={:?}, designation={:?}, mode={:?})",
            self.peer.uuid(),
            self.peer.address(),
            self.peer.designation().unwrap_or(""),
            self.peer.mode().as_str()
        )
    }
}

/// Answers one incoming request exactly once. Dropped unanswered, it answers with the legacy
/// `{"error":"No such handler 'OP'"}`.
#[pyclass(module = "iris_rpc._native", frozen)]
pub struct Responder {
    inner: Mutex<Option<iris_rpc::Responder>>,
}

#[pymethods]
impl Responder {
    /// Answers with JSON texts: `err` (None for success) and `resp` (None to omit it).
    /// Returns False when the request was already answered.
    #[pyo3(signature = (err, resp))]
    fn respond(&self, err: Option<&str>, resp: Option<&str>) -> bool {
        match lock(&self.inner).take() {
            Some(r) => {
                r.respond_raw(err, resp);
                true
            }
            None => false,
        }
    }

    /// True until the request is answered.
    #[getter]
    fn pending(&self) -> bool {
        lock(&self.inner).is_some()
    }
}

/// One core `Client` or `Server` on the shared runtime.
#[pyclass(module = "iris_rpc._native", frozen)]
pub struct Native {
    rt: Arc<Runtime>,
    obj: Arc<Obj>,
    inbox: Mutex<Inbox>,
    done_tx: mpsc::UnboundedSender<(u64, iris_rpc::Result<Response>)>,
    tasks: Mutex<HashMap<u64, AbortHandle>>,
    local_addr: Option<String>,
    closed: AtomicBool,
}

impl Native {
    fn wrap(rt: Arc<Runtime>, obj: Obj, listen: Option<std::net::SocketAddr>) -> Native {
        // A loopback handshake can finish before the constructor returns: the core's receiver
        // starts with a `Connect` for each stream already up. A server's `Listen` may be gone
        // already, so it is announced here (see `Inbox::first`).
        let events = obj.events();
        let first: Vec<Event> = listen
            .map(|address| Event::Listen { address })
            .into_iter()
            .collect();
        let (done_tx, done) = mpsc::unbounded_channel();
        Native {
            rt,
            obj: Arc::new(obj),
            inbox: Mutex::new(Inbox {
                events: Some(events),
                first: Some(first),
                drop_listen: listen.is_some(),
                done,
                held: Vec::new(),
            }),
            done_tx,
            tasks: Mutex::new(HashMap::new()),
            local_addr: listen.map(|a| a.to_string()),
            closed: AtomicBool::new(false),
        }
    }

    fn message(py: Python<'_>, text: &str) -> PyResult<Message> {
        Message::from_json(text).map_err(|e| error_to_py(py, &e))
    }

    fn options(py: Python<'_>, options_json: &str) -> PyResult<Options> {
        let v: serde_json::Value = serde_json::from_str(options_json)
            .map_err(|e| config_error(py, format!("options are not valid JSON: {e}")))?;
        Options::from_json(&v).map_err(|e| error_to_py(py, &e))
    }

    fn event_to_py(py: Python<'_>, ev: Event, recent: &mut Recent) -> PyResult<Option<Py<PyAny>>> {
        let peer = |p: Peer| PyPeer { peer: p };
        let item = match ev {
            Event::Listen { address } => (EV_LISTEN, address.to_string()).into_py_any(py)?,
            Event::Connect { peer: p } => (EV_CONNECT, peer(p)).into_py_any(py)?,
            Event::Disconnect { peer: p, reason } => {
                (EV_DISCONNECT, peer(p), reason).into_py_any(py)?
            }
            Event::Message { msg, uuid, peer: p } => {
                let (uuid, p) = recent.get(py, uuid, p)?;
                (EV_MESSAGE, msg.as_str(), uuid, p).into_py_any(py)?
            }
            Event::Request(req) => {
                let (msg, uuid, p, responder) = req.into_parts();
                let responder = Responder {
                    inner: Mutex::new(Some(responder)),
                };
                let (uuid, p) = recent.get(py, uuid, p)?;
                (EV_REQUEST, msg.as_str(), uuid, p, responder).into_py_any(py)?
            }
            Event::Error { error, address } => {
                let exc = error_to_py(py, &error).into_value(py);
                (EV_ERROR, exc, address).into_py_any(py)?
            }
            _ => return Ok(None),
        };
        Ok(Some(item))
    }

    fn done_to_py(
        &self,
        py: Python<'_>,
        token: u64,
        result: iris_rpc::Result<Response>,
    ) -> PyResult<Py<PyAny>> {
        lock(&self.tasks).remove(&token);
        match result {
            Ok(r) => (EV_DONE, token, r.raw(), py.None()).into_py_any(py),
            Err(e) => {
                let exc = error_to_py(py, &e).into_value(py);
                (EV_DONE, token, py.None(), exc).into_py_any(py)
            }
        }
    }
}

impl Drop for Native {
    fn drop(&mut self) {
        // Forgotten without close(): close in the background so sockets and tasks end.
        if !self.closed.swap(true, Ordering::SeqCst) {
            let obj = self.obj.clone();
            self.rt.spawn(async move { obj.close().await });
        }
    }
}

#[pymethods]
impl Native {
    /// Starts a client from legacy option JSON; it connects in the background.
    #[staticmethod]
    fn client(py: Python<'_>, options_json: &str) -> PyResult<Native> {
        let opts = Self::options(py, options_json)?;
        let rt = iris_rpc::runtime::get().map_err(|e| error_to_py(py, &e))?;
        let client = {
            let _guard = rt.enter();
            Client::connect(opts).map_err(|e| error_to_py(py, &e))?
        };
        Ok(Native::wrap(rt, Obj::Client(client), None))
    }

    /// Binds a server from legacy option JSON.
    #[staticmethod]
    fn server(py: Python<'_>, options_json: &str) -> PyResult<Native> {
        let opts = Self::options(py, options_json)?;
        let rt = iris_rpc::runtime::get().map_err(|e| error_to_py(py, &e))?;
        let rt2 = rt.clone();
        let server = py
            .detach(move || rt2.block_on(Server::bind(opts)))
            .map_err(|e| error_to_py(py, &e))?;
        let addr = server.local_addr();
        Ok(Native::wrap(rt, Obj::Server(server), Some(addr)))
    }

    /// This instance's uuid.
    #[getter]
    fn uuid(&self) -> &str {
        self.obj.uuid()
    }

    /// The bound address of a server (`host:port`), None for a client.
    #[getter]
    fn local_addr(&self) -> Option<&str> {
        self.local_addr.as_deref()
    }

    /// Up to `max` items, waiting up to `timeout` seconds for the first one. Returns None once
    /// the object is closed and nothing is left; an empty list when the wait timed out.
    /// Events come first, then answers of `request_async`; no answer comes before an event
    /// that arrived before it. With `events` false only answers are taken: the caller has no
    /// room for events, and answers must not wait behind them.
    #[pyo3(signature = (max, timeout, events=true))]
    fn next_batch(
        &self,
        py: Python<'_>,
        max: usize,
        timeout: f64,
        events: bool,
    ) -> PyResult<Option<Vec<Py<PyAny>>>> {
        let max = max.max(1);
        let wait = duration_from_secs(py, timeout)?;
        let rt = self.rt.clone();
        let want_events = events;
        let (events, done, open) = py.detach(|| {
            let mut inbox = lock(&self.inbox);
            let inbox = &mut *inbox;
            let mut events = Vec::new();
            let mut done = std::mem::take(&mut inbox.held);
            let mut open = true;
            // Streams that came up during construction, and answers held back by the last
            // pull, are handed out without waiting.
            let wait = if inbox.first.as_ref().is_some_and(|f| !f.is_empty()) || !done.is_empty() {
                Duration::ZERO
            } else {
                wait
            };
            rt.block_on(async {
                match inbox.events.as_mut() {
                    Some(_) if !want_events => {
                        tokio::select! {
                            _ = inbox.done.recv_many(&mut done, max) => {}
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    Some(ev) => {
                        tokio::select! {
                            n = ev.next_batch(&mut events, max) => {
                                if n == 0 {
                                    open = false;
                                }
                            }
                            _ = inbox.done.recv_many(&mut done, max) => {}
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    None => {
                        open = false;
                    }
                }
            });
            // Answers first, events after: an answer is sent (by its request task) only once
            // the core has read it, so every event that came before it from that peer is
            // already queued and is taken below. The caller delivers events before answers.
            while done.len() < max {
                match inbox.done.try_recv() {
                    Ok(d) => done.push(d),
                    Err(_) => break,
                }
            }
            if let Some(ev) = inbox.events.as_mut().filter(|_| want_events) {
                while events.len() < max {
                    match ev.try_next() {
                        Some(e) => events.push(e),
                        None => break,
                    }
                }
            }
            if want_events && open && events.len() >= max && !done.is_empty() {
                // Events may be left that came before these answers: the answers wait for
                // the next pull.
                inbox.held = std::mem::take(&mut done);
            }
            if !open {
                inbox.events = None;
            }
            if want_events {
                inbox.adjust(&mut events);
            }
            (events, done, open)
        });
        if !open && events.is_empty() && done.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(events.len() + done.len());
        let mut recent = Recent::default();
        for ev in events {
            if let Some(item) = Self::event_to_py(py, ev, &mut recent)? {
                out.push(item);
            }
        }
        for (token, result) in done {
            out.push(self.done_to_py(py, token, result)?);
        }
        Ok(Some(out))
    }

    /// Sends an event message to every connected stream; returns how many.
    fn dispatch(&self, py: Python<'_>, msg: &str) -> PyResult<usize> {
        let m = Self::message(py, msg)?;
        self.obj.dispatch(m).map_err(|e| error_to_py(py, &e))
    }

    /// Sends an event message to the stream of peer `uuid`.
    fn dispatch_to(&self, py: Python<'_>, uuid: &str, msg: &str) -> PyResult<()> {
        let m = Self::message(py, msg)?;
        self.obj
            .dispatch_to(uuid, m)
            .map_err(|e| error_to_py(py, &e))
    }

    /// Sends a request and blocks (GIL released, Ctrl-C honoured) until it settles; returns
    /// the `resp` JSON text, or None when the peer sent none.
    #[pyo3(signature = (uuid, msg, timeout=None))]
    fn request(
        &self,
        py: Python<'_>,
        uuid: Option<String>,
        msg: &str,
        timeout: Option<f64>,
    ) -> PyResult<Option<String>> {
        let m = Self::message(py, msg)?;
        let limit = timeout.map(|t| duration_from_secs(py, t)).transpose()?;
        // Sent here, on the calling thread; then driven on this thread by block_on, in slices,
        // so that signal handlers run between them; dropping it (Ctrl-C) withdraws the request
        // from the pending table.
        let reply = self.obj.request_raw(uuid.as_deref(), &m);
        let mut fut = Box::pin(async move { answer_within(reply, &m, limit).await });
        loop {
            let rt = self.rt.clone();
            let (back, got) = py.detach(move || {
                let got = rt.block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut fut).await });
                (fut, got)
            });
            fut = back;
            match got {
                Ok(Ok(resp)) => return Ok(resp.raw().map(str::to_owned)),
                Ok(Err(e)) => return Err(error_to_py(py, &e)),
                Err(_) => py.check_signals()?,
            }
        }
    }

    /// Starts a request whose answer arrives through `next_batch` as `(6, token, resp, exc)`.
    #[pyo3(signature = (token, uuid, msg, timeout=None))]
    fn request_async(
        &self,
        py: Python<'_>,
        token: u64,
        uuid: Option<String>,
        msg: &str,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let m = Self::message(py, msg)?;
        let limit = timeout.map(|t| duration_from_secs(py, t)).transpose()?;
        let tx = self.done_tx.clone();
        // The lock is held across sending, spawn and insert, so a fast answer cannot remove
        // the entry (in next_batch) before it exists. Sent here, on the calling thread, so it
        // keeps its place among this caller's sends; only the wait is spawned.
        let mut tasks = lock(&self.tasks);
        let reply = self.obj.request_raw(uuid.as_deref(), &m);
        let task = self.rt.spawn(async move {
            let r = answer_within(reply, &m, limit).await;
            let _ = tx.send((token, r));
        });
        tasks.insert(token, task.abort_handle());
        Ok(())
    }

    /// Abandons a `request_async` request (its answer, if any, is ignored).
    fn cancel(&self, token: u64) -> bool {
        match lock(&self.tasks).remove(&token) {
            Some(h) => {
                h.abort();
                true
            }
            None => false,
        }
    }

    /// Connected peers.
    fn peers(&self) -> Vec<PyPeer> {
        self.obj
            .peers()
            .into_iter()
            .map(|peer| PyPeer { peer })
            .collect()
    }

    /// True while any stream is authenticated and up.
    fn is_connected(&self) -> bool {
        self.obj.is_connected()
    }

    /// Resources, as a dict of counts.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, self.obj.stats())
    }

    /// Bytes queued for writing, over all streams (what `dispatch` backpressure waits on).
    fn queued_bytes(&self) -> usize {
        self.obj.stats().queued_bytes
    }

    /// Blocks until a stream is up (True) or `timeout` seconds pass (False); Ctrl-C works.
    fn wait_connected(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let deadline = Instant::now() + duration_from_secs(py, timeout)?;
        let mut last_check = Instant::now();
        loop {
            if self.obj.is_connected() {
                return Ok(true);
            }
            if self.closed.load(Ordering::SeqCst) {
                return Err(error_to_py(py, &Error::Closed));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            if now.duration_since(last_check) >= SIGNAL_CHECK {
                py.check_signals()?;
                last_check = now;
            }
            let step = (deadline - now).min(Duration::from_millis(5));
            py.detach(|| std::thread::sleep(step));
        }
    }

    /// Sends `{"op":"ping","data":..}` to every stream now.
    fn ping(&self, py: Python<'_>) -> PyResult<usize> {
        self.obj.ping().map_err(|e| error_to_py(py, &e))
    }

    /// Sets the `data` of ping messages (JSON text, or None to leave it out).
    #[pyo3(signature = (data_json=None))]
    fn set_ping_data(&self, py: Python<'_>, data_json: Option<&str>) -> PyResult<()> {
        let data = data_json
            .map(serde_json::from_str::<serde_json::Value>)
            .transpose()
            .map_err(|e| config_error(py, format!("ping data is not valid JSON: {e}")))?;
        self.obj.set_ping_data(data);
        Ok(())
    }

    /// True once close() has been called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Closes everything (blocking, GIL released): streams end, pending requests settle with
    /// ClosedError, and `next_batch` returns None once drained. Safe to call twice.
    fn close(&self, py: Python<'_>) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let obj = self.obj.clone();
        let rt = self.rt.clone();
        let (tx, rx) = std_mpsc::sync_channel(1);
        rt.spawn(async move {
            obj.close().await;
            let _ = tx.send(());
        });
        // Not interruptible: the core bounds close() itself (a few seconds at most).
        py.detach(move || {
            let _ = rx.recv();
        });
    }
}

/// The core's resource counts as a dict.
fn stats_dict(py: Python<'_>, s: iris_rpc::Stats) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("connections", s.connections)?;
    d.set_item("unauthenticated", s.unauthenticated)?;
    d.set_item("streams", s.streams)?;
    d.set_item("pending", s.pending)?;
    d.set_item("queued_bytes", s.queued_bytes)?;
    d.set_item("tasks", s.tasks)?;
    Ok(d)
}

/// The Python name of a router side.
fn side_name(side: Side) -> &'static str {
    match side {
        Side::Frontend => "frontend",
        Side::Backend => "backend",
    }
}

fn parse_side(py: Python<'_>, side: &str) -> PyResult<Side> {
    match side {
        "frontend" => Ok(Side::Frontend),
        "backend" => Ok(Side::Backend),
        other => Err(config_error(
            py,
            format!("side must be 'frontend' or 'backend', not {other:?}"),
        )),
    }
}

/// One core `Router` (a frontend server relaying to a backend client or server) on the shared
/// runtime. Its events (peers coming and going, refusals, errors) are pulled in batches by one
/// Python thread through `next_batch`, as with [`Native`].
#[pyclass(module = "iris_rpc._native", frozen)]
pub struct NativeRouter {
    rt: Arc<Runtime>,
    router: Arc<Router>,
    events: Mutex<Option<iris_rpc::RouterEvents>>,
    local_addr: String,
    backend_addr: Option<String>,
    closed: AtomicBool,
}

impl NativeRouter {
    fn event_to_py(py: Python<'_>, ev: RouterEvent) -> PyResult<Option<Py<PyAny>>> {
        let peer = |p: Peer| PyPeer { peer: p };
        let item = match ev {
            RouterEvent::Connect { side, peer: p } => {
                (RT_CONNECT, side_name(side), peer(p)).into_py_any(py)?
            }
            RouterEvent::Disconnect {
                side,
                peer: p,
                reason,
            } => (RT_DISCONNECT, side_name(side), peer(p), reason).into_py_any(py)?,
            RouterEvent::Refused { peer: p } => (RT_REFUSED, peer(p)).into_py_any(py)?,
            RouterEvent::Error {
                side,
                error,
                address,
            } => {
                let exc = error_to_py(py, &error).into_value(py);
                (RT_ERROR, side_name(side), exc, address).into_py_any(py)?
            }
            _ => return Ok(None),
        };
        Ok(Some(item))
    }
}

impl Drop for NativeRouter {
    fn drop(&mut self) {
        // Forgotten without close(): close in the background so sockets and tasks end.
        if !self.closed.swap(true, Ordering::SeqCst) {
            let router = self.router.clone();
            self.rt.spawn(async move { router.close().await });
        }
    }
}

#[pymethods]
impl NativeRouter {
    /// Starts a router from legacy option JSON: `frontend_json` for the frontend server,
    /// `backend_json` for the backend, a server when `backend_server` is true (options with
    /// `port`), else a client (options with `address`). Blocks (GIL released) until both
    /// listeners are bound; a backend client connects in the background. With
    /// `cluster_json` (`ClusterOptions::from_json`) it joins that cluster of routers.
    #[staticmethod]
    #[pyo3(signature = (frontend_json, backend_json, backend_server, cluster_json = None))]
    fn start(
        py: Python<'_>,
        frontend_json: &str,
        backend_json: &str,
        backend_server: bool,
        cluster_json: Option<&str>,
    ) -> PyResult<NativeRouter> {
        let cluster = cluster_json
            .map(iris_rpc::ClusterOptions::from_json)
            .transpose()
            .map_err(|e| error_to_py(py, &e))?;
        let frontend = Native::options(py, frontend_json)?;
        let backend = Native::options(py, backend_json)?;
        // Checked here because a backend the core refuses after binding the frontend would
        // leave the frontend listening.
        if frontend.certificates.is_none() || (backend_server && backend.certificates.is_none()) {
            return Err(config_error(
                py,
                "a router needs 'certificates' for its server side".into(),
            ));
        }
        if frontend.port.is_none() {
            return Err(config_error(py, "a router needs 'port'".into()));
        }
        let backend = if backend_server {
            if backend.port.is_none() {
                return Err(config_error(py, "the router's server needs 'port'".into()));
            }
            Backend::Server(backend)
        } else {
            if backend.address.is_empty() {
                return Err(config_error(
                    py,
                    "the router's client needs 'address'".into(),
                ));
            }
            Backend::Client(backend)
        };
        let rt = iris_rpc::runtime::get().map_err(|e| error_to_py(py, &e))?;
        let rt2 = rt.clone();
        let router = py
            .detach(move || {
                rt2.block_on(async move {
                    match cluster {
                        Some(c) => Router::start_clustered(frontend, backend, c).await,
                        None => Router::start(frontend, backend).await,
                    }
                })
            })
            .map_err(|e| error_to_py(py, &e))?;
        let events = router.events();
        let local_addr = router.local_addr().to_string();
        let backend_addr = router.backend_addr().map(|a| a.to_string());
        Ok(NativeRouter {
            rt,
            router: Arc::new(router),
            events: Mutex::new(events),
            local_addr,
            backend_addr,
            closed: AtomicBool::new(false),
        })
    }

    /// The frontend's bound address, `host:port`.
    #[getter]
    fn local_addr(&self) -> &str {
        &self.local_addr
    }

    /// The backend server's bound address, None when the backend is a client.
    #[getter]
    fn backend_addr(&self) -> Option<&str> {
        self.backend_addr.as_deref()
    }

    /// Up to `max` items, waiting up to `timeout` seconds for the first one. Returns None once
    /// the router is closed and nothing is left; an empty list when the wait timed out. With
    /// `events` false it only waits (a router has no answers to hand out; see
    /// [`Native::next_batch`]).
    #[pyo3(signature = (max, timeout, events=true))]
    fn next_batch(
        &self,
        py: Python<'_>,
        max: usize,
        timeout: f64,
        events: bool,
    ) -> PyResult<Option<Vec<Py<PyAny>>>> {
        let max = max.max(1);
        let wait = duration_from_secs(py, timeout)?;
        let rt = self.rt.clone();
        let want_events = events;
        let (events, open) = py.detach(|| {
            let mut guard = lock(&self.events);
            let Some(rx) = guard.as_mut() else {
                return (Vec::new(), false);
            };
            if !want_events {
                drop(guard);
                std::thread::sleep(wait);
                return (Vec::new(), true);
            }
            let mut events = Vec::new();
            let got = rt.block_on(async {
                tokio::select! {
                    n = rx.recv_many(&mut events, max) => Some(n),
                    _ = tokio::time::sleep(wait) => None,
                }
            });
            if got == Some(0) {
                *guard = None;
                return (events, false);
            }
            while events.len() < max {
                match rx.try_recv() {
                    Ok(e) => events.push(e),
                    Err(_) => break,
                }
            }
            (events, true)
        });
        if !open && events.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            if let Some(item) = Self::event_to_py(py, ev)? {
                out.push(item);
            }
        }
        Ok(Some(out))
    }

    /// Peers on `side` (`"frontend"` or `"backend"`).
    fn peers(&self, py: Python<'_>, side: &str) -> PyResult<Vec<PyPeer>> {
        let side = parse_side(py, side)?;
        Ok(self
            .router
            .peers(side)
            .into_iter()
            .map(|peer| PyPeer { peer })
            .collect())
    }

    /// Routes known on `side`: `(uuid, uuid of the peer that reaches it)`.
    fn routes(&self, py: Python<'_>, side: &str) -> PyResult<Vec<(String, String)>> {
        let side = parse_side(py, side)?;
        Ok(self.router.routes(side))
    }

    /// Resources on `side`, as a dict of counts.
    fn stats<'py>(&self, py: Python<'py>, side: &str) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, self.router.stats(parse_side(py, side)?))
    }

    /// True once close() has been called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Stops both sides (blocking, GIL released); `next_batch` returns None once drained.
    /// Safe to call twice.
    fn close(&self, py: Python<'_>) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let router = self.router.clone();
        let (tx, rx) = std_mpsc::sync_channel(1);
        self.rt.spawn(async move {
            router.close().await;
            let _ = tx.send(());
        });
        // Not interruptible: the core bounds close() itself (a few seconds at most).
        py.detach(move || {
            let _ = rx.recv();
        });
    }
}

/// A fresh self-signed key and certificate for `names`, as `(key_pem, cert_pem)`.
#[pyfunction]
#[pyo3(signature = (names=None))]
fn self_signed_pem(py: Python<'_>, names: Option<Vec<String>>) -> PyResult<(String, String)> {
    let names = names.unwrap_or_else(|| {
        vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ]
    });
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    iris_rpc::tls::self_signed_pem(&refs).map_err(|e| error_to_py(py, &e))
}

/// Sets the callable `(kind, message, value_json) -> exception` used for every error.
/// Forwards the core's log records up to `level` (0 off, 1 error, 2 warn, 3 info, 4 debug,
/// 5 trace) to `log_take`.
#[pyfunction]
fn log_set_level(level: u8) {
    logs::set_level(level);
}

/// Waits up to `timeout_ms` (GIL released) for the core's log records: `(level, target, text)`.
#[pyfunction]
fn log_take(py: Python<'_>, timeout_ms: u64) -> Vec<logs::Record> {
    py.detach(|| logs::take(Duration::from_millis(timeout_ms)))
}

/// `true`: `log_take` returns at once from now on (exit); `false`: it waits again.
#[pyfunction]
fn log_closed(closed: bool) {
    logs::set_closed(closed);
}

/// The process's metrics in the Prometheus text format (version 0.0.4).
#[pyfunction]
fn metrics() -> String {
    iris_rpc::metrics::text()
}

#[pyfunction]
fn set_error_factory(py: Python<'_>, factory: Py<PyAny>) -> PyResult<()> {
    ERROR_FACTORY
        .set(py, factory)
        .map_err(|_| PyRuntimeError::new_err("the error factory is already set"))
}

/// Builds the exception for `kind` through the factory (used by the package's own checks).
#[pyfunction]
fn make_error(py: Python<'_>, kind: &str, message: &str, value_json: &str) -> Py<PyAny> {
    error_parts_to_py(py, kind, message, value_json)
        .into_value(py)
        .into_any()
}

/// The native module. `gil_used`: the Python layer above shares its state (listeners, pending
/// futures, the set of live objects) between threads relying on the GIL; on a free-threaded
/// build the interpreter keeps the GIL on while this module is loaded.
#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "EVENT_TAGS",
        PyTuple::new(
            m.py(),
            [
                EV_LISTEN,
                EV_CONNECT,
                EV_DISCONNECT,
                EV_MESSAGE,
                EV_REQUEST,
                EV_ERROR,
                EV_DONE,
            ],
        )?,
    )?;
    m.add(
        "ROUTER_TAGS",
        PyTuple::new(m.py(), [RT_CONNECT, RT_DISCONNECT, RT_REFUSED, RT_ERROR])?,
    )?;
    m.add_class::<Native>()?;
    m.add_class::<NativeRouter>()?;
    m.add_class::<PyPeer>()?;
    m.add_class::<Responder>()?;
    m.add_function(wrap_pyfunction!(self_signed_pem, m)?)?;
    m.add_function(wrap_pyfunction!(set_error_factory, m)?)?;
    m.add_function(wrap_pyfunction!(make_error, m)?)?;
    m.add_function(wrap_pyfunction!(metrics, m)?)?;
    m.add_function(wrap_pyfunction!(log_set_level, m)?)?;
    m.add_function(wrap_pyfunction!(log_take, m)?)?;
    m.add_function(wrap_pyfunction!(log_closed, m)?)?;
    Ok(())
}
