//! Sending: events to every stream or to one uuid, and requests. Everything here queues in
//! the call itself and never waits, so one sender's messages to one stream leave in call order,
//! events and requests alike.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::requests::{self, RawReply};
use crate::stream::Stream;

impl Engine {
    /// Sends to every stream; `Err(NotConnected)` when there is none.
    pub(crate) fn dispatch(&self, msg: &Message) -> Result<usize> {
        // Sending only queues (it never waits), so it runs under the read lock: no Vec of
        // streams per message.
        let streams = self.streams();
        if streams.is_empty() {
            return Err(Error::NotConnected {
                req: Some(msg.text().clone()),
            });
        }
        Ok(streams
            .values()
            .filter(|s| s.send(msg.text().clone()).is_ok())
            .count())
    }

    /// Sends to the peer `uuid`, directly or through the router that reaches it (adding
    /// `_uuid` so the router can deliver it).
    pub(crate) fn dispatch_to(&self, uuid: &str, msg: &Message) -> Result<()> {
        let h = self
            .holder(uuid)
            .ok_or_else(|| Error::NoSuchStream(uuid.to_owned()))?;
        if h.routed {
            h.stream.send(Arc::from(addressed(msg.as_str(), uuid)?))
        } else {
            h.stream.send(msg.text().clone())
        }
    }

    /// The stream a request without uuid goes to: exactly one must be connected.
    fn only_stream(&self, msg: &Message) -> Result<Arc<Stream>> {
        let streams = self.streams();
        match streams.len() {
            0 => Err(Error::NotConnected {
                req: Some(msg.text().clone()),
            }),
            1 => streams
                .values()
                .next()
                .cloned()
                .ok_or(Error::NotConnected { req: None }),
            _ => Err(Error::MultipleStreams {
                req: msg.text().clone(),
            }),
        }
    }

    /// Sends a request now and returns the future of its single settlement. The timeout is
    /// `timeout`, else the message's `op_timeout`, else the `timeout` option.
    pub(crate) fn start_request(
        &self,
        uuid: Option<&str>,
        msg: &Message,
        timeout: Option<Duration>,
    ) -> RawReply {
        self.try_start_request(uuid, msg, timeout, false)
            .unwrap_or_else(RawReply::failed)
    }

    /// [`Engine::start_request`] whose reply settles with the whole answer, `err` included.
    pub(crate) fn start_answer(
        &self,
        uuid: Option<&str>,
        msg: &Message,
        timeout: Option<Duration>,
    ) -> RawReply {
        self.try_start_request(uuid, msg, timeout, true)
            .unwrap_or_else(RawReply::failed)
    }

    fn try_start_request(
        &self,
        uuid: Option<&str>,
        msg: &Message,
        timeout: Option<Duration>,
        whole: bool,
    ) -> Result<RawReply> {
        if self.shutdown.is_triggered() {
            return Err(Error::Closed);
        }
        let (stream, routed) = match uuid {
            Some(u) => {
                let h = self
                    .holder(u)
                    .ok_or_else(|| Error::NoSuchStream(u.to_owned()))?;
                (h.stream, h.routed)
            }
            None => (self.only_stream(msg)?, false),
        };
        let addressed_body;
        let body = match (routed, uuid) {
            (true, Some(u)) => {
                addressed_body = addressed(msg.as_str(), u)?;
                addressed_body.as_str()
            }
            _ => msg.as_str(),
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let timeout_ms = timeout
            .map(ms)
            .or_else(|| msg.op_timeout())
            .unwrap_or_else(|| ms(self.opts.timeout));
        Ok(requests::start(&stream, body, msg, timeout_ms, whole))
    }
}

/// `text` with `_uuid` set to `uuid`, for a peer reached through a router.
fn addressed(text: &str, uuid: &str) -> Result<String> {
    crate::protocol::message::rewrite(text, &[], &[("_uuid", Value::String(uuid.to_owned()))])
        .map_err(|e| Error::Config(e.to_string()))
}
