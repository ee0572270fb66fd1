//! What arrives on a stream, after its record layer: events to listeners, digests and the
//! event receiver; requests to handlers (or the receiver); answers to the pending table;
//! control messages to the route table. A listener, digest, filter or handler that panics
//! costs that one call: it is reported as an [`Event::Error`] and the stream lives on.

use std::sync::Arc;

use crate::engine::Engine;
use crate::error::Error;
use crate::event::{Event, IncomingRequest};
use crate::handlers::{
    call_handler, call_listener, handler_panicked, poll_handler, Refusal, Request,
};
use crate::message::{Message, Response};
use crate::peer::Peer;
use crate::protocol::message::strip_sig;
use crate::protocol::{Control, Kind, Parsed};
use crate::responder::Responder;
use crate::stream::Stream;

impl Engine {
    /// Delivers one line received on `stream`; `Err` ends the stream with that reason.
    pub(crate) async fn deliver(
        &self,
        stream: &Arc<Stream>,
        parsed: Parsed<'_>,
    ) -> std::result::Result<(), String> {
        let peer = &stream.peer;
        match parsed.kind {
            Kind::Event {
                op, routed_from, ..
            } => {
                let msg = if parsed.sig.is_some() {
                    Message::received(&strip_sig(parsed.text), op.as_deref())
                } else {
                    Message::received(parsed.text, op.as_deref())
                };
                let uuid = self.sender(peer, routed_from.as_deref());
                self.on_event(msg, uuid, peer).await;
            }
            Kind::Request {
                id,
                body,
                meta,
                #[cfg(feature = "otel")]
                traceparent,
            } => {
                let msg = Message::received(body, meta.op.as_deref());
                let uuid = self.sender(peer, meta.routed_from.as_deref()).to_owned();
                #[cfg(feature = "otel")]
                let responder =
                    Responder::new(stream.clone(), id, msg.op(), traceparent.as_deref());
                #[cfg(not(feature = "otel"))]
                let responder = Responder::new(stream.clone(), id, msg.op());
                self.on_request(stream, responder, msg, uuid).await;
            }
            Kind::Response { id, err, resp } => {
                // The answer as sent; the caller's reply turns an error in it into
                // `Error::Remote` unless it asked for the whole answer.
                let answer = Response {
                    resp: resp.map(|r| r.to_owned()),
                    err: err.map(|e| e.to_owned()),
                };
                let settled = id.is_some_and(|id| stream.answer(&id, Ok(answer)));
                if !settled {
                    tracing::debug!(peer = %peer.uuid(), "response for no pending request");
                }
            }
            // Rare: boxed, so their futures do not make every line's future larger.
            Kind::Control(Control::Init { routes, .. }) => {
                Box::pin(self.add_routes(peer, &routes)).await
            }
            Kind::Control(Control::Online(Some(uuid))) => {
                Box::pin(self.add_routes(peer, &[uuid.into_owned()])).await
            }
            Kind::Control(Control::Offline(Some(uuid))) => {
                Box::pin(self.remove_route(peer, &uuid)).await
            }
            Kind::Control(Control::Auth(op)) => {
                return Err(format!("protocol error: {op} after authentication"));
            }
            Kind::Control(_) => {}
        }
        Ok(())
    }

    /// Reports a panic in user code as an error event (boxed: rare).
    async fn report_panic(&self, what: &str, op: Option<&str>, panic: String, peer: &Peer) {
        let op = op.unwrap_or("");
        tracing::error!(peer = %peer.uuid(), %op, %panic, "{what} panicked");
        Box::pin(self.emit(Event::Error {
            error: Error::Handler(format!("{what} for '{op}' panicked: {panic}")),
            address: Some(peer.address().to_owned()),
        }))
        .await;
    }

    pub(crate) async fn on_event(&self, msg: Message, uuid: &str, peer: &Peer) {
        match self.handlers.check(&msg, peer) {
            Ok(()) => {}
            Err(Refusal::Refused(_)) => return,
            Err(Refusal::Panicked(p)) => {
                return self.report_panic("a filter", msg.op(), p, peer).await;
            }
        }
        let (digests, listeners) = self.handlers.for_event(msg.op());
        let all = digests
            .iter()
            .chain(listeners.iter().flat_map(|l| l.iter()));
        for (_, l) in all {
            if let Err(p) = call_listener(l, &msg, uuid, peer) {
                self.report_panic("a listener", msg.op(), p, peer).await;
            }
        }
        if !self.has_receiver() {
            return;
        }
        self.emit(Event::Message {
            msg,
            uuid: uuid.to_owned(),
            peer: peer.clone(),
        })
        .await;
    }

    pub(crate) async fn on_request(
        &self,
        stream: &Arc<Stream>,
        mut responder: Responder,
        msg: Message,
        uuid: String,
    ) {
        let peer = stream.peer.clone();
        match self.handlers.check(&msg, &peer) {
            Ok(()) => {}
            Err(Refusal::Refused(v)) => return responder.send(Some(&v.to_string()), None),
            Err(Refusal::Panicked(p)) => {
                responder.send(Some(&handler_panicked().to_string()), None);
                return self.report_panic("a filter", msg.op(), p, &peer).await;
            }
        }
        let handlers = self.handlers.for_request(msg.op());
        match handlers.as_deref().map(Vec::as_slice) {
            Some([(_, h)]) => {
                // Polled once here, on the stream's reader: a handler that answers at once
                // costs no task, and its answer leaves with the others of this read. One that
                // has to wait goes on in a task of its own.
                let op = msg.op().map(str::to_owned);
                let req = Request { msg, uuid, peer };
                // The handler runs in the request's span: what it sends is part of the trace.
                #[cfg(feature = "otel")]
                let span = responder.span().clone();
                #[cfg(feature = "otel")]
                let entered = span.enter();
                let call = call_handler(h, req);
                #[cfg(feature = "otel")]
                drop(entered);
                let mut fut = match call {
                    Ok(f) => f,
                    Err(p) => {
                        responder.respond(Err(handler_panicked()));
                        return self
                            .report_panic("a request handler", op.as_deref(), p, &stream.peer)
                            .await;
                    }
                };
                let first = std::future::poll_fn(|cx| {
                    #[cfg(feature = "otel")]
                    let _entered = span.enter();
                    std::task::Poll::Ready(match poll_handler(fut.as_mut(), cx) {
                        std::task::Poll::Ready(v) => Some(v),
                        std::task::Poll::Pending => None,
                    })
                })
                .await;
                match first {
                    Some(result) => responder.respond(result),
                    None => {
                        tokio::spawn(async move {
                            let result = std::future::poll_fn(|cx| {
                                #[cfg(feature = "otel")]
                                let _entered = span.enter();
                                poll_handler(fut.as_mut(), cx)
                            })
                            .await;
                            responder.respond(result);
                        });
                    }
                }
            }
            Some([_, _, ..]) => {
                let op = msg.op().unwrap_or_default();
                let err = serde_json::json!({ "error": format!("Too many handlers for '{op}'") });
                responder.send(Some(&err.to_string()), None);
            }
            _ => {
                if self.has_receiver() {
                    self.emit(Event::Request(IncomingRequest {
                        msg,
                        uuid,
                        peer,
                        responder,
                    }))
                    .await;
                }
                // Without a sink, dropping the responder answers "No such handler".
            }
        }
    }
}
