//! Result codes, the per-thread last error message and the panic guard.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use iris::{Error, ErrorKind};

/// The outcome of a call. The numbers are stable: new codes may be added, none will change.
///
/// Codes below 100 come from the C boundary itself (arguments, state); codes from 100 follow
/// the core's error kinds.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum iris_result {
    /// Success.
    IRIS_OK = 0,
    /// A required pointer argument was NULL.
    IRIS_ERR_NULL_ARGUMENT = 1,
    /// A string argument was not valid UTF-8.
    IRIS_ERR_INVALID_UTF8 = 2,
    /// A JSON argument was not valid JSON, or not of the required shape (a message must be an
    /// object).
    IRIS_ERR_INVALID_JSON = 3,
    /// An argument had an unusable value.
    IRIS_ERR_INVALID_ARGUMENT = 4,
    /// The call is not possible now: the request was already answered, events are delivered
    /// to a callback rather than pulled, or a blocking call was made from a callback of the
    /// same object (where it could deadlock).
    IRIS_ERR_INVALID_STATE = 5,
    /// No such item (for example a request id that has already settled).
    IRIS_ERR_NOT_FOUND = 6,
    /// A bug inside the library was caught at the boundary. Please report it.
    IRIS_ERR_PANIC = 7,
    /// Bad options or certificates.
    IRIS_ERR_CONFIG = 100,
    /// TLS setup or handshake failure.
    IRIS_ERR_TLS = 101,
    /// A socket error.
    IRIS_ERR_IO = 102,
    /// Authentication failed: the peer does not know the shared secret, or refused ours.
    IRIS_ERR_AUTH = 103,
    /// The peer broke the protocol.
    IRIS_ERR_PROTOCOL = 104,
    /// A request got no answer in time; for `iris_*_next_event`, no event came in time.
    IRIS_ERR_TIMEOUT = 105,
    /// The stream went away before the request settled.
    IRIS_ERR_DISCONNECTED = 106,
    /// The object was closed.
    IRIS_ERR_CLOSED = 107,
    /// No stream to send to: none connected, several for a request without uuid, or an unknown
    /// uuid.
    IRIS_ERR_NOT_CONNECTED = 108,
    /// A configured limit was crossed.
    IRIS_ERR_LIMIT_EXCEEDED = 109,
    /// The peer answered the request with an error value.
    IRIS_ERR_REMOTE = 110,
    /// The request was cancelled with `iris_*_request_cancel` before it settled.
    IRIS_ERR_CANCELLED = 111,
    /// An error of a kind this version of the C API does not know yet.
    IRIS_ERR_OTHER = 199,
}

