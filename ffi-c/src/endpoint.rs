//! What a C client and a C server share: the core object, the callback thread, the event pump
//! and request bookkeeping. The exported functions in `client.rs` and `server.rs` are thin
//! wrappers over [`Endpoint`].
//!
//! Threads: the core runs on the shared runtime (`iris_rpc::runtime::get()`). Callbacks run on
//! one plain thread per object (named `iris-callback`), never on a runtime thread, so a callback
//! may call the library. Calls that wait for the object's own progress (`request_wait`,
//! `next_event`, `wait_connected`) are refused on that thread, and `close`/`free` there start
//! the close without waiting for it, since waiting would deadlock the thread that must drain
//! the object's events.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use iris::{Client, Event, Message, Server};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

use crate::event::iris_event;
use crate::result::{iris_result, set_last_error, FfiError, FfiResult};
use crate::strings::c_string_lossy;

/// Called with each event on the object's callback thread. `event` lives until the callback
/// returns.
pub type iris_event_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const iris_event)>;

/// Called once with `user_data` after the last callback of an object, when it is freed.
pub type iris_destroy_callback = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// Called exactly once per request on the object's callback thread. `result` is `IRIS_OK`
/// with the response value as JSON text in `json` (`null` when the peer sent none), or an
/// error code with the error object as JSON text: the peer's error value for
/// `IRIS_ERR_REMOTE`, `{"error":"Connection Timed Out","timeout":MS,"req":..}` for
/// `IRIS_ERR_TIMEOUT`, and likewise for disconnect, close, cancel. `json` is NUL-terminated,
/// `json_len` bytes long, and lives until the callback returns.
pub type iris_response_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        result: iris_result,
        json: *const c_char,
        json_len: usize,
    ),
>;

/// A C pointer the C side promised may be used from the library's threads.
#[derive(Clone, Copy)]
pub(crate) struct UserData(pub(crate) *mut c_void);
// SAFETY: documented contract: user_data must be usable from the callback thread.
unsafe impl Send for UserData {}

pub(crate) enum Core {
    Client(Client),
    Server(Server),
}

macro_rules! on_core {
    ($core:expr, $c:ident => $body:expr) => {
        match $core {
            Core::Client($c) => $body,
            Core::Server($c) => $body,
        }
    };
}

pub(crate) enum Job {
    Event(Box<iris_event>),
    Response {
        callback: unsafe extern "C" fn(*mut c_void, iris_result, *const c_char, usize),
        user_data: UserData,
        result: iris_result,
        json: CString,
    },
}

/// Events for the pull model, or nothing when they go to a callback.
type PullQueue = Mutex<Option<mpsc::Receiver<Box<iris_event>>>>;

pub(crate) struct Endpoint {
    runtime: Arc<Runtime>,
    core: Arc<Core>,
    uuid: CString,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    pull: Option<PullQueue>,
    callback_thread: Mutex<Option<JoinHandle<()>>>,
    callback_thread_id: ThreadId,
    requests: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
    next_request: AtomicU64,
}

const JOB_QUEUE: usize = 256;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn runtime() -> FfiResult<Arc<Runtime>> {
    ignore_sigpipe();
    Ok(iris::runtime::get()?)
}

/// A write to a socket the peer has closed raises SIGPIPE, whose default action kills the
/// process; Rust programs ignore it from `main`, C programs do not. Sockets are written by the
/// runtime, where the error is handled, so SIGPIPE is set to ignored once, on first use, unless
/// the application has installed a disposition of its own (documented in the README).
fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sigaction with a zeroed, then filled, struct; only SIG_DFL is replaced.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction == libc::SIG_DFL
            {
                let mut ignore: libc::sigaction = std::mem::zeroed();
                ignore.sa_sigaction = libc::SIG_IGN;
                libc::sigemptyset(&mut ignore.sa_mask);
                libc::sigaction(libc::SIGPIPE, &ignore, std::ptr::null_mut());
            }
        }
    });
}

/// Blocking here would stall a runtime worker, or panic inside tokio.
pub(crate) fn not_in_runtime(what: &str) -> FfiResult<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(FfiError::state(format!(
            "{what} blocks and cannot be called on a runtime thread"
        )));
    }
    Ok(())
}

