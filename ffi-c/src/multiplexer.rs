//! `iris_multiplexer`: named clients and servers built from one configuration (legacy
//! `createFromConfig`), used as one. Events of every link go to one callback (or pull queue),
//! tagged with the link's name (`iris_event_link`); requests from peers arrive as request
//! events, answered with `iris_request_respond` as for clients and servers.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use iris::{Event, Link, Multiplexer};
use serde_json::{json, Value};

use crate::endpoint::{
    iris_destroy_callback, iris_event_callback, iris_response_callback, not_in_runtime, ops,
    Delivery, UserData,
};
use crate::event::iris_event;
use crate::result::{guard, guard_value, iris_result, FfiError, FfiResult};
use crate::strings::{arg_opt_str, arg_str, need_out, owned_c_string};

/// A multiplexer (legacy `Multiplexer` from `createFromConfig`).
pub struct iris_multiplexer {
    delivery: Delivery,
    mux: Arc<Multiplexer>,
}

unsafe fn get<'a>(mux: *const iris_multiplexer) -> FfiResult<&'a iris_multiplexer> {
    mux.as_ref().ok_or_else(|| FfiError::null("multiplexer"))
}

fn json_arg(text: Option<&str>, what: &str) -> FfiResult<Value> {
    match text {
        None => Ok(json!({})),
        Some(t) => serde_json::from_str(t).map_err(|e| {
            FfiError::new(
                iris_result::IRIS_ERR_INVALID_JSON,
                format!("{what} is not valid JSON: {e}"),
            )
        }),
    }
}

impl iris_multiplexer {
    fn start(
        common: Value,
        config: Value,
        title: Option<String>,
        callback: iris_event_callback,
        user_data: UserData,
        destroy: iris_destroy_callback,
    ) -> FfiResult<iris_multiplexer> {
        let (delivery, (mux, events), sink) =
            Delivery::start(callback, user_data, destroy, |rt| {
                not_in_runtime("iris_multiplexer_from_config")?;
                rt.block_on(async {
                    let mux = Multiplexer::from_config(&common, &config, title.as_deref()).await?;
                    let events = mux.events();
                    Ok::<_, iris::Error>((Arc::new(mux), events))
                })
                .map_err(FfiError::from)
            })?;
        // The links started before we could subscribe: their listen addresses are reported
        // here (the core's `Listen` is dropped); streams already up come first from the core,
        // whose receivers start with a `Connect` for each.
        let mut early: Vec<(String, Event)> = Vec::new();
        for (name, link) in mux.links() {
            if let Link::Server(s) = link {
                early.push((
                    name.to_owned(),
                    Event::Listen {
                        address: s.local_addr(),
                    },
                ));
            }
        }
        delivery.runtime.spawn(async move {
            let mut events = events;
            for (name, ev) in early {
                if let Some(e) = iris_event::from_core(ev) {
                    sink.send(Box::new(e.with_link(&name))).await;
                }
            }
            while let Some((name, ev)) = events.recv().await {
                if matches!(ev, Event::Listen { .. }) {
                    continue;
                }
                if let Some(e) = iris_event::from_core(ev) {
                    sink.send(Box::new(e.with_link(&name))).await;
                }
            }
        });
        Ok(iris_multiplexer { delivery, mux })
    }

    fn close(&self) {
        let mux = self.mux.clone();
        self.delivery.close(async move { mux.close().await });
    }
}

