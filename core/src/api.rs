//! The methods [`crate::Client`] and [`crate::Server`] share, written once over the engine.

use std::sync::Arc;

use crate::engine::Engine;

macro_rules! shared_api {
    ($ty:ty) => {
        impl $ty {
            pub(crate) fn engine(&self) -> &std::sync::Arc<$crate::engine::Engine> {
                &self.engine
            }

            /// This instance's uuid.
            pub fn uuid(&self) -> &str {
                &self.engine().identity.uuid
            }

            /// Calls `f(msg, uuid, peer)` for every event message whose `op` is `op`.
            pub fn on<F>(&self, op: &str, f: F) -> $crate::engine::HandlerId
            where
                F: Fn(&$crate::message::Message, &str, &$crate::peer::Peer) + Send + Sync + 'static,
            {
                self.engine().on(op, std::sync::Arc::new(f))
            }

            /// Calls `f(msg, uuid, peer)` for every event message (legacy `digest`).
            pub fn digest<F>(&self, f: F) -> $crate::engine::HandlerId
            where
                F: Fn(&$crate::message::Message, &str, &$crate::peer::Peer) + Send + Sync + 'static,
            {
                self.engine().digest(std::sync::Arc::new(f))
            }

            /// Adds a filter run, in order, before events and requests are delivered; a refused
            /// request is answered with the filter's error value.
            pub fn filter<F>(&self, f: F) -> $crate::engine::HandlerId
            where
                F: Fn(
                        &$crate::message::Message,
                        &$crate::peer::Peer,
                    ) -> std::result::Result<(), serde_json::Value>
                    + Send
                    + Sync
                    + 'static,
            {
                self.engine().filter(std::sync::Arc::new(f))
            }

            /// Answers requests whose `op` is `op` with the handler's result: `Ok(resp)` or
            /// `Err(err)` (see [`crate::error_object`]). Legacy rules apply: with two handlers
            /// for one op, requests get "Too many handlers".
            pub fn handle<F, Fut>(&self, op: &str, f: F) -> $crate::engine::HandlerId
            where
                F: Fn($crate::engine::Request) -> Fut + Send + Sync + 'static,
                Fut: std::future::Future<
                        Output = std::result::Result<serde_json::Value, serde_json::Value>,
                    > + Send
                    + 'static,
            {
                self.engine()
                    .handle(op, std::sync::Arc::new(move |r| Box::pin(f(r))))
            }

            /// Removes a listener, digest, filter or handler.
            pub fn off(&self, id: $crate::engine::HandlerId) -> bool {
                self.engine().off(id)
            }

            /// The event receiver. Requests that no handler takes arrive here as
            /// [`crate::Event::Request`]. Calling it again replaces the previous receiver.
            ///
            /// Reading from peers pauses while the receiver is full, so do not wait on a
            /// request's answer inside the loop that drains it: spawn that work instead.
            pub fn events(&self) -> $crate::event::Events {
                self.engine().events()
            }

            /// Sends `msg` to every connected stream; returns how many. Fails with
            /// [`crate::Error::NotConnected`] when none is connected.
            pub fn dispatch<M>(&self, msg: M) -> $crate::error::Result<usize>
            where
                M: $crate::message::IntoMessage,
            {
                self.engine().dispatch(&msg.into_message()?)
            }

            /// Sends `msg` to the stream of peer `uuid`.
            pub fn dispatch_to<M>(&self, uuid: &str, msg: M) -> $crate::error::Result<()>
            where
                M: $crate::message::IntoMessage,
            {
                self.engine().dispatch_to(uuid, &msg.into_message()?)
            }

            /// Sends a request to the only connected stream and waits for its answer. It
            /// settles exactly once: response, remote error, timeout (`op_timeout` in ms in the
            /// message, else the `timeout` option), disconnect or close.
            pub async fn request<M>(&self, msg: M) -> $crate::error::Result<serde_json::Value>
            where
                M: $crate::message::IntoMessage,
            {
                Ok(self.request_raw(None, &msg.into_message()?).await?.value())
            }

            /// [`Self::request`] to the stream of peer `uuid`.
            pub async fn request_to<M>(
                &self,
                uuid: &str,
                msg: M,
            ) -> $crate::error::Result<serde_json::Value>
            where
                M: $crate::message::IntoMessage,
            {
                Ok(self
                    .request_raw(Some(uuid), &msg.into_message()?)
                    .await?
                    .value())
            }

            /// A request whose answer stays JSON text.
            pub async fn request_raw(
                &self,
                uuid: Option<&str>,
                msg: &$crate::message::Message,
            ) -> $crate::error::Result<$crate::message::Response> {
                self.engine().request(uuid, msg).await
            }

            /// A request answered whole: the answer's `err` and `resp` exactly as the peer sent
            /// them ([`crate::Response::sent_err`], [`crate::Response::sent_resp`]), even when
            /// `err` is set, as legacy callbacks get both. Only local failures (timeout,
            /// disconnect, close, ...) are errors.
            pub async fn request_answer(
                &self,
                uuid: Option<&str>,
                msg: &$crate::message::Message,
            ) -> $crate::error::Result<$crate::message::Response> {
                self.engine().request_answer(uuid, msg, None).await
            }

            /// [`Self::request_raw`] with its own timeout, overriding `op_timeout` and the
            /// `timeout` option.
            pub async fn request_raw_timeout(
                &self,
                uuid: Option<&str>,
                msg: &$crate::message::Message,
                timeout: std::time::Duration,
            ) -> $crate::error::Result<$crate::message::Response> {
                self.engine().request_with(uuid, msg, Some(timeout)).await
            }

            /// Connected peers.
            pub fn peers(&self) -> Vec<$crate::peer::Peer> {
                self.engine().peers()
            }

            /// Uuids reachable through routers: `(uuid, uuid of the peer that reaches it)`.
            pub fn routes(&self) -> Vec<(String, String)> {
                self.engine().route_table()
            }

            /// Counts of connections, streams, pending requests and queued bytes.
            pub fn stats(&self) -> $crate::engine::Stats {
                self.engine().stats()
            }

            /// Waits until at least one stream is authenticated, or `timeout` passes
            /// ([`crate::Error::NotConnected`]).
            pub async fn wait_connected(
                &self,
                timeout: std::time::Duration,
            ) -> $crate::error::Result<()> {
                let deadline = tokio::time::Instant::now() + timeout;
                while !self.is_connected() {
                    if self.engine().shutdown.is_triggered() {
                        return Err($crate::error::Error::Closed);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err($crate::error::Error::NotConnected { req: None });
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Ok(())
            }

            /// True while any stream is authenticated and up.
            pub fn is_connected(&self) -> bool {
                self.engine().is_connected()
            }

            /// Sends `{"op":"ping","data":..}` to every stream now.
            pub fn ping(&self) -> $crate::error::Result<usize> {
                self.engine().dispatch(&self.engine().ping_message()?)
            }

            /// Sets the `data` of ping messages.
            pub fn set_ping_data(&self, data: Option<serde_json::Value>) {
                self.engine().set_ping_data(data)
            }

            /// Closes everything: streams end, pending requests settle with
            /// [`crate::Error::Closed`], the event receiver returns `None`.
            pub async fn close(&self) {
                self.engine().close().await
            }
        }
    };
}

pub(crate) use shared_api;

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
