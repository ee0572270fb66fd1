//! [`Stream`]: one authenticated stream as the engine sees it: who the peer is, the queue to
//! its writer, and the requests waiting on it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify};

use crate::error::{Error, Result};
use crate::message::Response;
use crate::options::Options;
use crate::outbox::Outbox;
use crate::peer::Peer;
use crate::protocol::pending::{Closed, Entry, Pending};

/// What settles one request: the caller's half waits on the other end.
pub(crate) type Settle = oneshot::Sender<Result<Response>>;

/// An authenticated stream.
pub(crate) struct Stream {
    pub(crate) peer: Peer,
    pub(crate) out: Arc<Outbox>,
    pub(crate) queued: Arc<AtomicUsize>,
    /// Requests sent on this stream and not yet settled. One lock orders inserting, answering,
    /// expiring and closing, so each request settles exactly once.
    pending: Mutex<Pending<Settle>>,
    /// Wakes the stream's timer when a request with an earlier deadline was inserted.
    pub(crate) timer: Notify,
    pub(crate) close_reason: Mutex<Option<String>>,
    /// The event receiver generation that was told of this stream's `Connect` (0: none).
    pub(crate) announced: AtomicU64,
    /// When the stream came up, and how long after that the peer was last heard from (ms).
    born: std::time::Instant,
    heard_ms: AtomicU64,
    max_queue: usize,
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
            pending: Mutex::new(Pending::new(opts.limits.max_pending)),
            timer: Notify::new(),
            close_reason: Mutex::new(None),
            announced: AtomicU64::new(0),
            born: now(),
            heard_ms: AtomicU64::new(0),
            max_queue: opts.limits.max_queue_bytes,
        }
    }

    /// Notes that the peer was heard from just now.
    pub(crate) fn heard(&self) {
        let ms = now().saturating_duration_since(self.born).as_millis();
        self.heard_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// When the peer was last heard from.
    pub(crate) fn last_heard(&self) -> std::time::Instant {
        let ms = self.heard_ms.load(Ordering::Relaxed);
        self.born
            .checked_add(std::time::Duration::from_millis(ms))
            .unwrap_or(self.born)
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

    /// Why the stream was closed, if it was closed locally.
    pub(crate) fn close_reason(&self) -> Option<String> {
        self.close_reason.lock().ok().and_then(|r| r.clone())
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
            crate::metrics::get().limit_hit(crate::metrics::Limit::MaxQueue);
            return Err(Error::LimitExceeded(why));
        }
        self.out.push(text).map_err(|_| {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            Error::NotConnected { req: None }
        })
    }

    pub(crate) fn pending(&self) -> MutexGuard<'_, Pending<Settle>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the pending table: every request waiting settles now, and every later one is
    /// refused at once (`closed`: the local instance closed; else the stream went away).
    pub(crate) fn close_pending(&self, closed: bool) {
        let why = if closed {
            Closed::Closed
        } else {
            Closed::Disconnected
        };
        let entries = self.pending().close(why);
        for e in entries {
            settle_closed(e, why);
        }
    }

    /// Settles the request `id` with an answer; false if none was pending under that id.
    pub(crate) fn answer(&self, id: &str, result: Result<Response>) -> bool {
        // Taken under the lock, settled outside it: the caller may run at once.
        let Some(entry) = self.pending().answer(id) else {
            return false;
        };
        let _ = entry.settle.send(result);
        true
    }

    /// Settles every request whose deadline is at or before `now` with a timeout.
    pub(crate) fn expire(&self, now: std::time::Instant) {
        let expired = self.pending().handle_timeout(now);
        for e in expired {
            let _ = e.settle.send(Err(Error::Timeout {
                timeout_ms: e.timeout_ms,
                req: e.req,
            }));
        }
    }
}

/// Settles a request whose table closed.
pub(crate) fn settle_closed(e: Entry<Settle>, why: Closed) {
    let _ = e.settle.send(Err(closed_error(why, e.req)));
}

/// The error of a request whose table is closed.
pub(crate) fn closed_error(why: Closed, req: Arc<str>) -> Error {
    match why {
        Closed::Closed => Error::Closed,
        Closed::Disconnected => Error::Disconnected { req },
    }
}

/// The runtime's clock (tokio's, so paused time in tests moves it too), as the sans-IO state
/// takes it.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
