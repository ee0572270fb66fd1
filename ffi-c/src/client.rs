//! `iris_client`: connects to servers and keeps one authenticated stream per address.

use std::ffi::{c_char, c_void};

use crate::endpoint::{
    iris_destroy_callback, iris_event_callback, iris_response_callback, ops, Endpoint,
};
use crate::event::iris_event;
use crate::options::iris_options;
use crate::result::{guard, guard_value, iris_result, FfiError, FfiResult};

/// A client (legacy `Client`): one stream per address in its options, reconnecting every
/// second (as legacy; option `reconnect_max` above `reconnect_initial` backs off) until closed.
pub struct iris_client {
    ep: Endpoint,
}

unsafe fn ep<'a>(client: *const iris_client) -> FfiResult<&'a Endpoint> {
    client
        .as_ref()
        .map(|c| &c.ep)
        .ok_or_else(|| FfiError::null("client"))
}

/// Creates a client from `options` (which need `auth` and at least one `address`) and starts
/// connecting in the background; returns at once. Use `iris_client_wait_connected` or the
/// connect event to know when a stream is up.
///
/// Events go to `callback(user_data, event)` on this client's callback thread, one at a time
/// in order; with a NULL `callback` they are pulled with `iris_client_next_event` instead.
/// Request callbacks run on the same thread. `destroy(user_data)`, when not NULL, is called
/// exactly once: after the last callback when the client is freed, or before this returns
/// if it fails. The options are copied and may be freed at once.
#[no_mangle]
pub unsafe extern "C" fn iris_client_connect(
    options: *const iris_options,
    callback: iris_event_callback,
    user_data: *mut c_void,
    destroy: iris_destroy_callback,
    client_out: *mut *mut iris_client,
) -> iris_result {
    guard(|| {
        ops::create(
            options,
            callback,
            user_data,
            destroy,
            client_out.cast(),
            Endpoint::connect,
            |ep| Box::into_raw(Box::new(iris_client { ep })).cast(),
        )
    })
}

/// Closes the client: streams end, pending requests settle with `IRIS_ERR_CLOSED`, then
/// `IRIS_EVENT_*` delivery ends (`iris_client_next_event` returns `IRIS_ERR_CLOSED`). Waits
/// for all that, except when called from this client's own callback, where it only starts it.
/// The handle stays valid until `iris_client_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_client_close(client: *mut iris_client) -> iris_result {
    guard(|| {
        ep(client)?.close();
        Ok(())
    })
}

/// Frees the client, closing it first if needed. Every request callback still due is called
/// (with `IRIS_ERR_CLOSED`), then the destroy callback; unless called from this client's own
/// callback, this returns after both. NULL does nothing.
#[no_mangle]
pub unsafe extern "C" fn iris_client_free(client: *mut iris_client) {
    guard_value((), || {
        if !client.is_null() {
            Box::from_raw(client).ep.shutdown();
        }
    })
}

/// This client's uuid (from the `uuid` option, else random). Lives as long as the client; NULL
/// if `client` is NULL.
#[no_mangle]
pub unsafe extern "C" fn iris_client_uuid(client: *const iris_client) -> *const c_char {
    guard_value(std::ptr::null(), || {
        client.as_ref().map_or(std::ptr::null(), |c| c.ep.uuid())
    })
}

/// True while at least one stream is authenticated and up.
#[no_mangle]
pub unsafe extern "C" fn iris_client_is_connected(client: *const iris_client) -> bool {
    guard_value(false, || {
        client.as_ref().is_some_and(|c| c.ep.is_connected())
    })
}

/// Waits up to `timeout_ms` until at least one stream is up: `IRIS_OK`, `IRIS_ERR_TIMEOUT`
/// or `IRIS_ERR_CLOSED`. Not from this client's callback (`IRIS_ERR_INVALID_STATE`).
#[no_mangle]
pub unsafe extern "C" fn iris_client_wait_connected(
    client: *const iris_client,
    timeout_ms: u32,
) -> iris_result {
    guard(|| ep(client)?.wait_connected(timeout_ms))
}

/// Sends the event message `json` (a JSON object: `len` bytes, or NUL-terminated when `len`
/// is 0) to every connected stream; the count goes to `sent_out` when not NULL.
/// `IRIS_ERR_NOT_CONNECTED` when no stream is up.
#[no_mangle]
pub unsafe extern "C" fn iris_client_dispatch(
    client: *const iris_client,
    json: *const c_char,
    len: usize,
    sent_out: *mut usize,
) -> iris_result {
    guard(|| ops::dispatch(ep(client)?, json, len, sent_out))
}

