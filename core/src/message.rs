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
static ESCAPE: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\\u"));
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

    /// A message from JSON text, validated; it must be an object. Text spread over several
    /// lines (pretty-printed) is made compact: a message travels as one line, and a raw
    /// newline would cut it in two on the wire.
    pub fn from_json(text: &str) -> Result<Self> {
        Self::checked(text.to_owned())
    }

    /// One parse per message: reading `op` also validates the whole text.
    fn checked(text: String) -> Result<Self> {
        if !text.trim_start().starts_with('{') {
            return Err(Error::Config("a message must be a JSON object".into()));
        }
        let op: Option<Arc<str>> = crate::protocol::message::op_of(&text)
            .map_err(|e| Error::Config(format!("message is not valid JSON: {e}")))?
            .map(|o| Arc::from(o.as_ref()));
        let text = compact(text);
        // `_sig` is the protocol's; a caller's own is dropped, as it would be overwritten.
        let stripped = match strip_sig(&text) {
            std::borrow::Cow::Owned(s) => Some(s),
            std::borrow::Cow::Borrowed(_) => None,
        };
        let text = stripped.unwrap_or(text);
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
        // Spelled literally unless the text holds a `\u` escape.
        if OP_TIMEOUT_KEY.find(self.text.as_bytes()).is_none()
            && ESCAPE.find(self.text.as_bytes()).is_none()
        {
            return None;
        }
        let raw = crate::protocol::message::member(&self.text, "op_timeout").ok()??;
        match serde_json::from_str::<Value>(raw.get()).ok()? {
            Value::Number(n) => n.as_f64().filter(|f| *f > 0.0).map(|f| f as u64),
            _ => None,
        }
    }
}

/// Valid JSON `text` without insignificant whitespace, when it holds a line break (only
/// whitespace can: JSON strings cannot hold a raw one). Other text is returned as it is.
fn compact(text: String) -> String {
    if memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_none() {
        return text;
    }
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in text.as_bytes() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = b == b'"';
            out.push(b);
        }
    }
    // Only ASCII whitespace outside strings was removed: still UTF-8.
    String::from_utf8(out).unwrap_or(text)
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

    #[test]
    fn from_json_never_lets_a_line_break_into_a_line() {
        let pretty = "{\n  \"op\": \"x\",\r\n  \"s\": \"a b\\n\\\" }\",\n  \"n\": [1, 2]\n}\n";
        let m = Message::from_json(pretty).unwrap();
        assert_eq!(m.as_str(), r#"{"op":"x","s":"a b\n\" }","n":[1,2]}"#);
        assert_eq!(m.op(), Some("x"));
        assert_eq!(m.value(), serde_json::from_str::<Value>(pretty).unwrap());
        // Invalid text stays an error, whatever whitespace removal would make of it.
        assert!(Message::from_json("{\"a\":tr\nue}").is_err());
        // One-line text is kept exactly as written.
        let spaced = r#"{ "op" : "x" }"#;
        assert_eq!(Message::from_json(spaced).unwrap().as_str(), spaced);
    }

    #[test]
    fn from_json_reads_keys_as_json_parse_does() {
        let m = Message::from_json(r#"{"op":"a","\u006fp":"b"}"#).unwrap();
        assert_eq!(m.op(), Some("b"));
        let m = Message::from_json(r#"{"op":"a","op_timeout":1,"op\u005ftimeout":250}"#).unwrap();
        assert_eq!(m.op_timeout(), Some(250));
        // A caller's own `_sig`, in any spelling, is dropped.
        let m = Message::from_json(r#"{"\u005fsig":"x","op":"a"}"#).unwrap();
        assert_eq!(m.as_str(), r#"{"op":"a"}"#);
    }
}
