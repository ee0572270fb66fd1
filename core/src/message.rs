//! [`Message`]: a JSON object as text, the unit every API sends and receives, and
//! [`Response`], the answer to a request.

use std::sync::{Arc, LazyLock};

use memchr::memmem;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::protocol::message::strip_sig;

// Searchers built once: `memmem::find` would build one per message.
static SIG_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"_sig\""));
static OP_TIMEOUT_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"op_timeout\""));

/// One JSON object as text (without `_sig`), cheap to clone and share between streams.
///
/// Bodies stay text so adapters can hand them to their host's JSON parser; Rust code parses
/// them with [`Message::value`] or [`Message::parse`].
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    text: Arc<str>,
    op: Option<Arc<str>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Message {
    /// A message from any serializable value; it must serialize to a JSON object.
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let text = serde_json::to_string(value)
            .map_err(|e| Error::Config(format!("message does not serialize: {e}")))?;
        Self::checked(text)
    }

    /// A message from JSON text, validated; it must be an object.
    pub fn from_json(text: &str) -> Result<Self> {
        Self::checked(text.to_owned())
    }

    /// One parse per message: reading `op` also validates the whole text.
    fn checked(text: String) -> Result<Self> {
        if !text.trim_start().starts_with('{') {
            return Err(Error::Config("a message must be a JSON object".into()));
        }
        // `_sig` is the protocol's; a caller's own is dropped, as it would be overwritten.
        let text = if SIG_KEY.find(text.as_bytes()).is_some() {
            strip_sig(&text).into_owned()
        } else {
            text
        };
        let op = crate::protocol::message::op_of(&text)
            .map_err(|e| Error::Config(format!("message is not valid JSON: {e}")))?
            .map(|o| Arc::from(o.as_ref()));
        Ok(Message {
            text: Arc::from(text),
            op,
        })
    }

    /// A received message: already validated.
    pub(crate) fn received(text: &str, op: Option<&str>) -> Self {
        Message {
            text: Arc::from(text),
            op: op.map(Arc::from),
        }
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The shared JSON text.
    pub fn text(&self) -> &Arc<str> {
        &self.text
    }

    /// `op`, when it is a string.
    pub fn op(&self) -> Option<&str> {
        self.op.as_deref()
    }

    /// The message as a [`Value`].
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// The message deserialized into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.text)
            .map_err(|e| Error::Protocol(format!("unexpected message shape: {e}")))
    }

    /// `op_timeout` in milliseconds, if the message sets one.
    pub(crate) fn op_timeout(&self) -> Option<u64> {
        #[derive(serde::Deserialize)]
        struct T {
            op_timeout: Option<Value>,
        }
        OP_TIMEOUT_KEY.find(self.text.as_bytes())?;
        let t: T = serde_json::from_str(&self.text).ok()?;
        match t.op_timeout? {
            Value::Number(n) => n.as_f64().filter(|f| *f > 0.0).map(|f| f as u64),
            _ => None,
        }
    }
}

/// Anything that can be sent as a message: a [`Message`], a [`Value`] object, or JSON text.
pub trait IntoMessage {
    /// The message, or [`Error::Config`] if this is not a JSON object.
    fn into_message(self) -> Result<Message>;
}

impl IntoMessage for Message {
    fn into_message(self) -> Result<Message> {
        Ok(self)
    }
}

impl IntoMessage for &Message {
    fn into_message(self) -> Result<Message> {
        Ok(self.clone())
    }
}

impl IntoMessage for Value {
    fn into_message(self) -> Result<Message> {
        Message::new(&self)
    }
}

impl IntoMessage for &Value {
    fn into_message(self) -> Result<Message> {
        Message::new(self)
    }
}

impl IntoMessage for &str {
    fn into_message(self) -> Result<Message> {
        Message::from_json(self)
    }
}

impl IntoMessage for String {
    fn into_message(self) -> Result<Message> {
        Message::from_json(&self)
    }
}

/// The answer to a request: the peer's `resp`, any JSON value, or absent.
#[derive(Debug, Clone)]
pub struct Response {
    /// As sent: `None` when absent, the text `null` for null.
    pub(crate) resp: Option<Box<RawValue>>,
    /// As sent: `None` when absent, the text `null` for null.
    pub(crate) err: Option<Box<RawValue>>,
}

impl Response {
    /// The `resp` JSON text, `None` when the peer sent none (or `null`).
    pub fn raw(&self) -> Option<&str> {
        self.resp
            .as_deref()
            .map(RawValue::get)
            .filter(|r| *r != "null")
    }

    /// `err` exactly as the peer sent it: `None` when the answer had no `err`, `"null"` for
    /// null. Only answers from [`crate::Client::request_answer`] (and the Server's) can carry
    /// an error here; other requests turn one into [`Error::Remote`].
    pub fn sent_err(&self) -> Option<&str> {
        self.err.as_deref().map(RawValue::get)
    }

    /// `resp` exactly as the peer sent it: `None` when absent, `"null"` for null.
    pub fn sent_resp(&self) -> Option<&str> {
        self.resp.as_deref().map(RawValue::get)
    }

    /// [`Error::Remote`] when the answer carries an error (an `err` other than null).
    pub(crate) fn checked(self) -> Result<Self> {
        match self.sent_err() {
            Some(e) if e != "null" => Err(Error::Remote(std::sync::Arc::from(e))),
            _ => Ok(self),
        }
    }

    /// `resp` as a [`Value`] (`Null` when absent).
    pub fn value(&self) -> Value {
        self.raw()
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or(Value::Null)
    }

    /// `resp` deserialized into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.raw().unwrap_or("null"))
            .map_err(|e| Error::Protocol(format!("unexpected response shape: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_json_refuses_what_is_not_one_json_object() {
        for bad in ["{\"op\":", "{\"op\":1} x", "[1]", "\"s\"", "{\"a\":tru}"] {
            let err = Message::from_json(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Config, "{bad}");
        }
        let m = Message::from_json(r#"{"op":"x","_sig":"0123456789abcdef"}"#).unwrap();
        assert_eq!((m.as_str(), m.op()), (r#"{"op":"x"}"#, Some("x")));
    }
}
