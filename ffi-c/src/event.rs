//! `iris_event` (what happened on a client or server) and `iris_request` (a request to answer).

use std::ffi::{c_char, CString};
use std::ptr;
use std::sync::Mutex;

use iris::{Event, Responder, RouterEvent};

use crate::result::{guard, guard_value, iris_result, FfiError};
use crate::strings::{arg_opt_str, c_string_lossy, check_json, need_out};

/// What an [`iris_event`] reports. The numbers are stable.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum iris_event_kind {
    /// A peer authenticated and its stream is up: uuid, address, designation.
    IRIS_EVENT_CONNECT = 1,
    /// An authenticated stream ended: uuid, address, designation, reason in `error_message`.
    IRIS_EVENT_DISCONNECT = 2,
    /// An event message arrived: `json`, sender `uuid`, stream `address`.
    IRIS_EVENT_MESSAGE = 3,
    /// A request arrived: `json`, sender `uuid`, `address`; take it with
    /// `iris_event_take_request` to answer it.
    IRIS_EVENT_REQUEST = 4,
    /// A connection failed or was refused (wrong secret, TLS, connect): `error_code`,
    /// `error_message`, and the remote `address` when known.
    IRIS_EVENT_ERROR = 5,
    /// The server is listening: `address` is the bound `host:port`.
    IRIS_EVENT_LISTEN = 6,
    /// Routers only: a frontend peer was refused because it claimed a uuid held on the other
    /// side; `uuid`, `address`, `designation` of the refused peer.
    IRIS_EVENT_REFUSED = 7,
}

/// Which side of an `iris_router` an event happened on (`iris_event_side`). The numbers are
/// stable.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum iris_side {
    /// Not a router event.
    IRIS_SIDE_NONE = 0,
    /// The router's frontend server.
    IRIS_SIDE_FRONTEND = 1,
    /// The router's backend client or server.
    IRIS_SIDE_BACKEND = 2,
}

impl From<iris::Side> for iris_side {
    fn from(side: iris::Side) -> Self {
        match side {
            iris::Side::Frontend => iris_side::IRIS_SIDE_FRONTEND,
            iris::Side::Backend => iris_side::IRIS_SIDE_BACKEND,
        }
    }
}

/// One event. In callback mode the library owns it and it lives until the callback returns;
/// from `iris_*_next_event` the caller owns it and frees it with `iris_event_free`. Strings
/// read from it live as long as the event.
pub struct iris_event {
    kind: iris_event_kind,
    uuid: Option<CString>,
    address: Option<CString>,
    designation: Option<CString>,
    json: Option<CString>,
    error_message: Option<CString>,
    error_code: iris_result,
    side: iris_side,
    link: Option<CString>,
    request: Mutex<Option<Box<iris_request>>>,
}

/// A request received from a peer, to answer with `iris_request_respond` from any thread at
/// any later time, then free with `iris_request_free`. Freeing it unanswered answers the peer
/// with the error `{"error":"No such handler 'OP'"}`; never answering leaves the peer to its
/// own timeout.
pub struct iris_request {
    responder: Mutex<Option<Responder>>,
    json: CString,
    uuid: CString,
    address: CString,
    op: Option<CString>,
}

impl iris_event {
    fn empty(kind: iris_event_kind) -> Self {
        iris_event {
            kind,
            uuid: None,
            address: None,
            designation: None,
            json: None,
            error_message: None,
            error_code: iris_result::IRIS_OK,
            side: iris_side::IRIS_SIDE_NONE,
            link: None,
            request: Mutex::new(None),
        }
    }

    fn with_peer(kind: iris_event_kind, peer: &iris::Peer) -> Self {
        let mut e = Self::empty(kind);
        e.uuid = Some(c_string_lossy(peer.uuid()));
        e.address = Some(c_string_lossy(peer.address()));
        e.designation = peer.designation().map(c_string_lossy);
        e
    }

