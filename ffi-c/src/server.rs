//! `iris_server`: accepts and authenticates connections.

use std::ffi::{c_char, c_void};

use crate::endpoint::{
    iris_destroy_callback, iris_event_callback, iris_response_callback, ops, Endpoint,
};
use crate::event::iris_event;
use crate::options::iris_options;
use crate::result::{guard, guard_value, iris_result, FfiError, FfiResult};
use crate::strings::{need_out, owned_c_string};

/// A server (legacy `Server`).
pub struct iris_server {
    ep: Endpoint,
}

unsafe fn ep<'a>(server: *const iris_server) -> FfiResult<&'a Endpoint> {
    server
        .as_ref()
        .map(|s| &s.ep)
        .ok_or_else(|| FfiError::null("server"))
}

/// Creates a server from `options` (which need `auth`, `port` and `certificates`) and waits
/// until it is listening; `port` 0 (e.g. `"127.0.0.1:0"`) picks a free port, see
/// `iris_server_port`. The first event is `IRIS_EVENT_LISTEN`.
///
/// Events go to `callback(user_data, event)` on this server's callback thread, one at a time
/// in order; with a NULL `callback` they are pulled with `iris_server_next_event` instead.
/// Requests no callback takes are answered with a "No such handler" error. `destroy` is
/// called exactly once, as for `iris_client_connect`. The options are copied.
#[no_mangle]
pub unsafe extern "C" fn iris_server_bind(
    options: *const iris_options,
    callback: iris_event_callback,
    user_data: *mut c_void,
    destroy: iris_destroy_callback,
    server_out: *mut *mut iris_server,
) -> iris_result {
    guard(|| {
        ops::create(
            options,
            callback,
            user_data,
            destroy,
            server_out.cast(),
            Endpoint::bind,
            |ep| Box::into_raw(Box::new(iris_server { ep })).cast(),
        )
    })
}

/// The TCP port the server listens on (0 if `server` is NULL).
#[no_mangle]
pub unsafe extern "C" fn iris_server_port(server: *const iris_server) -> u16 {
    guard_value(0, || server.as_ref().map_or(0, |s| s.ep.local_port()))
}

/// The bound address as `host:port`. Free it with `iris_string_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_server_address(
    server: *const iris_server,
    address_out: *mut *mut c_char,
) -> iris_result {
    guard(|| {
        need_out(address_out, "address_out")?;
        let address = ep(server)?.local_address().unwrap_or_default();
        *address_out = owned_c_string(&address)?;
        Ok(())
    })
}

/// Closes the server: streams end, pending requests settle with `IRIS_ERR_CLOSED`, then
/// `IRIS_EVENT_*` delivery ends (`iris_server_next_event` returns `IRIS_ERR_CLOSED`). Waits
/// for all that, except when called from this server's own callback, where it only starts it.
/// The handle stays valid until `iris_server_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_server_close(server: *mut iris_server) -> iris_result {
    guard(|| {
        ep(server)?.close();
        Ok(())
    })
}

/// Frees the server, closing it first if needed. Every request callback still due is called
/// (with `IRIS_ERR_CLOSED`), then the destroy callback; unless called from this server's own
/// callback, this returns after both. NULL does nothing.
#[no_mangle]
pub unsafe extern "C" fn iris_server_free(server: *mut iris_server) {
    guard_value((), || {
        if !server.is_null() {
            Box::from_raw(server).ep.shutdown();
        }
    })
}

/// This server's uuid (from the `uuid` option, else random). Lives as long as the server; NULL
/// if `server` is NULL.
#[no_mangle]
pub unsafe extern "C" fn iris_server_uuid(server: *const iris_server) -> *const c_char {
    guard_value(std::ptr::null(), || {
        server.as_ref().map_or(std::ptr::null(), |c| c.ep.uuid())
    })
}

/// True while at least one stream is authenticated and up.
#[no_mangle]
pub unsafe extern "C" fn iris_server_is_connected(server: *const iris_server) -> bool {
    guard_value(false, || {
        server.as_ref().is_some_and(|c| c.ep.is_connected())
    })
}

/// Waits up to `timeout_ms` until at least one stream is up: `IRIS_OK`, `IRIS_ERR_TIMEOUT`
/// or `IRIS_ERR_CLOSED`. Not from this server's callback (`IRIS_ERR_INVALID_STATE`).
#[no_mangle]
pub unsafe extern "C" fn iris_server_wait_connected(
    server: *const iris_server,
    timeout_ms: u32,
) -> iris_result {
    guard(|| ep(server)?.wait_connected(timeout_ms))
}

/// Sends the event message `json` (a JSON object: `len` bytes, or NUL-terminated when `len`
/// is 0) to every connected stream; the count goes to `sent_out` when not NULL.
/// `IRIS_ERR_NOT_CONNECTED` when no stream is up.
#[no_mangle]
pub unsafe extern "C" fn iris_server_dispatch(
    server: *const iris_server,
    json: *const c_char,
    len: usize,
    sent_out: *mut usize,
) -> iris_result {
    guard(|| ops::dispatch(ep(server)?, json, len, sent_out))
}