impl Endpoint {
    /// Starts a client: connecting begins at once in the background.
    pub(crate) fn connect(
        opts: iris::Options,
        callback: iris_event_callback,
        user_data: UserData,
        destroy: iris_destroy_callback,
    ) -> FfiResult<Endpoint> {
        Self::create(callback, user_data, destroy, |runtime| {
            let client = {
                let _entered = runtime.enter();
                Client::connect(opts)?
            };
            let events = client.events();
            Ok((Core::Client(client), events, None))
        })
    }

    /// Starts a server, waiting until it is bound.
    pub(crate) fn bind(
        opts: iris::Options,
        callback: iris_event_callback,
        user_data: UserData,
        destroy: iris_destroy_callback,
    ) -> FfiResult<Endpoint> {
        Self::create(callback, user_data, destroy, |runtime| {
            not_in_runtime("iris_server_bind")?;
            let (server, events) = runtime.block_on(async {
                let server = Server::bind(opts).await?;
                let events = server.events();
                Ok::<_, iris::Error>((server, events))
            })?;
            // The core emits its listen event from a task that may run before we subscribe;
            // the pump sends our own first and drops the core's.
            let listen = Some(server.local_addr().to_string());
            Ok((Core::Server(server), events, listen))
        })
    }

    /// Starts the callback thread, then the core object; on failure the thread ends (calling
    /// `destroy`) before this returns.
    fn create(
        callback: iris_event_callback,
        user_data: UserData,
        destroy: iris_destroy_callback,
        make: impl FnOnce(&Runtime) -> FfiResult<(Core, iris::Events, Option<String>)>,
    ) -> FfiResult<Endpoint> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(JOB_QUEUE);
        let thread = spawn_callback_thread(jobs_rx, callback, user_data, destroy)?;
        let made = runtime().and_then(|rt| make(&rt).map(|m| (rt, m)));
        let (runtime, (core, events, listen)) = match made {
            Ok(m) => m,
            Err(e) => {
                drop(jobs_tx);
                let _ = thread.join();
                return Err(e);
            }
        };
        let uuid = c_string_lossy(on_core!(&core, c => c.uuid()));
        let (event_tx, pull) = match callback {
            Some(_) => (EventSink::Jobs(jobs_tx.clone()), None),
            None => {
                let (tx, rx) = mpsc::channel(JOB_QUEUE);
                (EventSink::Pull(tx), Some(Mutex::new(Some(rx))))
            }
        };
        // The core starts connecting before we subscribe; its receiver starts with a `Connect`
        // for each stream already up, so none is missed or doubled. A server's `Listen` may
        // be gone already: it is reported here, and the core's dropped.
        let synthesized_listen = listen.is_some();
        runtime.spawn(async move {
            let mut events = events;
            if let Some(address) = listen {
                event_tx.send(Box::new(iris_event::listen(&address))).await;
            }
            // Keep draining after the consumer is gone: a full core queue would pause reading
            // from peers and hold up close.
            while let Some(ev) = events.next().await {
                if synthesized_listen && matches!(ev, Event::Listen { .. }) {
                    continue;
                }
                if let Some(e) = iris_event::from_core(ev) {
                    event_tx.send(Box::new(e)).await;
                }
            }
        });
        let callback_thread_id = thread.thread().id();
        Ok(Endpoint {
            runtime,
            core: Arc::new(core),
            uuid,
            jobs: Mutex::new(Some(jobs_tx)),
            pull,
            callback_thread: Mutex::new(Some(thread)),
            callback_thread_id,
            requests: Arc::new(Mutex::new(HashMap::new())),
            next_request: AtomicU64::new(1),
        })
    }

    fn on_callback_thread(&self) -> bool {
        std::thread::current().id() == self.callback_thread_id
    }

    fn no_wait_here(&self, what: &str) -> FfiResult<()> {
        if self.on_callback_thread() {
            return Err(FfiError::state(format!(
                "{what} would wait for this object's own callback thread; \
                 use the non-blocking form from a callback"
            )));
        }
        not_in_runtime(what)
    }

    pub(crate) fn uuid(&self) -> *const c_char {
        self.uuid.as_ptr()
    }

    pub(crate) fn local_port(&self) -> u16 {
        match &*self.core {
            Core::Server(s) => s.local_addr().port(),
            Core::Client(_) => 0,
        }
    }

    pub(crate) fn local_address(&self) -> Option<String> {
        match &*self.core {
            Core::Server(s) => Some(s.local_addr().to_string()),
            Core::Client(_) => None,
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        on_core!(&*self.core, c => c.is_connected())
    }

    pub(crate) fn wait_connected(&self, timeout_ms: u32) -> FfiResult<()> {
        self.no_wait_here("wait_connected")?;
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        loop {
            if self.is_connected() {
                return Ok(());
            }
            if self.jobs_closed() {
                return Err(iris::Error::Closed.into());
            }
            if Instant::now() >= deadline {
                return Err(FfiError::new(
                    iris_result::IRIS_ERR_TIMEOUT,
                    format!("not connected within {timeout_ms} ms"),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn jobs_closed(&self) -> bool {
        lock(&self.jobs).is_none()
    }

    pub(crate) fn dispatch(&self, msg: Message) -> FfiResult<usize> {
        Ok(on_core!(&*self.core, c => c.dispatch(msg))?)
    }

    pub(crate) fn dispatch_to(&self, uuid: &str, msg: Message) -> FfiResult<()> {
        Ok(on_core!(&*self.core, c => c.dispatch_to(uuid, msg))?)
    }

    pub(crate) fn ping(&self) -> FfiResult<usize> {
        Ok(on_core!(&*self.core, c => c.ping())?)
    }

    pub(crate) fn set_ping_data(&self, data: Option<Value>) {
        on_core!(&*self.core, c => c.set_ping_data(data))
    }

    pub(crate) fn peers_json(&self) -> String {
        peers_json(&on_core!(&*self.core, c => c.peers()))
    }

    /// Starts a request whose outcome goes to `callback` on the callback thread.
    pub(crate) fn request(
        &self,
        uuid: Option<String>,
        msg: Message,
        callback: unsafe extern "C" fn(*mut c_void, iris_result, *const c_char, usize),
        user_data: UserData,
    ) -> FfiResult<u64> {
        let jobs = lock(&self.jobs)
            .clone()
            .ok_or_else(|| FfiError::from(iris::Error::Closed))?;
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        lock(&self.requests).insert(id, cancel_tx);
        // Sent here, on the caller's thread: it keeps its place among the caller's sends.
        let reply = on_core!(&*self.core, c => c.request_raw(uuid.as_deref(), &msg));
        let requests = self.requests.clone();
        self.runtime.spawn(async move {
            let outcome = tokio::select! {
                r = reply => Some(r),
                _ = cancel_rx => None,
            };
            lock(&requests).remove(&id);
            let (result, json) = settle(outcome);
            // The callback thread lives until every sender is gone, so this cannot fail.
            let _ = jobs
                .send(Job::Response {
                    callback,
                    user_data,
                    result,
                    json,
                })
                .await;
        });
        Ok(id)
    }

    /// Withdraws interest in a request: its callback gets `IRIS_ERR_CANCELLED` unless it has
    /// already settled.
    pub(crate) fn cancel(&self, id: u64) -> FfiResult<()> {
        let tx = lock(&self.requests).remove(&id).ok_or_else(|| {
            FfiError::new(
                iris_result::IRIS_ERR_NOT_FOUND,
                format!("no pending request {id}"),
            )
        })?;
        let _ = tx.send(());
        Ok(())
    }

    /// A request waited for on the calling thread; the response JSON text, or the error object
    /// as the last error message.
    pub(crate) fn request_wait(&self, uuid: Option<&str>, msg: Message) -> FfiResult<String> {
        self.no_wait_here("request_wait")?;
        let reply = on_core!(&*self.core, c => c.request_raw(uuid, &msg));
        let outcome = self.runtime.block_on(reply);
        match outcome {
            Ok(resp) => Ok(resp.raw().unwrap_or("null").to_owned()),
            Err(e) => Err(FfiError::new(
                iris_result::of_kind(e.kind()),
                e.to_legacy_value().to_string(),
            )),
        }
    }

    /// The next pulled event: `Ok(None)` on timeout.
    pub(crate) fn next_event(&self, timeout_ms: u32) -> FfiResult<Option<Box<iris_event>>> {
        let Some(pull) = &self.pull else {
            return Err(FfiError::state(
                "events go to the callback given at creation; next_event needs a NULL callback",
            ));
        };
        self.no_wait_here("next_event")?;
        pull_event(&self.runtime, pull, timeout_ms)
    }

    /// Closes the core object: waits for it, except where waiting could deadlock.
    pub(crate) fn close(&self) {
        let core = self.core.clone();
        if self.on_callback_thread() || tokio::runtime::Handle::try_current().is_ok() {
            self.runtime
                .spawn(async move { on_core!(&*core, c => c.close().await) });
        } else {
            self.runtime
                .block_on(async move { on_core!(&*core, c => c.close().await) });
        }
    }

    /// Closes, lets every pending callback run, calls the destroy callback, and waits for the
    /// callback thread unless called from it.
    pub(crate) fn shutdown(self) {
        // Unpulled events are dropped (requests among them answered) so close is not held up.
        if let Some(pull) = &self.pull {
            lock(pull).take();
        }
        self.close();
        lock(&self.jobs).take();
        let thread = lock(&self.callback_thread).take();
        if !self.on_callback_thread() {
            if let Some(t) = thread {
                if t.join().is_err() {
                    set_last_error("the callback thread panicked");
                }
            }
        }
    }
}

/// The next event from a pull queue: `Ok(None)` on timeout, `IRIS_ERR_CLOSED` once it is
/// closed and drained. The caller has checked that waiting is allowed on this thread.
fn pull_event(
    runtime: &Runtime,
    pull: &PullQueue,
    timeout_ms: u32,
) -> FfiResult<Option<Box<iris_event>>> {
    let mut guard = lock(pull);
    let rx = guard
        .as_mut()
        .ok_or_else(|| FfiError::from(iris::Error::Closed))?;
    if timeout_ms == 0 {
        return match rx.try_recv() {
            Ok(e) => Ok(Some(e)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(iris::Error::Closed.into()),
        };
    }
    let wait = Duration::from_millis(u64::from(timeout_ms));
    match runtime.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
        Ok(Some(e)) => Ok(Some(e)),
        Ok(None) => Err(iris::Error::Closed.into()),
        Err(_) => Ok(None),
    }
}

/// Peers as the JSON array text of `iris_*_peers`.
pub(crate) fn peers_json(peers: &[iris::Peer]) -> String {
    let list: Vec<Value> = peers
        .iter()
        .map(|p| {
            json!({
                "uuid": p.uuid(),
                "address": p.address(),
                "designation": p.designation(),
                "mac": p.mac(),
                "cipher": p.cipher(),
                "mode": p.mode().as_str(),
            })
        })
        .collect();
    Value::Array(list).to_string()
}

pub(crate) enum EventSink {
    Jobs(mpsc::Sender<Job>),
    Pull(mpsc::Sender<Box<iris_event>>),
}

impl EventSink {
    pub(crate) async fn send(&self, e: Box<iris_event>) {
        // A failed send means the consumer is gone; the event (and any request in it) drops.
        let _ = match self {
            EventSink::Jobs(tx) => tx.send(Job::Event(e)).await.map_err(|_| ()),
            EventSink::Pull(tx) => tx.send(e).await.map_err(|_| ()),
        };
    }
}

fn settle(outcome: Option<iris::Result<iris::Response>>) -> (iris_result, CString) {
    settle_text(outcome.map(|r| r.map(|resp| resp.raw().unwrap_or("null").to_owned())))
}

/// A request's outcome as the callback takes it: the response JSON text, the error object,
/// or the cancel object (`None`).
fn settle_text(outcome: Option<iris::Result<String>>) -> (iris_result, CString) {
    match outcome {
        Some(Ok(text)) => (iris_result::IRIS_OK, c_string_lossy(&text)),
        Some(Err(e)) => (
            iris_result::of_kind(e.kind()),
            c_string_lossy(&e.to_legacy_value().to_string()),
        ),
        None => (
            iris_result::IRIS_ERR_CANCELLED,
            c_string_lossy(r#"{"error":"Cancelled","cancelled":true}"#),
        ),
    }
}

fn spawn_callback_thread(
    mut jobs: mpsc::Receiver<Job>,
    callback: iris_event_callback,
    user_data: UserData,
    destroy: iris_destroy_callback,
) -> FfiResult<JoinHandle<()>> {
    let run = move || {
        let user_data = user_data;
        while let Some(job) = jobs.blocking_recv() {
            match job {
                Job::Event(event) => {
                    if let Some(cb) = callback {
                        // SAFETY: the C side's function and pointer, called as documented.
                        unsafe { cb(user_data.0, &*event) };
                    }
                    drop(event);
                }
                Job::Response {
                    callback,
                    user_data,
                    result,
                    json,
                } => {
                    let len = json.as_bytes().len();
                    // SAFETY: as above, for the request's own callback and pointer.
                    unsafe { callback(user_data.0, result, json.as_ptr(), len) };
                }
            }
        }
        if let Some(d) = destroy {
            // SAFETY: called once, after the last callback, as documented.
            unsafe { d(user_data.0) };
        }
    };
    let spawned = std::thread::Builder::new()
        .name("iris-callback".into())
        .spawn(run);
    spawned.map_err(|e| {
        if let Some(d) = destroy {
            // SAFETY: the thread never ran, so this is the one call.
            unsafe { d(user_data.0) };
        }
        FfiError::new(
            iris_result::IRIS_ERR_IO,
            format!("cannot start the callback thread: {e}"),
        )
    })
}

/// Event delivery and request callbacks for the objects that are not an [`Endpoint`] (router,
/// multiplexer): the callback thread, the pull queue, the waiting rules and close/free, the
/// same as a client's or server's.
pub(crate) struct Delivery {
    pub(crate) runtime: Arc<Runtime>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    pull: Option<PullQueue>,
    callback_thread: Mutex<Option<JoinHandle<()>>>,
    callback_thread_id: ThreadId,
    requests: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
    next_request: AtomicU64,
}

impl Delivery {
    /// Starts the callback thread, then makes the object with `make` on the runtime; on
    /// failure the thread ends (calling `destroy`) before this returns. The sink is where the
    /// object's events go.
    pub(crate) fn start<T>(
        callback: iris_event_callback,
        user_data: UserData,
        destroy: iris_destroy_callback,
        make: impl FnOnce(&Arc<Runtime>) -> FfiResult<T>,
    ) -> FfiResult<(Delivery, T, EventSink)> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(JOB_QUEUE);
        let thread = spawn_callback_thread(jobs_rx, callback, user_data, destroy)?;
        let made = runtime().and_then(|rt| make(&rt).map(|m| (rt, m)));
        let (runtime, made) = match made {
            Ok(m) => m,
            Err(e) => {
                drop(jobs_tx);
                let _ = thread.join();
                return Err(e);
            }
        };
        let (sink, pull) = match callback {
            Some(_) => (EventSink::Jobs(jobs_tx.clone()), None),
            None => {
                let (tx, rx) = mpsc::channel(JOB_QUEUE);
                (EventSink::Pull(tx), Some(Mutex::new(Some(rx))))
            }
        };
        let callback_thread_id = thread.thread().id();
        let delivery = Delivery {
            runtime,
            jobs: Mutex::new(Some(jobs_tx)),
            pull,
            callback_thread: Mutex::new(Some(thread)),
            callback_thread_id,
            requests: Arc::new(Mutex::new(HashMap::new())),
            next_request: AtomicU64::new(1),
        };
        Ok((delivery, made, sink))
    }

    pub(crate) fn on_callback_thread(&self) -> bool {
        std::thread::current().id() == self.callback_thread_id
    }

    /// Refuses to wait on this object's callback thread or on a runtime thread.
    pub(crate) fn no_wait_here(&self, what: &str) -> FfiResult<()> {
        if self.on_callback_thread() {
            return Err(FfiError::state(format!(
                "{what} would wait for this object's own callback thread; \
                 use the non-blocking form from a callback"
            )));
        }
        not_in_runtime(what)
    }

    /// The next pulled event; `IRIS_ERR_TIMEOUT` when none came in time.
    pub(crate) fn next_event(&self, timeout_ms: u32) -> FfiResult<Box<iris_event>> {
        let Some(pull) = &self.pull else {
            return Err(FfiError::state(
                "events go to the callback given at creation; next_event needs a NULL callback",
            ));
        };
        self.no_wait_here("next_event")?;
        pull_event(&self.runtime, pull, timeout_ms)?.ok_or_else(|| {
            FfiError::new(
                iris_result::IRIS_ERR_TIMEOUT,
                format!("no event within {timeout_ms} ms"),
            )
        })
    }

    /// Runs `close` to its end, or only starts it where waiting could deadlock.
    pub(crate) fn close(&self, close: impl std::future::Future<Output = ()> + Send + 'static) {
        if self.on_callback_thread() || tokio::runtime::Handle::try_current().is_ok() {
            self.runtime.spawn(close);
        } else {
            self.runtime.block_on(close);
        }
    }

    /// Starts a request whose outcome (from `fut`) goes to `callback` on the callback thread.
    pub(crate) fn request(
        &self,
        fut: impl std::future::Future<Output = iris::Result<String>> + Send + 'static,
        callback: unsafe extern "C" fn(*mut c_void, iris_result, *const c_char, usize),
        user_data: UserData,
    ) -> FfiResult<u64> {
        let jobs = lock(&self.jobs)
            .clone()
            .ok_or_else(|| FfiError::from(iris::Error::Closed))?;
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        lock(&self.requests).insert(id, cancel_tx);
        let requests = self.requests.clone();
        self.runtime.spawn(async move {
            let outcome = tokio::select! {
                r = fut => Some(r),
                _ = cancel_rx => None,
            };
            lock(&requests).remove(&id);
            let (result, json) = settle_text(outcome);
            let _ = jobs
                .send(Job::Response {
                    callback,
                    user_data,
                    result,
                    json,
                })
                .await;
        });
        Ok(id)
    }

    /// Withdraws interest in a request (see [`Endpoint::cancel`]).
    pub(crate) fn cancel(&self, id: u64) -> FfiResult<()> {
        let tx = lock(&self.requests).remove(&id).ok_or_else(|| {
            FfiError::new(
                iris_result::IRIS_ERR_NOT_FOUND,
                format!("no pending request {id}"),
            )
        })?;
        let _ = tx.send(());
        Ok(())
    }

    /// Drops unpulled events, runs `close`, lets every pending callback run, calls the destroy
    /// callback, and waits for the callback thread unless called from it.
    pub(crate) fn shutdown(&self, close: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(pull) = &self.pull {
            lock(pull).take();
        }
        self.close(close);
        lock(&self.jobs).take();
        let thread = lock(&self.callback_thread).take();
        if !self.on_callback_thread() {
            if let Some(t) = thread {
                if t.join().is_err() {
                    set_last_error("the callback thread panicked");
                }
            }
        }
    }
}

/// The argument handling shared by the client and server functions.
pub(crate) mod ops {
    use super::*;
    use crate::strings::{arg_opt_str, arg_str, arg_text, need_out, owned_c_string};

    pub(crate) unsafe fn message(json: *const c_char, len: usize) -> FfiResult<Message> {
        let text = arg_text(json, len, "json")?;
        Message::from_json(text)
            .map_err(|e| FfiError::new(iris_result::IRIS_ERR_INVALID_JSON, e.to_string()))
    }

    pub(crate) unsafe fn create(
        options: *const crate::options::iris_options,
        callback: iris_event_callback,
        user_data: *mut c_void,
        destroy: iris_destroy_callback,
        out: *mut *mut c_void,
        make: fn(
            iris::Options,
            iris_event_callback,
            UserData,
            iris_destroy_callback,
        ) -> FfiResult<Endpoint>,
        wrap: fn(Endpoint) -> *mut c_void,
    ) -> FfiResult<()> {
        let checked = (|| {
            need_out(out, "out")?;
            options
                .as_ref()
                .ok_or_else(|| FfiError::null("options"))?
                .build()
        })();
        let opts = match checked {
            Ok(o) => o,
            Err(e) => {
                // The documented rule: destroy runs exactly once, also when creation fails.
                if let Some(d) = destroy {
                    d(user_data);
                }
                return Err(e);
            }
        };
        let ep = make(opts, callback, UserData(user_data), destroy)?;
        *out = wrap(ep);
        Ok(())
    }

    pub(crate) unsafe fn dispatch(
        ep: &Endpoint,
        json: *const c_char,
        len: usize,
        sent_out: *mut usize,
    ) -> FfiResult<()> {
        let n = ep.dispatch(message(json, len)?)?;
        if let Some(s) = sent_out.as_mut() {
            *s = n;
        }
        Ok(())
    }

    pub(crate) unsafe fn dispatch_to(
        ep: &Endpoint,
        uuid: *const c_char,
        json: *const c_char,
        len: usize,
    ) -> FfiResult<()> {
        let uuid = arg_str(uuid, "uuid")?;
        ep.dispatch_to(uuid, message(json, len)?)
    }

    pub(crate) unsafe fn request(
        ep: &Endpoint,
        uuid: *const c_char,
        json: *const c_char,
        len: usize,
        callback: iris_response_callback,
        user_data: *mut c_void,
        id_out: *mut u64,
    ) -> FfiResult<()> {
        let callback = callback.ok_or_else(|| FfiError::null("callback"))?;
        let uuid = arg_opt_str(uuid, "uuid")?.map(str::to_owned);
        let msg = message(json, len)?;
        let id = ep.request(uuid, msg, callback, UserData(user_data))?;
        if let Some(o) = id_out.as_mut() {
            *o = id;
        }
        Ok(())
    }

    pub(crate) unsafe fn request_wait(
        ep: &Endpoint,
        uuid: *const c_char,
        json: *const c_char,
        len: usize,
        resp_out: *mut *mut c_char,
        resp_len_out: *mut usize,
    ) -> FfiResult<()> {
        need_out(resp_out, "resp_out")?;
        let uuid = arg_opt_str(uuid, "uuid")?;
        let msg = message(json, len)?;
        let text = ep.request_wait(uuid, msg)?;
        let s = owned_c_string(&text)?;
        *resp_out = s;
        if let Some(l) = resp_len_out.as_mut() {
            *l = text.len();
        }
        Ok(())
    }

    pub(crate) unsafe fn next_event(
        ep: &Endpoint,
        timeout_ms: u32,
        event_out: *mut *mut iris_event,
    ) -> FfiResult<()> {
        need_out(event_out, "event_out")?;
        match ep.next_event(timeout_ms)? {
            Some(e) => {
                *event_out = Box::into_raw(e);
                Ok(())
            }
            None => Err(FfiError::new(
                iris_result::IRIS_ERR_TIMEOUT,
                format!("no event within {timeout_ms} ms"),
            )),
        }
    }

    pub(crate) unsafe fn peers(ep: &Endpoint, json_out: *mut *mut c_char) -> FfiResult<()> {
        need_out(json_out, "json_out")?;
        *json_out = owned_c_string(&ep.peers_json())?;
        Ok(())
    }

    pub(crate) unsafe fn ping(ep: &Endpoint, sent_out: *mut usize) -> FfiResult<()> {
        let n = ep.ping()?;
        if let Some(s) = sent_out.as_mut() {
            *s = n;
        }
        Ok(())
    }

    pub(crate) unsafe fn set_ping_data(ep: &Endpoint, json: *const c_char) -> FfiResult<()> {
        let data = match arg_opt_str(json, "json")? {
            None => None,
            Some(t) => Some(serde_json::from_str::<Value>(t).map_err(|e| {
                FfiError::new(
                    iris_result::IRIS_ERR_INVALID_JSON,
                    format!("ping data is not valid JSON: {e}"),
                )
            })?),
        };
        ep.set_ping_data(data);
        Ok(())
    }
}
