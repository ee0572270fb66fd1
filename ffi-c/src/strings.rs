//! Strings across the boundary: checked input, owned output, and their release.

use std::ffi::{c_char, CStr, CString};

use crate::result::{guard_value, iris_result, FfiError, FfiResult};

/// A NUL-terminated UTF-8 argument; NULL is an error.
pub(crate) unsafe fn arg_str<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    CStr::from_ptr(p).to_str().map_err(|_| {
        FfiError::new(
            iris_result::IRIS_ERR_INVALID_UTF8,
            format!("{what} is not valid UTF-8"),
        )
    })
}

/// A NUL-terminated UTF-8 argument where NULL means "none".
pub(crate) unsafe fn arg_opt_str<'a>(p: *const c_char, what: &str) -> FfiResult<Option<&'a str>> {
    if p.is_null() {
        Ok(None)
    } else {
        arg_str(p, what).map(Some)
    }
}

/// A text given as pointer and length; length 0 means NUL-terminated.
pub(crate) unsafe fn arg_text<'a>(p: *const c_char, len: usize, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(FfiError::null(what));
    }
    if len == 0 {
        return arg_str(p, what);
    }
    let bytes = std::slice::from_raw_parts(p.cast::<u8>(), len);
    std::str::from_utf8(bytes).map_err(|_| {
        FfiError::new(
            iris_result::IRIS_ERR_INVALID_UTF8,
            format!("{what} is not valid UTF-8"),
        )
    })
}

/// Checks that `text` is one JSON value.
pub(crate) fn check_json(text: &str, what: &str) -> FfiResult<()> {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|_| ())
        .map_err(|e| {
            FfiError::new(
                iris_result::IRIS_ERR_INVALID_JSON,
                format!("{what} is not valid JSON: {e}"),
            )
        })
}

/// Fails early when an out-parameter is NULL, before any work is done.
pub(crate) fn need_out<T>(p: *mut T, what: &str) -> FfiResult<()> {
    if p.is_null() {
        Err(FfiError::null(what))
    } else {
        Ok(())
    }
}

/// A string for C to own, released with [`iris_string_free`].
pub(crate) fn owned_c_string(s: &str) -> FfiResult<*mut c_char> {
    CString::new(s).map(CString::into_raw).map_err(|_| {
        FfiError::new(
            iris_result::IRIS_ERR_INVALID_ARGUMENT,
            "text contains a NUL byte",
        )
    })
}

/// A `CString` of text that cannot hold a NUL in practice (JSON, names); a NUL is escaped
/// rather than failing, since JSON text may not contain a raw NUL anyway.
pub(crate) fn c_string_lossy(s: &str) -> CString {
    CString::new(s)
        .or_else(|_| CString::new(s.replace('\0', "\\u0000")))
        .unwrap_or_default()
}

/// Releases a string the library handed out (`char **` out-parameters). NULL does nothing.
/// Passing any other pointer is undefined behaviour.
#[no_mangle]
pub unsafe extern "C" fn iris_string_free(s: *mut c_char) {
    guard_value((), || {
        if !s.is_null() {
            drop(CString::from_raw(s));
        }
    })
}

/// The version of the library, for example `"0.3.0"` (`IRIS_RPC_VERSION`). Static; do not free.
#[no_mangle]
pub extern "C" fn iris_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// The process's metrics in the Prometheus text format (version 0.0.4), the same text
/// `iris-rpc server --metrics` serves: every instance in the process adds into it (see the
/// README's metrics table). On `IRIS_OK` the text goes to `text_out` (free it with
/// `iris_string_free`) and its length to `len_out` when not NULL.
#[no_mangle]
pub unsafe extern "C" fn iris_metrics_text(
    text_out: *mut *mut c_char,
    len_out: *mut usize,
) -> iris_result {
    crate::result::guard(|| {
        need_out(text_out, "text_out")?;
        let text = iris::metrics::text();
        *text_out = owned_c_string(&text)?;
        if !len_out.is_null() {
            *len_out = text.len();
        }
        Ok(())
    })
}
