//! The caller's half of a request and the timer that keeps its deadline.
//!
//! A request is queued for its stream's writer in the call that makes it, so one sender's
//! requests and events leave in call order; what the caller gets back is a future of the one
//! settlement. The stream's pending table (`protocol::pending`) decides every settlement; this
//! module only moves time into it: each stream has a timer task that sleeps until the table's
//! next deadline (or the dead-peer limit), whatever the event consumer or the reader is doing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::message::{Message, Response};
use crate::protocol::pending::{encode_request, Refused};
use crate::stream::{closed_error, now, Stream};

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

/// Registers a request on `stream` and queues its line, now. `body` is what goes on the wire
/// (with `_uuid` when routed); `msg` is the caller's message, for errors.
///
/// With `whole`, the reply settles with the answer as sent, `err` included
/// ([`Response::sent_err`]); else an answer with an error settles as [`Error::Remote`].
pub(crate) fn start(
    stream: &Arc<Stream>,
    body: &str,
    msg: &Message,
    timeout_ms: u64,
    whole: bool,
) -> RawReply {
    let req = msg.text().clone();
    #[cfg(feature = "otel")]
    let span = crate::trace::request_span(msg.op(), &stream.peer);
    let id = request_id();
    let (tx, rx) = oneshot::channel();
    let started = now();
    let inserted = stream
        .pending()
        .insert(&id, req.clone(), timeout_ms, started, tx);
    match inserted {
        Ok(i) => {
            if i.earliest {
                stream.timer.notify_one();
            }
        }
        Err((Refused::Closed(why), _)) => {
            // The stream is going away: settled now, not orphaned.
            return RawReply::ready(Err(closed_error(why, req)));
        }
        Err((Refused::Full { max }, _)) => {
            crate::metrics::get().limit_hit(crate::metrics::Limit::MaxPending);
            return RawReply::ready(Err(Error::LimitExceeded(format!(
                "{max} requests already pending on this stream"
            ))));
        }
        Err((Refused::Duplicate, _)) => {
            return RawReply::ready(Err(Error::Protocol(
                "request id already pending".to_owned(),
            )));
        }
    }
    // Only to a v2 peer, and only when an OpenTelemetry layer gave the span a context.
    #[cfg(feature = "otel")]
    let line = match crate::trace::traceparent(&span, &stream.peer) {
        Some(tp) => crate::protocol::pending::encode_traced_request(&id, body, &tp),
        None => encode_request(&id, body),
    };
    #[cfg(not(feature = "otel"))]
    let line = encode_request(&id, body);
    let waiting = RawReply {
        state: State::Waiting {
            rx,
            stream: stream.clone(),
            id: id.clone().into_boxed_str(),
            req,
            started,
        },
        whole,
        #[cfg(feature = "otel")]
        span,
    };
    if let Err(e) = stream.send(Arc::from(line)) {
        // Not queued: no answer can come. Dropping `waiting` takes the entry back out.
        drop(waiting);
        return RawReply::ready(Err(e));
    }
    waiting
}

/// A request's settlement, as JSON text: response, remote error, timeout, disconnect or
/// close. The request was sent when this was made; dropping it abandons the answer.
#[must_use = "the request is sent already; dropping this abandons its answer"]
pub struct RawReply {
    state: State,
    /// Settle with the answer as sent, even when it carries an error.
    whole: bool,
    /// The request's span (`iris_rpc.request`), closed when it settles.
    #[cfg(feature = "otel")]
    span: tracing::Span,
}

enum State {
    Ready(Option<Result<Response>>),
    Waiting {
        rx: oneshot::Receiver<Result<Response>>,
        stream: Arc<Stream>,
        id: Box<str>,
        req: Arc<str>,
        /// When it was sent, for the latency histogram.
        started: std::time::Instant,
    },
    Done,
}

impl std::fmt::Debug for RawReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Ready(_) => "settled",
            State::Waiting { .. } => "waiting",
            State::Done => "done",
        };
        f.debug_struct("RawReply").field("state", &state).finish()
    }
}

impl RawReply {
    pub(crate) fn ready(r: Result<Response>) -> Self {
        RawReply {
            state: State::Ready(Some(r)),
            whole: false,
            #[cfg(feature = "otel")]
            span: tracing::Span::none(),
        }
    }

    /// A reply that settled already with `err`: for code that must hand back a reply where no
    /// request could be made.
    pub fn failed(err: Error) -> Self {
        Self::ready(Err(err))
    }
}

impl Future for RawReply {
    type Output = Result<Response>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (out, started) = match &mut self.state {
            State::Ready(r) => (r.take().unwrap_or(Err(Error::Closed)), None),
            State::Waiting {
                rx, req, started, ..
            } => match Pin::new(rx).poll(cx) {
                Poll::Ready(r) => (
                    r.unwrap_or_else(|_| Err(Error::Disconnected { req: req.clone() })),
                    Some(*started),
                ),
                Poll::Pending => return Poll::Pending,
            },
            // Polled after it settled: counted already.
            State::Done => return Poll::Ready(Err(Error::Closed)),
        };
        crate::metrics::get().request_settled(&out, started);
        #[cfg(feature = "otel")]
        {
            crate::trace::settled(&self.span, crate::metrics::outcome(&out));
            self.span = tracing::Span::none();
        }
        // Settled: the table let go of the entry already, nothing to cancel on drop.
        self.state = State::Done;
        Poll::Ready(if self.whole {
            out
        } else {
            out.and_then(Response::checked)
        })
    }
}