    /// A listen event for `address`.
    pub(crate) fn listen(address: &str) -> Self {
        let mut e = Self::empty(iris_event_kind::IRIS_EVENT_LISTEN);
        e.address = Some(c_string_lossy(address));
        e
    }

    /// Converts a core event; `None` for kinds the C API does not know.
    pub(crate) fn from_core(ev: Event) -> Option<Self> {
        use iris_event_kind::*;
        Some(match ev {
            Event::Listen { address } => Self::listen(&address.to_string()),
            Event::Connect { peer } => Self::with_peer(IRIS_EVENT_CONNECT, &peer),
            Event::Disconnect { peer, reason } => {
                let mut e = Self::with_peer(IRIS_EVENT_DISCONNECT, &peer);
                e.error_message = Some(c_string_lossy(&reason));
                e
            }
            Event::Message { msg, uuid, peer } => {
                let mut e = Self::with_peer(IRIS_EVENT_MESSAGE, &peer);
                e.uuid = Some(c_string_lossy(&uuid));
                e.json = Some(c_string_lossy(msg.as_str()));
                e
            }
            Event::Request(req) => {
                let (msg, uuid, peer, responder) = req.into_parts();
                let mut e = Self::with_peer(IRIS_EVENT_REQUEST, &peer);
                let json = c_string_lossy(msg.as_str());
                let uuid = c_string_lossy(&uuid);
                e.uuid = Some(uuid.clone());
                e.json = Some(json.clone());
                e.request = Mutex::new(Some(Box::new(iris_request {
                    responder: Mutex::new(Some(responder)),
                    json,
                    uuid,
                    address: c_string_lossy(peer.address()),
                    op: msg.op().map(c_string_lossy),
                })));
                e
            }
            Event::Error { error, address } => {
                let mut e = Self::empty(IRIS_EVENT_ERROR);
                e.error_code = iris_result::of_kind(error.kind());
                e.error_message = Some(c_string_lossy(&error.to_string()));
                e.address = address.as_deref().map(c_string_lossy);
                e
            }
            _ => return None,
        })
    }
}

impl iris_event {
    /// The event tagged with the name of the multiplexer link it happened on.
    pub(crate) fn with_link(mut self, name: &str) -> Self {
        self.link = Some(c_string_lossy(name));
        self
    }

    /// Converts a router event; `None` for kinds the C API does not know.
    pub(crate) fn from_router(ev: RouterEvent) -> Option<Self> {
        use iris_event_kind::*;
        let mut e = match ev {
            RouterEvent::Connect { side, peer } => {
                let mut e = Self::with_peer(IRIS_EVENT_CONNECT, &peer);
                e.side = side.into();
                e
            }
            RouterEvent::Disconnect { side, peer, reason } => {
                let mut e = Self::with_peer(IRIS_EVENT_DISCONNECT, &peer);
                e.side = side.into();
                e.error_message = Some(c_string_lossy(&reason));
                e
            }
            RouterEvent::Refused { peer } => {
                let mut e = Self::with_peer(IRIS_EVENT_REFUSED, &peer);
                e.side = iris_side::IRIS_SIDE_FRONTEND;
                e
            }
            RouterEvent::Error {
                side,
                error,
                address,
            } => {
                let mut e = Self::from_core(Event::Error { error, address })?;
                e.side = side.into();
                e
            }
            _ => return None,
        };
        if e.kind == IRIS_EVENT_REFUSED {
            e.error_message = Some(c_string_lossy(
                "refused: the peer claimed a uuid held on the other side",
            ));
        }
        Some(e)
    }
}

fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(ptr::null(), |s| s.as_ptr())
}

/// The kind of `event` (0 when `event` is NULL).
#[no_mangle]
pub unsafe extern "C" fn iris_event_get_kind(event: *const iris_event) -> u32 {
    guard_value(0, || event.as_ref().map_or(0, |e| e.kind as u32))
}