/// Builds a multiplexer like legacy `createFromConfig(common, config, title)`, and waits until
/// its servers listen. `config_json` is a JSON object: when it has `port` or `address` it is
/// one link named `title` (else the `designation` of `common_json`, else `"rpc"`); otherwise
/// each of its entries is a link named by its key. Each entry is legacy options (`auth`,
/// `uuid`, `certificates: {key, cert}` as PEM text or paths, ...) with `port` for a server or
/// `address` for a client; `common_json` (NULL: none) is merged under every entry. `title`
/// may be NULL.
///
/// Events of every link (connect, disconnect, message, request, error, listen), each with the
/// name of its link (`iris_event_link`), go to `callback(user_data, event)` on the
/// multiplexer's callback thread, or with a NULL `callback` to `iris_multiplexer_next_event`.
/// `destroy` is called exactly once, as for `iris_client_connect`.
#[no_mangle]
pub unsafe extern "C" fn iris_multiplexer_from_config(
    common_json: *const c_char,
    config_json: *const c_char,
    title: *const c_char,
    callback: iris_event_callback,
    user_data: *mut c_void,
    destroy: iris_destroy_callback,
    multiplexer_out: *mut *mut iris_multiplexer,
) -> iris_result {
    guard(|| {
        let checked = (|| {
            need_out(multiplexer_out, "multiplexer_out")?;
            let config = json_arg(Some(arg_str(config_json, "config_json")?), "config_json")?;
            let common = json_arg(arg_opt_str(common_json, "common_json")?, "common_json")?;
            let title = arg_opt_str(title, "title")?.map(str::to_owned);
            Ok::<_, FfiError>((common, config, title))
        })();
        let (common, config, title) = match checked {
            Ok(x) => x,
            Err(e) => {
                // The documented rule: destroy runs exactly once, also when creation fails.
                if let Some(d) = destroy {
                    d(user_data);
                }
                return Err(e);
            }
        };
        let m = iris_multiplexer::start(
            common,
            config,
            title,
            callback,
            UserData(user_data),
            destroy,
        )?;
        *multiplexer_out = Box::into_raw(Box::new(m));
        Ok(())
    })
}

/// The port the link `name` listens on; 0 when it is a client, unknown, or an argument is
/// NULL.
#[no_mangle]
pub unsafe extern "C" fn iris_multiplexer_link_port(
    multiplexer: *const iris_multiplexer,
    name: *const c_char,
) -> u16 {
    guard_value(0, || {
        let Some(m) = multiplexer.as_ref() else {
            return 0;
        };
        let Ok(name) = arg_str(name, "name") else {
            return 0;
        };
        match m.mux.link(name) {
            Some(Link::Server(s)) => s.local_addr().port(),
            _ => 0,
        }
    })
}

/// The peers connected across links as a JSON array text, `[{"uuid":..,"link":..}]` (legacy
/// `active`). Free it with `iris_string_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_multiplexer_active(
    multiplexer: *const iris_multiplexer,
    json_out: *mut *mut c_char,
) -> iris_result {
    guard(|| {
        need_out(json_out, "json_out")?;
        let list: Vec<Value> = get(multiplexer)?
            .mux
            .active()
            .into_iter()
            .map(|(uuid, link)| json!({ "uuid": uuid, "link": link }))
            .collect();
        *json_out = owned_c_string(&Value::Array(list).to_string())?;
        Ok(())
    })
}

/// Sends the event message `json` (a JSON object: `len` bytes, or NUL-terminated when `len`
/// is 0) to every stream of every link; the count goes to `sent_out` when not NULL.
/// `IRIS_ERR_NOT_CONNECTED` when no stream is up.
#[no_mangle]
pub unsafe extern "C" fn iris_multiplexer_dispatch(
    multiplexer: *const iris_multiplexer,
    json: *const c_char,
    len: usize,
    sent_out: *mut usize,
) -> iris_result {
    guard(|| {
        let m = get(multiplexer)?;
        let n = m.mux.dispatch(ops::message(json, len)?)?;
        if let Some(s) = sent_out.as_mut() {
            *s = n;
        }
        Ok(())
    })
}

/// Sends the event message `json` to peer `uuid` on the link that holds it (directly or
/// through a router); `IRIS_ERR_NOT_CONNECTED` when no link does.
#[no_mangle]
pub unsafe extern "C" fn iris_multiplexer_dispatch_to(
    multiplexer: *const iris_multiplexer,
    uuid: *const c_char,
    json: *const c_char,
    len: usize,
) -> iris_result {
    guard(|| {
        let m = get(multiplexer)?;
        let uuid = arg_str(uuid, "uuid")?;
        Ok(m.mux.dispatch_to(uuid, ops::message(json, len)?)?)
    })
}

