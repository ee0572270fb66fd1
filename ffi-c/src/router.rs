//! `iris_router`: a frontend server relaying to a backend client or server (legacy routing).
//!
//! Events (peers connecting and leaving on either side, refused peers, connection errors) go
//! to a callback on the router's own `iris-callback` thread, or are pulled with
//! `iris_router_next_event`, exactly as for clients and servers; the callback thread, the pull
//! queue and the waiting rules are the ones in `endpoint.rs`.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use iris::{Backend, Router, Side};

use crate::cluster::iris_cluster_options;
use crate::endpoint::{
    iris_destroy_callback, iris_event_callback, not_in_runtime, peers_json, Delivery, UserData,
};
use crate::event::{iris_event, iris_side};
use crate::options::iris_options;
use crate::result::{guard, guard_value, iris_result, FfiError, FfiResult};
use crate::strings::{need_out, owned_c_string};

/// A router (legacy routing through a `Server` frontend): clients connect to its frontend; its
/// backend is a client of a server, or a second server where more clients connect. Events and
/// requests relay both ways, with the original sender's uuid.
pub struct iris_router {
    delivery: Delivery,
    router: Arc<Router>,
}

unsafe fn get<'a>(router: *const iris_router) -> FfiResult<&'a iris_router> {
    router.as_ref().ok_or_else(|| FfiError::null("router"))
}

fn side_of(side: iris_side) -> FfiResult<Side> {
    match side {
        iris_side::IRIS_SIDE_FRONTEND => Ok(Side::Frontend),
        iris_side::IRIS_SIDE_BACKEND => Ok(Side::Backend),
        iris_side::IRIS_SIDE_NONE => Err(FfiError::new(
            iris_result::IRIS_ERR_INVALID_ARGUMENT,
            "side must be IRIS_SIDE_FRONTEND or IRIS_SIDE_BACKEND",
        )),
    }
}

impl iris_router {
    fn start(
        frontend: iris::Options,
        backend: Backend,
        cluster: Option<iris::ClusterOptions>,
        callback: iris_event_callback,
        user_data: UserData,
        destroy: iris_destroy_callback,
    ) -> FfiResult<iris_router> {
        let (delivery, router, sink) = Delivery::start(callback, user_data, destroy, |rt| {
            not_in_runtime("iris_router_start")?;
            let router = match cluster {
                Some(c) => rt.block_on(Router::start_clustered(frontend, backend, c))?,
                None => rt.block_on(Router::start(frontend, backend))?,
            };
            Ok(Arc::new(router))
        })?;
        // Nothing is lost before this: the core keeps router events in an unbounded queue
        // from `start` on, until the first `events()` call takes them.
        if let Some(mut events) = router.events() {
            delivery.runtime.spawn(async move {
                while let Some(ev) = events.recv().await {
                    if let Some(e) = iris_event::from_router(ev) {
                        sink.send(Box::new(e)).await;
                    }
                }
            });
        }
        Ok(iris_router { delivery, router })
    }

    fn close(&self) {
        let router = self.router.clone();
        self.delivery.close(async move { router.close().await });
    }

    fn shutdown(self) {
        let router = self.router.clone();
        self.delivery.shutdown(async move { router.close().await });
    }
}

/// Starts a router and waits until its frontend (and a backend server) is listening.
///
/// `frontend` are the options of the frontend server, where clients connect (`auth`, `port`,
/// `certificates`; port 0 picks a free one, see `iris_router_port`). `backend` are the options
/// of the other side: with `backend_is_server` false, a client that connects to the server at
/// its `address` (designation `"router"` unless set); with `backend_is_server` true, a second
/// server listening on its `port` (see `iris_router_backend_port`). Both options are copied.
///
/// Router events (`IRIS_EVENT_CONNECT`, `IRIS_EVENT_DISCONNECT`, `IRIS_EVENT_REFUSED`,
/// `IRIS_EVENT_ERROR`, each with its `iris_event_side`) go to `callback(user_data, event)` on
/// the router's callback thread, or with a NULL `callback` to `iris_router_next_event`.
/// Messages and requests are relayed, never reported. `destroy` is called exactly once, as for
/// `iris_client_connect`.
#[no_mangle]
pub unsafe extern "C" fn iris_router_start(
    frontend: *const iris_options,
    backend: *const iris_options,
    backend_is_server: bool,
    callback: iris_event_callback,
    user_data: *mut c_void,
    destroy: iris_destroy_callback,
    router_out: *mut *mut iris_router,
) -> iris_result {
    let sides = (frontend, backend, backend_is_server);
    start(sides, None, (callback, user_data, destroy), router_out)
}

/// `iris_router_start`, joined to the cluster of routers that `cluster` names
/// (`iris_cluster_options_new`; copied, so it may be freed afterwards): peers on any router of
/// the cluster reach each other as through one router (addressed events and requests, events
/// without address, presence; `docs/CLUSTER.md`). Waits until the router is connected to NATS
/// and listening. NATS unreachable is `IRIS_ERR_IO` (the router does not start alone: that
/// would split the cluster with nobody told), refused credentials or TLS likewise; bad
/// options `IRIS_ERR_CONFIG`; the message never shows a credential. NATS lost later: each
/// router still delivers between its own peers and requests to peers on other routers fail
/// at once, until NATS is back. `destroy` is called exactly once, also when this fails.
#[no_mangle]
pub unsafe extern "C" fn iris_router_start_clustered(
    frontend: *const iris_options,
    backend: *const iris_options,
    backend_is_server: bool,
    cluster: *const iris_cluster_options,
    callback: iris_event_callback,
    user_data: *mut c_void,
    destroy: iris_destroy_callback,
    router_out: *mut *mut iris_router,
) -> iris_result {
    let sides = (frontend, backend, backend_is_server);
    start(
        sides,
        Some(cluster),
        (callback, user_data, destroy),
        router_out,
    )
}