/// The peer's uuid (connect, disconnect) or the sender's uuid (message, request); NULL for
/// other kinds.
#[no_mangle]
pub unsafe extern "C" fn iris_event_uuid(event: *const iris_event) -> *const c_char {
    guard_value(ptr::null(), || {
        event.as_ref().map_or(ptr::null(), |e| opt_ptr(&e.uuid))
    })
}

/// The remote `host:port` of the stream, the bound address (listen), or the address that
/// failed (error, when known); otherwise NULL.
#[no_mangle]
pub unsafe extern "C" fn iris_event_address(event: *const iris_event) -> *const c_char {
    guard_value(ptr::null(), || {
        event.as_ref().map_or(ptr::null(), |e| opt_ptr(&e.address))
    })
}

/// The designation the peer announced (NULL when none or not a peer event).
#[no_mangle]
pub unsafe extern "C" fn iris_event_designation(event: *const iris_event) -> *const c_char {
    guard_value(ptr::null(), || {
        event
            .as_ref()
            .map_or(ptr::null(), |e| opt_ptr(&e.designation))
    })
}

/// The message of a message or request event as JSON object text (NUL-terminated, without
/// `_sig`); its length in bytes goes to `len_out` when not NULL. NULL for other kinds.
#[no_mangle]
pub unsafe extern "C" fn iris_event_json(
    event: *const iris_event,
    len_out: *mut usize,
) -> *const c_char {
    guard_value(ptr::null(), || {
        let Some(json) = event.as_ref().and_then(|e| e.json.as_ref()) else {
            return ptr::null();
        };
        if let Some(l) = len_out.as_mut() {
            *l = json.as_bytes().len();
        }
        json.as_ptr()
    })
}

/// The side of a router event (`IRIS_SIDE_FRONTEND` or `IRIS_SIDE_BACKEND`);
/// `IRIS_SIDE_NONE` for client and server events, or when `event` is NULL.
#[no_mangle]
pub unsafe extern "C" fn iris_event_side(event: *const iris_event) -> iris_side {
    guard_value(iris_side::IRIS_SIDE_NONE, || {
        event.as_ref().map_or(iris_side::IRIS_SIDE_NONE, |e| e.side)
    })
}

/// The name of the multiplexer link the event happened on; NULL for other objects' events.
#[no_mangle]
pub unsafe extern "C" fn iris_event_link(event: *const iris_event) -> *const c_char {
    guard_value(ptr::null(), || {
        event.as_ref().map_or(ptr::null(), |e| opt_ptr(&e.link))
    })
}

/// The error text of an error event, the reason of a disconnect event, or why a peer was
/// refused (router); NULL otherwise.
#[no_mangle]
pub unsafe extern "C" fn iris_event_error_message(event: *const iris_event) -> *const c_char {
    guard_value(ptr::null(), || {
        event
            .as_ref()
            .map_or(ptr::null(), |e| opt_ptr(&e.error_message))
    })
}

/// The error code of an error event (`IRIS_ERR_AUTH` for a wrong secret, ...); `IRIS_OK` for
/// other kinds.
#[no_mangle]
pub unsafe extern "C" fn iris_event_error_code(event: *const iris_event) -> iris_result {
    guard_value(iris_result::IRIS_OK, || {
        event
            .as_ref()
            .map_or(iris_result::IRIS_OK, |e| e.error_code)
    })
}

/// Takes the request out of a request event, so it can be answered after the event is gone
/// (from any thread). Works once per event, also from inside the event callback; later calls
/// and other kinds give `IRIS_ERR_NOT_FOUND`. The caller owns the request: answer it with
/// `iris_request_respond` and free it with `iris_request_free`. A request left in its event is
/// answered with a "No such handler" error when the event is freed.
#[no_mangle]
pub unsafe extern "C" fn iris_event_take_request(
    event: *const iris_event,
    request_out: *mut *mut iris_request,
) -> iris_result {
    guard(|| {
        need_out(request_out, "request_out")?;
        let e = event.as_ref().ok_or_else(|| FfiError::null("event"))?;
        let taken = e
            .request
            .lock()
            .map_err(|_| FfiError::state("poisoned"))?
            .take();
        let req = taken.ok_or_else(|| {
            FfiError::new(
                iris_result::IRIS_ERR_NOT_FOUND,
                "no request in this event (not a request event, or already taken)",
            )
        })?;
        *request_out = Box::into_raw(req);
        Ok(())
    })
}