/// Sends the request `json` to peer `uuid` on the link that holds it and returns at once;
/// `callback(user_data, result, json, len)` is then called exactly once on the multiplexer's
/// callback thread, as for `iris_client_request`. Its id goes to `id_out` when not NULL. An
/// error return means the callback will not be called.
#[no_mangle]
pub unsafe extern "C" fn iris_multiplexer_request(
    multiplexer: *const iris_multiplexer,
    uuid: *const c_char,
    json: *const c_char,
    len: usize,
    callback: iris_response_callback,
    user_data: *mut c_void,
    id_out: *mut u64,
) -> iris_result {
    guard(|| {
        let m = get(multiplexer)?;
        let callback = callback.ok_or_else(|| FfiError::null("callback"))?;
        let uuid = arg_str(uuid, "uuid")?.to_owned();
        let msg = ops::message(json, len)?;
        // Sent here, on the caller's thread, so it keeps its place among the caller's sends.
        let reply = m.mux.request_to(&uuid, msg);
        let fut = async move { Ok(reply.await?.to_string()) };
        let id = m.delivery.request(fut, callback, UserData(user_data))?;
        if let Some(o) = id_out.as_mut() {
            *o = id;
        }
        Ok(())
    })
}

/// Withdraws interest in request `id`, as `iris_client_request_cancel`.
#[no_mangle]
pub unsafe extern "C" fn iris_multiplexer_request_cancel(
    multiplexer: *const iris_multiplexer,
    id: u64,
) -> iris_result {
    guard(|| get(multiplexer)?.delivery.cancel(id))
}

/// Sends a request like `iris_multiplexer_request` and waits for its outcome, as
/// `iris_client_request_wait`: the response value's JSON text in `resp_out` (free it with
/// `iris_string_free`), its length in `resp_len_out` when not NULL; on failure
/// `iris_last_error_message()` is the error object as JSON text. Not from this multiplexer's
/// callback (`IRIS_ERR_INVALID_STATE`).
#[no_mangle]
pub unsafe extern "C" fn iris_multiplexer_request_wait(
    multiplexer: *const iris_multiplexer,
    uuid: *const c_char,
    json: *const c_char,
    len: usize,
    resp_out: *mut *mut c_char,
    resp_len_out: *mut usize,
) -> iris_result {
    guard(|| {
        need_out(resp_out, "resp_out")?;
        let m = get(multiplexer)?;
        let uuid = arg_str(uuid, "uuid")?;
        let msg = ops::message(json, len)?;
        m.delivery.no_wait_here("request_wait")?;
        let reply = m.mux.request_to(uuid, msg);
        let outcome = m.delivery.runtime.block_on(reply).map(|v| v.to_string());
        match outcome {
            Ok(text) => {
                *resp_out = owned_c_string(&text)?;
                if let Some(l) = resp_len_out.as_mut() {
                    *l = text.len();
                }
                Ok(())
            }
            Err(e) => Err(FfiError::new(
                iris_result::of_kind(e.kind()),
                e.to_legacy_value().to_string(),
            )),
        }
    })
}

/// Pull model (created with a NULL callback): as `iris_server_next_event`.
#[no_mangle]
pub unsafe extern "C" fn iris_multiplexer_next_event(
    multiplexer: *const iris_multiplexer,
    timeout_ms: u32,
    event_out: *mut *mut iris_event,
) -> iris_result {
    guard(|| {
        need_out(event_out, "event_out")?;
        *event_out = Box::into_raw(get(multiplexer)?.delivery.next_event(timeout_ms)?);
        Ok(())
    })
}

/// Closes every link; pending requests settle with `IRIS_ERR_CLOSED`, then event delivery
/// ends. Waits, except when called from this multiplexer's own callback. The handle stays
/// valid until `iris_multiplexer_free`.
#[no_mangle]
pub unsafe extern "C" fn iris_multiplexer_close(multiplexer: *mut iris_multiplexer) -> iris_result {
    guard(|| {
        get(multiplexer)?.close();
        Ok(())
    })
}

/// Frees the multiplexer, closing it first if needed. Every request callback still due is
/// called, then the destroy callback; unless called from this multiplexer's own callback, this
/// returns after both. NULL does nothing.
#[no_mangle]
pub unsafe extern "C" fn iris_multiplexer_free(multiplexer: *mut iris_multiplexer) {
    guard_value((), || {
        if !multiplexer.is_null() {
            let m = Box::from_raw(multiplexer);
            let mux = m.mux.clone();
            m.delivery.shutdown(async move { mux.close().await });
        }
    })
}
