//! `NativeRouter`: one core [`Router`] behind the JavaScript `Router` class, and the pump that
//! carries its events (peers coming and going, refusals, connection errors) to JavaScript in
//! batches.
//!
//! The same thread and release discipline as [`crate::NativePeer`]: everything runs on the
//! core's shared runtime, JavaScript is reached only through one non-blocking
//! ThreadsafeFunction owned by the pump task, and the pump (and with it the function, which
//! keeps Node's event loop alive) ends once the router is closed or failed to start.
//!
//! Batch entries (`index.js` reads the same numbers):
//!
//! | entry | meaning |
//! | --- | --- |
//! | `[0, null, "front host:port", "back host:port" \| null]` / `[0, ERR]` | listening / start failed |
//! | `[1, SIDE, "uuid", "address", designation, "mode"]` | a peer connected on SIDE (0 frontend, 1 backend); `mode` `"v2"` or `"legacy"` |
//! | `[2, SIDE, "uuid", "reason"]` | a peer left SIDE |
//! | `[3, "uuid", "address"]` | a frontend peer was refused (its uuid is held on the backend) |
//! | `[5, SIDE, ERR, address]` | a connection failed on SIDE |
//! | `[7]` | the router is closed; nothing follows |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use iris_rpc::{Backend, ClusterOptions, Options, Peer, Router, RouterEvent, Side};
use napi::bindgen_prelude::{Function, Status};
use napi::threadsafe_function::{ThreadsafeFunctionCallMode, UnknownReturnValue};
use napi_derive::napi;
use tokio::sync::{mpsc, Semaphore};

use crate::batch::Batch;
use crate::native::{batch_fn, lock, parse_options, runtime, BatchFn};

const LISTEN: u8 = 0;
const CONNECT: u8 = 1;
const DISCONNECT: u8 = 2;
const REFUSED: u8 = 3;
const CONN_ERROR: u8 = 5;
const CLOSED: u8 = 7;

/// The most router events put into one batch.
const MAX_BATCH: usize = 256;
/// Batches handed to JavaScript and not yet processed there.
const IN_FLIGHT: usize = 4;

struct Shared {
    /// Set once the asynchronous start has succeeded.
    router: OnceLock<Router>,
    /// Dropped by `close()` (after sending) or a failed start: the pump ends then.
    closed_tx: Mutex<Option<mpsc::UnboundedSender<()>>>,
    closing: AtomicBool,
}

fn side_of(side: &str) -> napi::Result<Side> {
    match side {
        "frontend" => Ok(Side::Frontend),
        "backend" => Ok(Side::Backend),
        other => Err(napi::Error::new(
            Status::InvalidArg,
            format!("config: side must be 'frontend' or 'backend', not '{other}'"),
        )),
    }
}

fn side_num(side: Side) -> u64 {
    match side {
        Side::Frontend => 0,
        Side::Backend => 1,
    }
}

/// One authenticated peer on a side of the router.
#[napi(object)]
pub struct RouterPeer {
    /// The peer's uuid.
    pub uuid: String,
    /// Its `ip:port` (or the address it was reached at).
    pub address: String,
    /// Its designation, when it sent one.
    pub designation: Option<String>,
    /// Whether lines are encrypted on its stream (the legacy cipher or v2 records).
    pub cipher: bool,
    /// The session mode negotiated with it: "v2" or "legacy".
    pub mode: String,
}

/// A uuid reachable through a peer of one side.
#[napi(object)]
pub struct RouterRoute {
    /// The uuid reachable.
    pub uuid: String,
    /// The uuid of the directly connected peer that reaches it.
    pub via: String,
}

/// Resources on one side of the router.
#[napi(object)]
pub struct RouterStats {
    /// Open connections, authenticated or not.
    pub connections: u32,
    /// Connections still in TLS or authentication.
    pub unauthenticated: u32,
    /// Authenticated streams.
    pub streams: u32,
    /// Requests awaiting an answer.
    pub pending: u32,
    /// Bytes queued for writing.
    pub queued_bytes: f64,
}