/// Frees an event from `iris_*_next_event`. NULL does nothing. Never call it on the event
/// passed to a callback.
#[no_mangle]
pub unsafe extern "C" fn iris_event_free(event: *mut iris_event) {
    guard_value((), || {
        if !event.is_null() {
            drop(Box::from_raw(event));
        }
    })
}

/// The request body as JSON object text (NUL-terminated); its length goes to `len_out` when
/// not NULL. NULL if `request` is NULL.
#[no_mangle]
pub unsafe extern "C" fn iris_request_json(
    request: *const iris_request,
    len_out: *mut usize,
) -> *const c_char {
    guard_value(ptr::null(), || {
        let Some(r) = request.as_ref() else {
            return ptr::null();
        };
        if let Some(l) = len_out.as_mut() {
            *l = r.json.as_bytes().len();
        }
        r.json.as_ptr()
    })
}

/// The request's `op` when it is a string, else NULL.
#[no_mangle]
pub unsafe extern "C" fn iris_request_op(request: *const iris_request) -> *const c_char {
    guard_value(ptr::null(), || {
        request.as_ref().map_or(ptr::null(), |r| opt_ptr(&r.op))
    })
}

/// The sender's uuid.
#[no_mangle]
pub unsafe extern "C" fn iris_request_uuid(request: *const iris_request) -> *const c_char {
    guard_value(ptr::null(), || {
        request.as_ref().map_or(ptr::null(), |r| r.uuid.as_ptr())
    })
}

/// The remote `host:port` of the stream the request came on.
#[no_mangle]
pub unsafe extern "C" fn iris_request_address(request: *const iris_request) -> *const c_char {
    guard_value(ptr::null(), || {
        request.as_ref().map_or(ptr::null(), |r| r.address.as_ptr())
    })
}

/// Answers the request, from any thread: `err_json` is the error value (NULL for none, as
/// legacy `cb(null, resp)`), `resp_json` the response value (NULL to send none). Both are
/// NUL-terminated JSON texts of any type, e.g. `"{\"sum\":5}"` or `"\"text\""`. Use
/// `{"_Error":true,"name":"TypeError","message":"..."}` for an error a legacy peer rebuilds as
/// an `Error`.
///
/// Invalid JSON gives `IRIS_ERR_INVALID_JSON` and leaves the request unanswered; a second
/// answer gives `IRIS_ERR_INVALID_STATE`. If the stream has gone, the answer is dropped and
/// the call still succeeds. The request must still be freed afterwards.
#[no_mangle]
pub unsafe extern "C" fn iris_request_respond(
    request: *mut iris_request,
    err_json: *const c_char,
    resp_json: *const c_char,
) -> iris_result {
    guard(|| {
        let r = request.as_ref().ok_or_else(|| FfiError::null("request"))?;
        let err = arg_opt_str(err_json, "err_json")?;
        let resp = arg_opt_str(resp_json, "resp_json")?;
        if let Some(e) = err {
            check_json(e, "err_json")?;
        }
        if let Some(r) = resp {
            check_json(r, "resp_json")?;
        }
        let responder = r
            .responder
            .lock()
            .map_err(|_| FfiError::state("poisoned"))?
            .take()
            .ok_or_else(|| FfiError::state("the request was already answered"))?;
        responder.respond_raw(err, resp);
        Ok(())
    })
}

/// Frees a request; if it was not answered, the peer gets a "No such handler" error. NULL
/// does nothing.
#[no_mangle]
pub unsafe extern "C" fn iris_request_free(request: *mut iris_request) {
    guard_value((), || {
        if !request.is_null() {
            drop(Box::from_raw(request));
        }
    })
}