/// Both starts, inside the panic guard: checks every argument, then starts; `destroy` runs
/// exactly once either way. `sides` are the frontend and backend options and whether the
/// backend is a server; `events` the callback, its user data and the destroy callback.
unsafe fn start(
    sides: (*const iris_options, *const iris_options, bool),
    cluster: Option<*const iris_cluster_options>,
    events: (iris_event_callback, *mut c_void, iris_destroy_callback),
    router_out: *mut *mut iris_router,
) -> iris_result {
    let (frontend, backend, backend_is_server) = sides;
    let (callback, user_data, destroy) = events;
    guard(|| {
        let checked = (|| {
            need_out(router_out, "router_out")?;
            let f = frontend
                .as_ref()
                .ok_or_else(|| FfiError::null("frontend"))?
                .build()?;
            let b = backend
                .as_ref()
                .ok_or_else(|| FfiError::null("backend"))?
                .build()?;
            let c = match cluster {
                Some(c) => Some(
                    c.as_ref()
                        .ok_or_else(|| FfiError::null("cluster"))?
                        .build()?,
                ),
                None => None,
            };
            Ok::<_, FfiError>((f, b, c))
        })();
        let (f, b, c) = match checked {
            Ok(x) => x,
            Err(e) => {
                // The documented rule: destroy runs exactly once, also when creation fails.
                if let Some(d) = destroy {
                    d(user_data);
                }
                return Err(e);
            }
        };
        let backend = if backend_is_server {
            Backend::Server(b)
        } else {
            Backend::Client(b)
        };
        let router = iris_router::start(f, backend, c, callback, UserData(user_data), destroy)?;
        *router_out = Box::into_raw(Box::new(router));
        Ok(())
    })
}

/// The TCP port the frontend listens on (0 if `router` is NULL).
#[no_mangle]
pub unsafe extern "C" fn iris_router_port(router: *const iris_router) -> u16 {
    guard_value(0, || {
        router.as_ref().map_or(0, |r| r.router.local_addr().port())
    })
}

/// The TCP port the backend server listens on; 0 when the backend is a client (or `router` is
/// NULL).
#[no_mangle]
pub unsafe extern "C" fn iris_router_backend_port(router: *const iris_router) -> u16 {
    guard_value(0, || {
        router
            .as_ref()
            .and_then(|r| r.router.backend_addr())
            .map_or(0, |a| a.port())
    })
}

/// The peers connected on one side (`IRIS_SIDE_FRONTEND` or `IRIS_SIDE_BACKEND`) as a JSON
/// array text, in the form of `iris_server_peers`. Free it with `iris_string_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_router_peers(
    router: *const iris_router,
    side: iris_side,
    json_out: *mut *mut c_char,
) -> iris_result {
    guard(|| {
        need_out(json_out, "json_out")?;
        let r = get(router)?;
        let text = peers_json(&r.router.peers(side_of(side)?));
        *json_out = owned_c_string(&text)?;
        Ok(())
    })
}

/// The routes known on one side as a JSON object text, `{"uuid": "uuid of the peer that
/// reaches it", ...}`. Free it with `iris_string_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_router_routes(
    router: *const iris_router,
    side: iris_side,
    json_out: *mut *mut c_char,
) -> iris_result {
    guard(|| {
        need_out(json_out, "json_out")?;
        let r = get(router)?;
        let map: serde_json::Map<String, serde_json::Value> = r
            .router
            .routes(side_of(side)?)
            .into_iter()
            .map(|(uuid, via)| (uuid, serde_json::Value::String(via)))
            .collect();
        *json_out = owned_c_string(&serde_json::Value::Object(map).to_string())?;
        Ok(())
    })
}

/// Pull model (the router was started with a NULL callback): waits up to `timeout_ms` (0: do
/// not wait) for the next router event and hands it over in `event_out`; free it with
/// `iris_event_free`. `IRIS_ERR_TIMEOUT` when none came, `IRIS_ERR_CLOSED` once the router is
/// closed and every event has been taken, `IRIS_ERR_INVALID_STATE` in callback mode or from
/// the router's own callback. One thread at a time; others wait their turn.
#[no_mangle]
pub unsafe extern "C" fn iris_router_next_event(
    router: *const iris_router,
    timeout_ms: u32,
    event_out: *mut *mut iris_event,
) -> iris_result {
    guard(|| {
        need_out(event_out, "event_out")?;
        *event_out = Box::into_raw(get(router)?.delivery.next_event(timeout_ms)?);
        Ok(())
    })
}

/// Closes the router: both sides stop listening or connecting, every stream ends, relayed
/// requests settle for their senders, then event delivery ends (`iris_router_next_event`
/// returns `IRIS_ERR_CLOSED`). Waits for the close, except when called from this router's own
/// callback, where it only starts it. The frontend's port is free again afterwards, so a new
/// router may listen on it. The handle stays valid until `iris_router_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_router_close(router: *mut iris_router) -> iris_result {
    guard(|| {
        get(router)?.close();
        Ok(())
    })
}

/// Frees the router, closing it first if needed, then calls the destroy callback; unless
/// called from this router's own callback, this returns after both. NULL does nothing.
#[no_mangle]
pub unsafe extern "C" fn iris_router_free(router: *mut iris_router) {
    guard_value((), || {
        if !router.is_null() {
            Box::from_raw(router).shutdown();
        }
    })
}
