//! What users register to receive with: listeners per `op`, digests, filters and request
//! handlers, and how they are called so that a panic in one of them costs only that call.

use std::collections::HashMap;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use serde_json::Value;

use crate::message::Message;
use crate::peer::Peer;

/// A listener for one `op`: `(msg, uuid, peer)`.
pub type Listener = Arc<dyn Fn(&Message, &str, &Peer) + Send + Sync>;
/// A filter: `Ok(())` lets the message through, `Err(value)` refuses it (a refused request is
/// answered with `value` as its error).
pub type Filter = Arc<dyn Fn(&Message, &Peer) -> std::result::Result<(), Value> + Send + Sync>;
/// The future a request handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = std::result::Result<Value, Value>> + Send>>;
/// A request handler.
pub type Handler = Arc<dyn Fn(Request) -> HandlerFuture + Send + Sync>;

/// A request as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request body.
    pub msg: Message,
    /// The sender (`_r.uuid` when routed, else the stream's uuid).
    pub uuid: String,
    /// The stream it came on.
    pub peer: Peer,
}

/// Identifies a registered listener, handler, filter or digest, for removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandlerId(u64);

/// The handlers of one instance. Lists are copied on write, so delivery takes a snapshot
/// without holding the lock while it calls them.
#[derive(Default)]
pub(crate) struct Handlers {
    inner: RwLock<Registry>,
}

/// A snapshot of a list of listeners.
pub(crate) type Listeners = Arc<Vec<(HandlerId, Listener)>>;

#[derive(Default)]
struct Registry {
    next_id: u64,
    listeners: HashMap<String, Arc<Vec<(HandlerId, Listener)>>>,
    digests: Arc<Vec<(HandlerId, Listener)>>,
    filters: Arc<Vec<(HandlerId, Filter)>>,
    requests: HashMap<String, Arc<Vec<(HandlerId, Handler)>>>,
}

impl Registry {
    fn id(&mut self) -> HandlerId {
        self.next_id += 1;
        HandlerId(self.next_id)
    }
}

fn remove_from<T: Clone>(list: &mut Arc<Vec<(HandlerId, T)>>, id: HandlerId) -> bool {
    if list.iter().any(|(i, _)| *i == id) {
        Arc::make_mut(list).retain(|(i, _)| *i != id);
        true
    } else {
        false
    }
}

impl Handlers {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn on(&self, op: &str, f: Listener) -> HandlerId {
        let mut r = self.write();
        let id = r.id();
        Arc::make_mut(r.listeners.entry(op.to_owned()).or_default()).push((id, f));
        id
    }

    pub(crate) fn digest(&self, f: Listener) -> HandlerId {
        let mut r = self.write();
        let id = r.id();
        Arc::make_mut(&mut r.digests).push((id, f));
        id
    }

    pub(crate) fn filter(&self, f: Filter) -> HandlerId {
        let mut r = self.write();
        let id = r.id();
        Arc::make_mut(&mut r.filters).push((id, f));
        id
    }

    pub(crate) fn handle(&self, op: &str, f: Handler) -> HandlerId {
        let mut r = self.write();
        let id = r.id();
        Arc::make_mut(r.requests.entry(op.to_owned()).or_default()).push((id, f));
        id
    }

    pub(crate) fn off(&self, id: HandlerId) -> bool {
        let mut r = self.write();
        let r = &mut *r;
        let mut found = remove_from(&mut r.digests, id) || remove_from(&mut r.filters, id);
        for list in r.listeners.values_mut() {
            found |= remove_from(list, id);
        }
        for list in r.requests.values_mut() {
            found |= remove_from(list, id);
        }
        found
    }

    /// The digests and the listeners of `op`, as they are now.
    pub(crate) fn for_event(&self, op: Option<&str>) -> (Listeners, Option<Listeners>) {
        let r = self.read();
        let l = op.and_then(|op| r.listeners.get(op).cloned());
        (r.digests.clone(), l)
    }

    /// The request handlers of `op`, as they are now.
    pub(crate) fn for_request(&self, op: Option<&str>) -> Option<Arc<Vec<(HandlerId, Handler)>>> {
        op.and_then(|op| self.read().requests.get(op).cloned())
    }

    /// Runs the filters in order: the first refusal wins. A filter that panics refuses.
    pub(crate) fn check(&self, msg: &Message, peer: &Peer) -> Result<(), Refusal> {
        let filters = self.read().filters.clone();
        for (_, f) in filters.iter() {
            match catch_unwind(AssertUnwindSafe(|| f(msg, peer))) {
                Ok(Ok(())) => {}
                Ok(Err(v)) => return Err(Refusal::Refused(v)),
                Err(p) => return Err(Refusal::Panicked(panic_message(p.as_ref()))),
            }
        }
        Ok(())
    }
}

/// Why a filter did not let a message through.
pub(crate) enum Refusal {
    /// The filter refused it with this value.
    Refused(Value),
    /// The filter panicked (the message).
    Panicked(String),
}

/// Calls a listener or digest; a panic is caught and returned as its message.
pub(crate) fn call_listener(
    l: &Listener,
    msg: &Message,
    uuid: &str,
    peer: &Peer,
) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| l(msg, uuid, peer))).map_err(|p| panic_message(p.as_ref()))
}

/// Calls a request handler for its future; a panic is caught and returned as its message.
pub(crate) fn call_handler(h: &Handler, req: Request) -> Result<HandlerFuture, String> {
    catch_unwind(AssertUnwindSafe(|| h(req))).map_err(|p| panic_message(p.as_ref()))
}

/// Polls a handler's future, turning a panic into an error answer.
pub(crate) fn poll_handler(
    fut: Pin<&mut (dyn Future<Output = std::result::Result<Value, Value>> + Send)>,
    cx: &mut Context<'_>,
) -> Poll<std::result::Result<Value, Value>> {
    match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
        Ok(p) => p,
        Err(_) => Poll::Ready(Err(handler_panicked())),
    }
}

/// The error a request gets when its handler panicked (no details reach the peer).
pub(crate) fn handler_panicked() -> Value {
    serde_json::json!({ "error": "the request handler panicked" })
}

/// The text of a panic's payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