/// Sends the event message `json` to the stream of peer `uuid` (`IRIS_ERR_NOT_CONNECTED` if
/// there is none).
#[no_mangle]
pub unsafe extern "C" fn iris_server_dispatch_to(
    server: *const iris_server,
    uuid: *const c_char,
    json: *const c_char,
    len: usize,
) -> iris_result {
    guard(|| ops::dispatch_to(ep(server)?, uuid, json, len))
}

/// Sends the request `json` (a JSON object with its `op`; `op_timeout` in ms overrides the
/// `timeout` option) to peer `uuid`, or with `uuid` NULL to the only connected stream, and
/// returns at once. `callback(user_data, result, json, len)` is then called exactly once on
/// this server's callback thread: response, remote error, timeout, disconnect, close or cancel
/// (see `iris_response_callback`), even when the send itself fails. Its id, for
/// `iris_server_request_cancel`, goes to `id_out` when not NULL. An error return means the
/// callback will not be called.
#[no_mangle]
pub unsafe extern "C" fn iris_server_request(
    server: *const iris_server,
    uuid: *const c_char,
    json: *const c_char,
    len: usize,
    callback: iris_response_callback,
    user_data: *mut c_void,
    id_out: *mut u64,
) -> iris_result {
    guard(|| ops::request(ep(server)?, uuid, json, len, callback, user_data, id_out))
}

/// Withdraws interest in request `id`: its callback is called with `IRIS_ERR_CANCELLED` (still
/// exactly once, and possibly before this returns), unless the request settled first, in which
/// case this gives `IRIS_ERR_NOT_FOUND`. A late answer from the peer is ignored.
#[no_mangle]
pub unsafe extern "C" fn iris_server_request_cancel(
    server: *const iris_server,
    id: u64,
) -> iris_result {
    guard(|| ep(server)?.cancel(id))
}

/// Sends a request like `iris_server_request` and waits for its outcome on the calling thread.
/// On `IRIS_OK` the response value's JSON text goes to `resp_out` (free it with
/// `iris_string_free`; `"null"` when the peer sent none) and its length to `resp_len_out`
/// when not NULL. On failure the code tells why (`IRIS_ERR_REMOTE`, `IRIS_ERR_TIMEOUT`, ...)
/// and `iris_last_error_message()` is the error object as JSON text. Not from this server's
/// callback (`IRIS_ERR_INVALID_STATE`).
#[no_mangle]
pub unsafe extern "C" fn iris_server_request_wait(
    server: *const iris_server,
    uuid: *const c_char,
    json: *const c_char,
    len: usize,
    resp_out: *mut *mut c_char,
    resp_len_out: *mut usize,
) -> iris_result {
    guard(|| ops::request_wait(ep(server)?, uuid, json, len, resp_out, resp_len_out))
}

/// Pull model (the server was created with a NULL callback): waits up to `timeout_ms` (0: do
/// not wait) for the next event and hands it over in `event_out`; free it with
/// `iris_event_free`. `IRIS_ERR_TIMEOUT` when none came, `IRIS_ERR_CLOSED` once the server is
/// closed and every event has been taken, `IRIS_ERR_INVALID_STATE` in callback mode. Events
/// wait in a bounded queue: when it is full, reading from peers pauses until events are
/// taken. One thread at a time; others wait their turn.
#[no_mangle]
pub unsafe extern "C" fn iris_server_next_event(
    server: *const iris_server,
    timeout_ms: u32,
    event_out: *mut *mut iris_event,
) -> iris_result {
    guard(|| ops::next_event(ep(server)?, timeout_ms, event_out))
}

/// The connected peers as a JSON array text,
/// `[{"uuid":..,"address":..,"designation":..,"mac":..,"cipher":true,"mode":"v2"}]`, where
/// `cipher` tells whether lines are encrypted and `mode` is the session mode negotiated with
/// that peer: `"v2"`, or `"legacy"` (an iris-rpc 0.2.20 peer, or `security` set to `legacy`).
/// Free it with `iris_string_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_server_peers(
    server: *const iris_server,
    json_out: *mut *mut c_char,
) -> iris_result {
    guard(|| ops::peers(ep(server)?, json_out))
}

/// Sends `{"op":"ping","data":..}` to every stream now; the count goes to `sent_out` when not
/// NULL.
#[no_mangle]
pub unsafe extern "C" fn iris_server_ping(
    server: *const iris_server,
    sent_out: *mut usize,
) -> iris_result {
    guard(|| ops::ping(ep(server)?, sent_out))
}

/// Sets the `data` of ping messages to a JSON value (NUL-terminated), or removes it with NULL.
#[no_mangle]
pub unsafe extern "C" fn iris_server_set_ping_data(
    server: *const iris_server,
    json: *const c_char,
) -> iris_result {
    guard(|| ops::set_ping_data(ep(server)?, json))
}