/// Sends the event message `json` to the stream of peer `uuid` (`IRIS_ERR_NOT_CONNECTED` if
/// there is none).
#[no_mangle]
pub unsafe extern "C" fn iris_client_dispatch_to(
    client: *const iris_client,
    uuid: *const c_char,
    json: *const c_char,
    len: usize,
) -> iris_result {
    guard(|| ops::dispatch_to(ep(client)?, uuid, json, len))
}

/// Sends the request `json` (a JSON object with its `op`; `op_timeout` in ms overrides the
/// `timeout` option) to peer `uuid`, or with `uuid` NULL to the only connected stream, and
/// returns at once. `callback(user_data, result, json, len)` is then called exactly once on
/// this client's callback thread: response, remote error, timeout, disconnect, close or cancel
/// (see `iris_response_callback`), even when the send itself fails. Its id, for
/// `iris_client_request_cancel`, goes to `id_out` when not NULL. An error return means the
/// callback will not be called.
#[no_mangle]
pub unsafe extern "C" fn iris_client_request(
    client: *const iris_client,
    uuid: *const c_char,
    json: *const c_char,
    len: usize,
    callback: iris_response_callback,
    user_data: *mut c_void,
    id_out: *mut u64,
) -> iris_result {
    guard(|| ops::request(ep(client)?, uuid, json, len, callback, user_data, id_out))
}

/// Withdraws interest in request `id`: its callback is called with `IRIS_ERR_CANCELLED` (still
/// exactly once, and possibly before this returns), unless the request settled first, in which
/// case this gives `IRIS_ERR_NOT_FOUND`. A late answer from the peer is ignored.
#[no_mangle]
pub unsafe extern "C" fn iris_client_request_cancel(
    client: *const iris_client,
    id: u64,
) -> iris_result {
    guard(|| ep(client)?.cancel(id))
}

/// Sends a request like `iris_client_request` and waits for its outcome on the calling thread.
/// On `IRIS_OK` the response value's JSON text goes to `resp_out` (free it with
/// `iris_string_free`; `"null"` when the peer sent none) and its length to `resp_len_out`
/// when not NULL. On failure the code tells why (`IRIS_ERR_REMOTE`, `IRIS_ERR_TIMEOUT`, ...)
/// and `iris_last_error_message()` is the error object as JSON text. Not from this client's
/// callback (`IRIS_ERR_INVALID_STATE`).
#[no_mangle]
pub unsafe extern "C" fn iris_client_request_wait(
    client: *const iris_client,
    uuid: *const c_char,
    json: *const c_char,
    len: usize,
    resp_out: *mut *mut c_char,
    resp_len_out: *mut usize,
) -> iris_result {
    guard(|| ops::request_wait(ep(client)?, uuid, json, len, resp_out, resp_len_out))
}

/// Pull model (the client was created with a NULL callback): waits up to `timeout_ms` (0: do
/// not wait) for the next event and hands it over in `event_out`; free it with
/// `iris_event_free`. `IRIS_ERR_TIMEOUT` when none came, `IRIS_ERR_CLOSED` once the client is
/// closed and every event has been taken, `IRIS_ERR_INVALID_STATE` in callback mode. Events
/// wait in a bounded queue: when it is full, reading from peers pauses until events are
/// taken. One thread at a time; others wait their turn.
#[no_mangle]
pub unsafe extern "C" fn iris_client_next_event(
    client: *const iris_client,
    timeout_ms: u32,
    event_out: *mut *mut iris_event,
) -> iris_result {
    guard(|| ops::next_event(ep(client)?, timeout_ms, event_out))
}

/// The connected peers as a JSON array text,
/// `[{"uuid":..,"address":..,"designation":..,"mac":..,"cipher":true,"mode":"v2"}]`, where
/// `cipher` tells whether lines are encrypted and `mode` is the session mode negotiated with
/// that peer: `"v2"`, or `"legacy"` (an iris-rpc 0.2.20 peer, or `security` set to `legacy`).
/// Free it with `iris_string_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_client_peers(
    client: *const iris_client,
    json_out: *mut *mut c_char,
) -> iris_result {
    guard(|| ops::peers(ep(client)?, json_out))
}

/// Sends `{"op":"ping","data":..}` to every stream now; the count goes to `sent_out` when not
/// NULL.
#[no_mangle]
pub unsafe extern "C" fn iris_client_ping(
    client: *const iris_client,
    sent_out: *mut usize,
) -> iris_result {
    guard(|| ops::ping(ep(client)?, sent_out))
}

/// Sets the `data` of ping messages to a JSON value (NUL-terminated), or removes it with NULL.
#[no_mangle]
pub unsafe extern "C" fn iris_client_set_ping_data(
    client: *const iris_client,
    json: *const c_char,
) -> iris_result {
    guard(|| ops::set_ping_data(ep(client)?, json))
}
