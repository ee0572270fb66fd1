//! [`Endpoint`]: what a [`crate::Client`] and a [`crate::Server`] have in common. Both
//! dereference to it, so `client.dispatch(..)` and `server.request_to(..)` are these methods.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::engine::{Engine, Stats};
use crate::error::{Error, Result};
use crate::event::Events;
use crate::handlers::{HandlerId, Request};
use crate::message::{IntoMessage, Message};
use crate::peer::Peer;
use crate::requests::{RawReply, Reply};

/// The methods shared by clients and servers: handlers, sending, requests, peers, lifecycle.
pub struct Endpoint {
    pub(crate) engine: Arc<Engine>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("uuid", &self.engine.identity.uuid)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Endpoint { engine }
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// This instance's uuid.
    pub fn uuid(&self) -> &str {
        &self.engine.identity.uuid
    }

    /// Calls `f(msg, uuid, peer)` for every event message whose `op` is `op`. A listener that
    /// panics is reported as an [`crate::Event::Error`]; the stream goes on.
    pub fn on<F>(&self, op: &str, f: F) -> HandlerId
    where
        F: Fn(&Message, &str, &Peer) + Send + Sync + 'static,
    {
        self.engine.handlers.on(op, Arc::new(f))
    }

    /// Calls `f(msg, uuid, peer)` for every event message (legacy `digest`).
    pub fn digest<F>(&self, f: F) -> HandlerId
    where
        F: Fn(&Message, &str, &Peer) + Send + Sync + 'static,
    {
        self.engine.handlers.digest(Arc::new(f))
    }

    /// Adds a filter run, in order, before events and requests are delivered; a refused
    /// request is answered with the filter's error value. A filter that panics refuses.
    pub fn filter<F>(&self, f: F) -> HandlerId
    where
        F: Fn(&Message, &Peer) -> std::result::Result<(), Value> + Send + Sync + 'static,
    {
        self.engine.handlers.filter(Arc::new(f))
    }

    /// Answers requests whose `op` is `op` with the handler's result: `Ok(resp)` or
    /// `Err(err)` (see [`crate::error_object`]). Legacy rules apply: with two handlers for one
    /// op, requests get "Too many handlers". A handler that panics is answered with an error.
    pub fn handle<F, Fut>(&self, op: &str, f: F) -> HandlerId
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<Value, Value>> + Send + 'static,
    {
        self.engine
            .handlers
            .handle(op, Arc::new(move |r| Box::pin(f(r))))
    }

    /// Removes a listener, digest, filter or handler.
    pub fn off(&self, id: HandlerId) -> bool {
        self.engine.handlers.off(id)
    }

    /// The event receiver. Requests that no handler takes arrive here as
    /// [`crate::Event::Request`]. Calling it again replaces the previous receiver; each new
    /// receiver starts with a `Connect` for every stream already up.
    ///
    /// Reading from peers pauses while the receiver is full (deadlines still fire), so do not
    /// wait on a request's answer inside the loop that drains it: spawn that work instead.
    pub fn events(&self) -> Events {
        self.engine.events()
    }

    /// Sends `msg` to every connected stream; returns how many. Fails with
    /// [`crate::Error::NotConnected`] when none is connected.
    pub fn dispatch<M: IntoMessage>(&self, msg: M) -> Result<usize> {
        self.engine.dispatch(&msg.into_message()?)
    }

    /// Sends `msg` to the stream of peer `uuid`.
    pub fn dispatch_to<M: IntoMessage>(&self, uuid: &str, msg: M) -> Result<()> {
        self.engine.dispatch_to(uuid, &msg.into_message()?)
    }

    /// Sends a request to the only connected stream, now, and returns the future of its
    /// answer. It settles exactly once: response, remote error, timeout (`op_timeout` in ms in
    /// the message, else the `timeout` option), disconnect or close. Because it is sent in
    /// this call, requests and events made one after another leave in that order.
    pub fn request<M: IntoMessage>(&self, msg: M) -> Reply {
        Reply(self.raw(None, msg, None))
    }

    /// [`Self::request`] to the stream of peer `uuid`.
    pub fn request_to<M: IntoMessage>(&self, uuid: &str, msg: M) -> Reply {
        Reply(self.raw(Some(uuid), msg, None))
    }

    fn raw<M: IntoMessage>(&self, uuid: Option<&str>, msg: M, t: Option<Duration>) -> RawReply {
        match msg.into_message() {
            Ok(m) => self.engine.start_request(uuid, &m, t),
            Err(e) => RawReply::ready(Err(e)),
        }
    }

    /// A request whose answer stays JSON text ([`Response`]).
    pub fn request_raw(&self, uuid: Option<&str>, msg: &Message) -> RawReply {
        self.engine.start_request(uuid, msg, None)
    }

    /// A request answered whole: the answer's `err` and `resp` exactly as the peer sent them
    /// ([`crate::Response::sent_err`], [`crate::Response::sent_resp`]), even when `err` is set, as legacy
    /// callbacks get both. Only local failures (timeout, disconnect, close, ...) are errors.
    pub fn request_answer(&self, uuid: Option<&str>, msg: &Message) -> RawReply {
        self.engine.start_answer(uuid, msg, None)
    }

    /// [`Self::request_raw`] with its own timeout, overriding `op_timeout` and the `timeout`
    /// option.
    pub fn request_raw_timeout(
        &self,
        uuid: Option<&str>,
        msg: &Message,
        timeout: Duration,
    ) -> RawReply {
        self.engine.start_request(uuid, msg, Some(timeout))
    }

    /// Connected peers.
    pub fn peers(&self) -> Vec<Peer> {
        self.engine.peers()
    }

    /// Uuids reachable through routers: `(uuid, uuid of the peer that reaches it)`.
    pub fn routes(&self) -> Vec<(String, String)> {
        self.engine.route_table()
    }

    /// Counts of connections, streams, pending requests and queued bytes.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Waits until at least one stream is authenticated, or `timeout` passes
    /// ([`crate::Error::NotConnected`]).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_connected() {
            if self.engine.shutdown.is_triggered() {
                return Err(Error::Closed);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::NotConnected { req: None });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// True while any stream is authenticated and up.
    pub fn is_connected(&self) -> bool {
        self.engine.is_connected()
    }

    /// Sends `{"op":"ping","data":..}` to every stream now.
    pub fn ping(&self) -> Result<usize> {
        self.engine.dispatch(&self.engine.ping_message()?)
    }

    /// Sets the `data` of ping messages.
    pub fn set_ping_data(&self, data: Option<Value>) {
        self.engine.set_ping_data(data)
    }

    /// Closes everything: streams end, pending requests settle with
    /// [`crate::Error::Closed`], the event receiver returns `None`.
    pub async fn close(&self) {
        self.engine.close().await
    }
}

/// Starts the ping timer when pinging is on.
pub(crate) fn spawn_pinger(engine: &Arc<Engine>) {
    if !engine.opts.ping {
        return;
    }
    let e = engine.clone();
    engine.task_started();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(e.opts.ping_freq);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = e.shutdown.wait() => break,
                _ = tick.tick() => {
                    if let Ok(m) = e.ping_message() {
                        let _ = e.dispatch(&m);
                    }
                }
            }
        }
        e.task_finished();
    });
}
