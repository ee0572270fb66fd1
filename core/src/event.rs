//! The one event model every API and adapter maps: [`Event`] and its receiver.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::message::Message;
use crate::peer::Peer;
use crate::responder::Responder;

/// Something that happened on a [`crate::Client`] or [`crate::Server`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The server is listening (legacy `server::listen`).
    Listen {
        /// The bound address.
        address: SocketAddr,
    },
    /// A peer authenticated and its stream is up.
    Connect {
        /// The peer.
        peer: Peer,
    },
    /// An authenticated stream ended.
    Disconnect {
        /// The peer.
        peer: Peer,
        /// Why it ended.
        reason: String,
    },
    /// An event message (not a request or response): what legacy passes to `digest`.
    Message {
        /// The message, without `_sig`.
        msg: Message,
        /// The sender: `_r.uuid` for routed messages, else the stream's uuid.
        uuid: String,
        /// The stream it came on.
        peer: Peer,
    },
    /// Uuids became reachable, or stopped being reachable, through a peer (`rpc::online`,
    /// `rpc::offline`, the `routes` of `rpc::init`, or the peer's disconnect).
    Routes {
        /// The peer they are reachable through.
        peer: Peer,
        /// Newly reachable uuids.
        online: Vec<String>,
        /// No longer reachable uuids.
        offline: Vec<String>,
    },
    /// A request no Rust handler took; answer it with [`IncomingRequest::respond`].
    Request(IncomingRequest),
    /// A connection failed or was refused (wrong secret, protocol error, TLS, connect).
    Error {
        /// What went wrong.
        error: Error,
        /// The remote address, when known.
        address: Option<String>,
    },
}

/// A request waiting for an answer. Dropping it unanswered answers with the legacy
/// `{"error":"No such handler 'OP'"}`.
#[derive(Debug)]
pub struct IncomingRequest {
    /// The request body.
    pub msg: Message,
    /// The sender (see [`Event::Message`]).
    pub uuid: String,
    /// The stream it came on.
    pub peer: Peer,
    pub(crate) responder: Responder,
}

impl IncomingRequest {
    /// Answers with a value or an error value (use [`crate::error_object`] for `_Error`).
    pub fn respond(self, result: Result<Value, Value>) {
        self.responder.respond(result);
    }

    /// Answers with JSON texts: `err` (`None` for no error) and `resp` (`None` to omit it).
    /// Texts must be valid JSON; an invalid one is answered as an error instead.
    pub fn respond_raw(self, err: Option<&str>, resp: Option<&str>) {
        self.responder.respond_raw(err, resp);
    }

    /// Splits off the responder, to answer later or from another task.
    pub fn into_parts(self) -> (Message, String, Peer, Responder) {
        (self.msg, self.uuid, self.peer, self.responder)
    }
}

/// Receives [`Event`]s; `next` returns `None` once the object is closed.
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event, or `None` after close.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Up to `max` events already queued, waiting for at least one (`0` means closed).
    pub async fn next_batch(&mut self, out: &mut Vec<Event>, max: usize) -> usize {
        self.rx.recv_many(out, max).await
    }

    /// The next event if one is queued right now.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Blocking form of [`Events::next`], for threads outside the runtime.
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }
}