fn small(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A core Router as the JavaScript `Router` class uses it.
#[napi]
pub struct NativeRouter {
    shared: Arc<Shared>,
}

#[napi]
impl NativeRouter {
    /// Starts a router: a frontend server (`frontendJson`, options with `port`) relaying to a
    /// backend client (`backendJson` with `address`) or, when `backendIsServer`, a backend
    /// server (`backendJson` with `port`); with `clusterJson` (see
    /// `ClusterOptions::from_json`) it joins that cluster of routers. The outcome arrives as
    /// the batch's listen entry.
    #[napi(factory, catch_unwind)]
    pub fn start(
        frontend_json: String,
        backend_json: String,
        backend_is_server: bool,
        cluster_json: Option<String>,
        on_batch: Function<'_, String, UnknownReturnValue>,
    ) -> napi::Result<NativeRouter> {
        let cluster = cluster_json
            .map(|c| ClusterOptions::from_json(&c))
            .transpose()
            .map_err(|e| napi::Error::new(Status::InvalidArg, e.to_string()))?;
        let frontend = parse_options(&frontend_json)?;
        let back = parse_options(&backend_json)?;
        let backend = if backend_is_server {
            Backend::Server(back)
        } else {
            Backend::Client(back)
        };
        let rt = runtime()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            router: OnceLock::new(),
            closed_tx: Mutex::new(Some(tx)),
            closing: AtomicBool::new(false),
        });
        let tsfn = batch_fn(&on_batch)?;
        rt.spawn(start_then_pump(
            shared.clone(),
            frontend,
            backend,
            cluster,
            rx,
            tsfn,
        ));
        Ok(NativeRouter { shared })
    }

    /// Peers connected on `side` ("frontend" or "backend"); empty before listening.
    #[napi(catch_unwind)]
    pub fn peers(&self, side: String) -> napi::Result<Vec<RouterPeer>> {
        let side = side_of(&side)?;
        let Some(r) = self.shared.router.get() else {
            return Ok(Vec::new());
        };
        Ok(r.peers(side)
            .into_iter()
            .map(|p| RouterPeer {
                uuid: p.uuid().to_owned(),
                address: p.address().to_owned(),
                designation: p.designation().map(str::to_owned),
                cipher: p.cipher(),
                mode: p.mode().as_str().to_owned(),
            })
            .collect())
    }

    /// Uuids reachable through peers of `side` and the peer that reaches each.
    #[napi(catch_unwind)]
    pub fn routes(&self, side: String) -> napi::Result<Vec<RouterRoute>> {
        let side = side_of(&side)?;
        let Some(r) = self.shared.router.get() else {
            return Ok(Vec::new());
        };
        Ok(r.routes(side)
            .into_iter()
            .map(|(uuid, via)| RouterRoute { uuid, via })
            .collect())
    }

    /// Resources on `side`; null before listening.
    #[napi(catch_unwind)]
    pub fn stats(&self, side: String) -> napi::Result<Option<RouterStats>> {
        let side = side_of(&side)?;
        Ok(self.shared.router.get().map(|r| {
            let s = r.stats(side);
            RouterStats {
                connections: small(s.connections),
                unauthenticated: small(s.unauthenticated),
                streams: small(s.streams),
                pending: small(s.pending),
                // Exact up to 2^53 bytes, far beyond any queue limit.
                queued_bytes: s.queued_bytes as f64,
            }
        }))
    }

    /// Stops both sides; the closed entry follows once it is done. Idempotent.
    #[napi(catch_unwind)]
    pub fn close(&self) -> napi::Result<()> {
        if self.shared.closing.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let shared = self.shared.clone();
        runtime()?.spawn(async move {
            if let Some(r) = shared.router.get() {
                r.close().await;
            }
            let tx = lock(&shared.closed_tx).take();
            if let Some(tx) = tx {
                let _ = tx.send(());
            }
        });
        Ok(())
    }
}