impl Drop for RawReply {
    fn drop(&mut self) {
        if let State::Waiting { stream, id, .. } = &self.state {
            stream.pending().cancel(id);
        }
    }
}

/// [`RawReply`] with the answer parsed: what [`crate::Endpoint::request`] returns.
#[must_use = "the request is sent already; dropping this abandons its answer"]
#[derive(Debug)]
pub struct Reply(pub(crate) RawReply);

impl Future for Reply {
    type Output = Result<Value>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map_ok(|r| r.value())
    }
}

/// Keeps `stream`'s deadlines: settles requests that time out, and ends the stream when the
/// peer has been silent past `dead_after`. Runs until the stream ends.
pub(crate) async fn run_timer(stream: Arc<Stream>, dead_after: Option<Duration>) {
    loop {
        let next = stream.pending().poll_timeout();
        let dead_at = dead_after.map(|t| stream.last_heard() + t);
        let wake = match (next, dead_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            biased;
            _ = stream.peer.0.shutdown.wait() => return,
            _ = stream.timer.notified() => {}
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake.unwrap_or_else(now))), if wake.is_some() => {
                let t = now();
                stream.expire(t);
                if let Some(limit) = dead_after {
                    if t.saturating_duration_since(stream.last_heard()) > limit {
                        stream.close(format!(
                            "dead peer: silent for more than {} ms",
                            limit.as_millis()
                        ));
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::options::Options;
    use crate::outbox::Outbox;
    use crate::peer::{Peer, PeerInner};
    use crate::protocol::Mode;
    use crate::shutdown::Shutdown;

    fn empty() -> Message {
        Message::from_json("{}").unwrap()
    }

    fn stream() -> Arc<Stream> {
        let peer = Peer(Arc::new(PeerInner {
            uuid: "peer".into(),
            address: "test".into(),
            designation: None,
            mac: None,
            cipher: false,
            mode: Mode::Legacy,
            shutdown: Arc::new(Shutdown::default()),
        }));
        Arc::new(Stream::new(
            peer,
            Arc::new(Outbox::default()),
            Arc::new(AtomicUsize::new(0)),
            &Options::new("secret"),
        ))
    }

    fn poll_once(r: &mut RawReply) -> Poll<Result<Response>> {
        Pin::new(r).poll(&mut Context::from_waker(Waker::noop()))
    }

    /// The orphaned-request race, driven step by step: the stream's table is closed (its
    /// reader ended) while its writer still takes lines. A request made then used to be
    /// inserted into the drained table and wait forever; it is refused at once.
    #[test]
    fn a_request_made_after_its_stream_closed_settles_at_once() {
        let s = stream();
        let waiting = start(&s, "{}", &empty(), 60_000, false);
        s.close_pending(false);
        let late = start(&s, "{}", &empty(), 60_000, false);
        for mut r in [waiting, late] {
            match poll_once(&mut r) {
                Poll::Ready(Err(Error::Disconnected { .. })) => {}
                other => panic!("not settled as disconnected: {other:?}"),
            }
        }
        assert_eq!(s.pending().len(), 0);
    }

    #[test]
    fn a_dropped_reply_leaves_nothing_pending_and_an_answer_settles_once() {
        let s = stream();
        drop(start(&s, "{}", &empty(), 60_000, false));
        assert_eq!(s.pending().len(), 0);
        let mut r = start(&s, "{}", &empty(), 60_000, false);
        let mut lines = Vec::new();
        s.out.take(&mut lines, 16);
        assert_eq!(lines.len(), 2, "both requests were queued when made");
        let id = crate::protocol::message::parse(&lines[1])
            .ok()
            .and_then(|p| match p.kind {
                crate::protocol::Kind::Request { id, .. } => {
                    serde_json::from_str::<String>(id.get()).ok()
                }
                _ => None,
            })
            .expect("a request line");
        assert!(s.answer(
            &id,
            Ok(Response {
                resp: None,
                err: None
            })
        ));
        assert!(
            !s.answer(
                &id,
                Ok(Response {
                    resp: None,
                    err: None
                })
            ),
            "answered twice"
        );
        assert!(matches!(poll_once(&mut r), Poll::Ready(Ok(_))));
    }

    #[test]
    fn the_limit_of_pending_requests_is_a_clear_error() {
        let s = stream();
        let mut opts = Options::new("secret");
        opts.limits.max_pending = 1;
        let s2 = Arc::new(Stream::new(
            s.peer.clone(),
            Arc::new(Outbox::default()),
            Arc::new(AtomicUsize::new(0)),
            &opts,
        ));
        let _first = start(&s2, "{}", &empty(), 60_000, false);
        let mut second = start(&s2, "{}", &empty(), 60_000, false);
        match poll_once(&mut second) {
            Poll::Ready(Err(Error::LimitExceeded(why))) => assert!(why.contains("1 requests")),
            other => panic!("{other:?}"),
        }
    }
}
