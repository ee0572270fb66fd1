//! [`Responder`]: the answering half of one incoming request.

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::protocol::pending::encode_response;
use crate::stream::Stream;

/// Answers one incoming request exactly once; answers "No such handler" if dropped unanswered.
pub struct Responder {
    stream: Option<Arc<Stream>>,
    id: Box<RawValue>,
    op: Option<String>,
    /// The request's handling span (`iris_rpc.handle`), closed once it is answered.
    #[cfg(feature = "otel")]
    span: tracing::Span,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("id", &self.id.get())
            .finish()
    }
}

impl Responder {
    /// The answering half of request `id` received on `stream`; with feature `otel`, in a span
    /// whose parent is the sender's `traceparent`.
    pub(crate) fn new(
        stream: Arc<Stream>,
        id: &RawValue,
        op: Option<&str>,
        #[cfg(feature = "otel")] traceparent: Option<&str>,
    ) -> Self {
        Responder {
            #[cfg(feature = "otel")]
            span: crate::trace::handle_span(op, &stream.peer, traceparent),
            stream: Some(stream),
            id: id.to_owned(),
            op: op.map(str::to_owned),
        }
    }

    /// The span this request is handled in (`iris_rpc.handle`, target `iris_rpc::trace`):
    /// enter it, or make it the parent of your own, so that a request made while handling this
    /// one continues its trace. Feature `otel` only.
    #[cfg(feature = "otel")]
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Answers with a value or an error value.
    pub fn respond(mut self, result: std::result::Result<Value, Value>) {
        let (err, resp) = match result {
            Ok(v) => ("null".to_owned(), Some(v.to_string())),
            Err(e) => (e.to_string(), None),
        };
        self.send(Some(&err), resp.as_deref());
    }

    /// Answers with JSON texts (`err` absent is written `"err":null`, `resp` absent is left
    /// out); an invalid text is answered as an error instead.
    pub fn respond_raw(self, err: Option<&str>, resp: Option<&str>) {
        self.respond_exact(Some(err.unwrap_or("null")), resp);
    }

    /// Answers with JSON texts written as given, an absent one left out, as legacy's
    /// `JSON.stringify` does for `cb(undefined, ..)`: `cb()` is `{"_resp":ID}`. An invalid text
    /// is answered as an error instead.
    pub fn respond_exact(mut self, err: Option<&str>, resp: Option<&str>) {
        let valid = |t: Option<&str>| {
            t.is_none_or(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok())
        };
        if valid(err) && valid(resp) {
            // A line ends at a newline: pretty-printed JSON goes out compact.
            let err = err.map(one_line);
            let resp = resp.map(one_line);
            self.send(err.as_deref(), resp.as_deref());
        } else {
            self.send(Some(r#"{"error":"invalid JSON in response"}"#), None);
        }
    }

    pub(crate) fn send(&mut self, err: Option<&str>, resp: Option<&str>) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let _ = stream.send(Arc::from(encode_response(self.id.get(), err, resp)));
        #[cfg(feature = "otel")]
        {
            self.span = tracing::Span::none();
        }
    }
}

/// `text` (valid JSON) without raw line breaks: as it is when it has none, else re-serialized.
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_none() {
        return std::borrow::Cow::Borrowed(text);
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) => std::borrow::Cow::Owned(v.to_string()),
        Err(_) => std::borrow::Cow::Borrowed("null"),
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.stream.is_some() {
            let op = self.op.take().unwrap_or_default();
            let err = serde_json::json!({ "error": format!("No such handler '{op}'") }).to_string();
            self.send(Some(&err), None);
        }
    }
}