async fn start_then_pump(
    shared: Arc<Shared>,
    frontend: Options,
    backend: Backend,
    cluster: Option<ClusterOptions>,
    closed: mpsc::UnboundedReceiver<()>,
    tsfn: BatchFn,
) {
    let mut first = Batch::new();
    let started = match cluster {
        Some(c) => Router::start_clustered(frontend, backend, c).await,
        None => Router::start(frontend, backend).await,
    };
    match started {
        Ok(router) => {
            let events = router.events();
            let front = router.local_addr().to_string();
            let back = router.backend_addr().map(|a| a.to_string());
            let _ = shared.router.set(router);
            first
                .begin(LISTEN)
                .raw("null")
                .str(&front)
                .opt_str(back.as_deref())
                .end();
            // close() may have run before the router was stored; it could not close it then.
            if shared.closing.load(Ordering::SeqCst) {
                if let Some(r) = shared.router.get() {
                    r.close().await;
                }
            }
            pump(events, closed, tsfn, first).await;
        }
        Err(e) => {
            first.begin(LISTEN).error(&e).end();
            // Nothing is open: the pump ends after this batch.
            lock(&shared.closed_tx).take();
            pump(None, closed, tsfn, first).await;
        }
    }
}

/// Streams announced to JavaScript, so that a Disconnect is reported only for a stream whose
/// Connect was (a refused peer's stream is reported as refused, not as connected).
#[derive(Default)]
struct Announced {
    peers: Vec<(Side, Peer)>,
}

impl Announced {
    fn add(&mut self, side: Side, peer: Peer) {
        self.peers.push((side, peer));
    }

    fn remove(&mut self, side: Side, peer: &Peer) -> bool {
        let before = self.peers.len();
        self.peers
            .retain(|(s, p)| !(*s == side && p.same_stream(peer)));
        self.peers.len() != before
    }
}

fn encode(ev: RouterEvent, announced: &mut Announced, b: &mut Batch) {
    match ev {
        RouterEvent::Connect { side, peer } => {
            b.begin(CONNECT)
                .num(side_num(side))
                .str(peer.uuid())
                .str(peer.address())
                .opt_str(peer.designation())
                .str(peer.mode().as_str())
                .end();
            announced.add(side, peer);
        }
        // Only for a stream whose Connect was reported; others fall through, skipped.
        RouterEvent::Disconnect { side, peer, reason } if announced.remove(side, &peer) => {
            b.begin(DISCONNECT)
                .num(side_num(side))
                .str(peer.uuid())
                .str(&reason)
                .end();
        }
        RouterEvent::Refused { peer } => {
            b.begin(REFUSED).str(peer.uuid()).str(peer.address()).end();
        }
        RouterEvent::Error {
            side,
            error,
            address,
        } => {
            b.begin(CONN_ERROR)
                .num(side_num(side))
                .error(&error)
                .opt_str(address.as_deref())
                .end();
        }
        // Kinds added to the core later are not reported either.
        _ => {}
    }
}

async fn pump(
    mut events: Option<iris_rpc::RouterEvents>,
    mut closed: mpsc::UnboundedReceiver<()>,
    tsfn: BatchFn,
    mut batch: Batch,
) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut announced = Announced::default();
    let mut closed_open = true;
    let mut done = false;
    loop {
        if batch.is_empty() {
            if events.is_none() && !closed_open {
                break;
            }
            tokio::select! {
                ev = async {
                    match events.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                }, if events.is_some() => match ev {
                    Some(ev) => encode(ev, &mut announced, &mut batch),
                    None => events = None,
                },
                c = closed.recv(), if closed_open => {
                    closed_open = false;
                    if c.is_some() {
                        done = true;
                    }
                }
            }
        }
        // Whatever else is ready right now joins the same batch.
        if let Some(rx) = events.as_mut() {
            for _ in 0..MAX_BATCH {
                match rx.try_recv() {
                    Ok(ev) => encode(ev, &mut announced, &mut batch),
                    Err(_) => break,
                }
            }
        }
        if !done && closed_open && closed.try_recv().is_ok() {
            closed_open = false;
            done = true;
        }
        if done {
            batch.begin(CLOSED).end();
        }
        if !batch.is_empty() {
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
        if done {
            break;
        }
    }
    // Dropping the function releases it: it no longer keeps Node's event loop alive.
    drop(tsfn);
}