impl iris_result {
    fn text(self) -> &'static CStr {
        use iris_result::*;
        match self {
            IRIS_OK => c"ok",
            IRIS_ERR_NULL_ARGUMENT => c"null argument",
            IRIS_ERR_INVALID_UTF8 => c"invalid UTF-8",
            IRIS_ERR_INVALID_JSON => c"invalid JSON",
            IRIS_ERR_INVALID_ARGUMENT => c"invalid argument",
            IRIS_ERR_INVALID_STATE => c"invalid state",
            IRIS_ERR_NOT_FOUND => c"not found",
            IRIS_ERR_PANIC => c"internal panic",
            IRIS_ERR_CONFIG => c"config",
            IRIS_ERR_TLS => c"tls",
            IRIS_ERR_IO => c"io",
            IRIS_ERR_AUTH => c"auth",
            IRIS_ERR_PROTOCOL => c"protocol",
            IRIS_ERR_TIMEOUT => c"timeout",
            IRIS_ERR_DISCONNECTED => c"disconnected",
            IRIS_ERR_CLOSED => c"closed",
            IRIS_ERR_NOT_CONNECTED => c"not_connected",
            IRIS_ERR_LIMIT_EXCEEDED => c"limit_exceeded",
            IRIS_ERR_REMOTE => c"remote",
            IRIS_ERR_CANCELLED => c"cancelled",
            IRIS_ERR_OTHER => c"other",
        }
    }

    const ALL: [iris_result; 21] = {
        use iris_result::*;
        [
            IRIS_OK,
            IRIS_ERR_NULL_ARGUMENT,
            IRIS_ERR_INVALID_UTF8,
            IRIS_ERR_INVALID_JSON,
            IRIS_ERR_INVALID_ARGUMENT,
            IRIS_ERR_INVALID_STATE,
            IRIS_ERR_NOT_FOUND,
            IRIS_ERR_PANIC,
            IRIS_ERR_CONFIG,
            IRIS_ERR_TLS,
            IRIS_ERR_IO,
            IRIS_ERR_AUTH,
            IRIS_ERR_PROTOCOL,
            IRIS_ERR_TIMEOUT,
            IRIS_ERR_DISCONNECTED,
            IRIS_ERR_CLOSED,
            IRIS_ERR_NOT_CONNECTED,
            IRIS_ERR_LIMIT_EXCEEDED,
            IRIS_ERR_REMOTE,
            IRIS_ERR_CANCELLED,
            IRIS_ERR_OTHER,
        ]
    };

    /// The code of a core error.
    pub(crate) fn of_kind(kind: ErrorKind) -> Self {
        use iris_result::*;
        match kind {
            ErrorKind::Config => IRIS_ERR_CONFIG,
            ErrorKind::Tls => IRIS_ERR_TLS,
            ErrorKind::Io => IRIS_ERR_IO,
            ErrorKind::Auth => IRIS_ERR_AUTH,
            ErrorKind::Protocol => IRIS_ERR_PROTOCOL,
            ErrorKind::Timeout => IRIS_ERR_TIMEOUT,
            ErrorKind::Disconnected => IRIS_ERR_DISCONNECTED,
            ErrorKind::Closed => IRIS_ERR_CLOSED,
            ErrorKind::NotConnected => IRIS_ERR_NOT_CONNECTED,
            ErrorKind::LimitExceeded => IRIS_ERR_LIMIT_EXCEEDED,
            ErrorKind::Remote => IRIS_ERR_REMOTE,
            _ => IRIS_ERR_OTHER,
        }
    }
}

/// An error on its way to C: a code and the message for [`iris_last_error_message`].
#[derive(Debug)]
pub(crate) struct FfiError {
    pub(crate) code: iris_result,
    pub(crate) message: String,
}

impl FfiError {
    pub(crate) fn new(code: iris_result, message: impl Into<String>) -> Self {
        FfiError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn null(what: &str) -> Self {
        FfiError::new(
            iris_result::IRIS_ERR_NULL_ARGUMENT,
            format!("{what} is NULL"),
        )
    }

    pub(crate) fn state(message: impl Into<String>) -> Self {
        FfiError::new(iris_result::IRIS_ERR_INVALID_STATE, message)
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        FfiError::new(iris_result::of_kind(e.kind()), e.to_string())
    }
}

pub(crate) type FfiResult<T> = Result<T, FfiError>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_last_error(message: &str) {
    // An interior NUL cannot come from our own messages; replace it rather than lose the text.
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = text);
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    format!("internal panic (please report): {what}")
}

/// Runs `f` behind the panic guard and turns its outcome into a result code.
pub(crate) fn guard(f: impl FnOnce() -> FfiResult<()>) -> iris_result {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => iris_result::IRIS_OK,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.code
        }
        Err(payload) => {
            set_last_error(&panic_message(payload.as_ref()));
            iris_result::IRIS_ERR_PANIC
        }
    }
}

/// Runs an infallible accessor behind the panic guard; `fallback` if it panics.
pub(crate) fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            set_last_error(&panic_message(payload.as_ref()));
            fallback
        }
    }
}

/// A short, static, lower-case name for a result code (`"timeout"`, `"invalid JSON"`, ...).
/// Unknown numbers give `"unknown"`. Never NULL; do not free.
#[no_mangle]
pub extern "C" fn iris_result_text(result: u32) -> *const c_char {
    guard_value(c"unknown".as_ptr(), || {
        iris_result::ALL
            .iter()
            .find(|r| **r as u32 == result)
            .map_or(c"unknown".as_ptr(), |r| r.text().as_ptr())
    })
}

/// The message of the last error reported on the calling thread (`""` if none yet).
///
/// For failed requests (`iris_*_request_wait`) it is the error object as JSON text, the same
/// text a request callback receives. The pointer stays valid until the next failing call on
/// this thread; copy it to keep it. Never NULL; do not free.
#[no_mangle]
pub extern "C" fn iris_last_error_message() -> *const c_char {
    guard_value(c"".as_ptr(), || LAST_ERROR.with(|l| l.borrow().as_ptr()))
}
