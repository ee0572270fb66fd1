//! The one error type of the crate, with stable kinds every adapter maps.

use std::sync::Arc;

use serde_json::{json, Value};

/// Stable classification of an [`Error`]; adapters expose it as a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad options or certificates.
    Config,
    /// TLS setup or handshake failure.
    Tls,
    /// Socket errors.
    Io,
    /// The peer failed to prove the shared secret, or refused ours.
    Auth,
    /// The peer broke the protocol.
    Protocol,
    /// A request got no answer in time.
    Timeout,
    /// The stream went away before the request settled.
    Disconnected,
    /// The local object was closed.
    Closed,
    /// No stream to send to (none connected, several for a request, or an unknown uuid).
    NotConnected,
    /// A configured limit was crossed.
    LimitExceeded,
    /// The peer answered a request with an error.
    Remote,
    /// A listener, digest, filter or handler of this instance panicked (the call was caught;
    /// the stream goes on).
    Handler,
}

impl ErrorKind {
    /// A stable lower-case name (`"timeout"`, `"limit_exceeded"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Tls => "tls",
            ErrorKind::Io => "io",
            ErrorKind::Auth => "auth",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::Closed => "closed",
            ErrorKind::NotConnected => "not_connected",
            ErrorKind::LimitExceeded => "limit_exceeded",
            ErrorKind::Remote => "remote",
            ErrorKind::Handler => "handler",
        }
    }
}

/// Everything that can go wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad options or certificates.
    #[error("configuration error: {0}")]
    Config(String),
    /// TLS setup or handshake failure.
    #[error("TLS error: {0}")]
    Tls(String),
    /// Socket errors.
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    /// Authentication failed.
    #[error("{0}")]
    Auth(String),
    /// Protocol violation by the peer.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A request timed out.
    #[error("request timed out after {timeout_ms} ms")]
    Timeout {
        /// The timeout that applied, in milliseconds.
        timeout_ms: u64,
        /// The request body.
        req: Arc<str>,
    },
    /// The stream ended with the request pending.
    #[error("connection terminated before the request settled")]
    Disconnected {
        /// The request body.
        req: Arc<str>,
    },
    /// The local object was closed.
    #[error("closed")]
    Closed,
    /// No connected stream.
    #[error("RPC stream is not connected")]
    NotConnected {
        /// The message that could not be sent.
        req: Option<Arc<str>>,
    },
    /// A request without a uuid while several streams are connected.
    #[error("multiple streams connected (not supported by RPC)")]
    MultipleStreams {
        /// The request body.
        req: Arc<str>,
    },
    /// No stream with that uuid.
    #[error("no such stream present: {0}")]
    NoSuchStream(String),
    /// A limit was crossed.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The peer answered with an error value (its JSON text).
    #[error("remote error: {0}")]
    Remote(Arc<str>),
    /// User code called by this instance panicked; the call was caught.
    #[error("handler error: {0}")]
    Handler(String),
}

impl Error {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) => ErrorKind::Config,
            Error::Tls(_) => ErrorKind::Tls,
            Error::Io(_) => ErrorKind::Io,
            Error::Auth(_) => ErrorKind::Auth,
            Error::Protocol(_) => ErrorKind::Protocol,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Disconnected { .. } => ErrorKind::Disconnected,
            Error::Closed => ErrorKind::Closed,
            Error::NotConnected { .. } | Error::MultipleStreams { .. } | Error::NoSuchStream(_) => {
                ErrorKind::NotConnected
            }
            Error::LimitExceeded(_) => ErrorKind::LimitExceeded,
            Error::Remote(_) => ErrorKind::Remote,
            Error::Handler(_) => ErrorKind::Handler,
        }
    }

    /// The error as the legacy package reports it to a request callback, e.g.
    /// `{"error":"Connection Timed Out","timeout":T,"req":MSG}`. For [`Error::Remote`] it is the
    /// peer's error value itself.
    pub fn to_legacy_value(&self) -> Value {
        let req = |r: &str| serde_json::from_str::<Value>(r).unwrap_or(Value::Null);
        match self {
            Error::Timeout { timeout_ms, req: r } => {
                json!({"error": "Connection Timed Out", "timeout": timeout_ms, "req": req(r)})
            }
            Error::Disconnected { req: r } => {
                json!({"error": "Connection Terminated", "disconnected": true, "req": req(r)})
            }
            Error::NotConnected { req: r } => {
                let mut v = json!({"error": "RPC stream is not connected", "disconnected": true});
                if let Some(r) = r {
                    v["req"] = req(r);
                }
                v
            }
            Error::MultipleStreams { req: r } => {
                json!({"error": "Multiple streams connected (not supported by RPC)", "req": req(r)})
            }
            Error::NoSuchStream(_) => json!({"error": "iris-rpc: no such stream present"}),
            Error::Remote(text) => serde_json::from_str(text).unwrap_or(Value::Null),
            Error::Closed => json!({"error": "Closed", "closed": true}),
            other => json!({"error": other.to_string()}),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An `_Error` object as legacy peers send and rebuild it: `{"_Error":true,"name":..,"message":..,"stack":..}`.
pub fn error_object(name: &str, message: &str) -> Value {
    json!({
        "_Error": true,
        "name": name,
        "message": message,
        "stack": format!("{name}: {message}"),
    })
}
