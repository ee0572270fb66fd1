//! Who holds which uuid: the authenticated streams of an instance, and the one lookup that
//! finds the stream a message for a uuid goes out on (directly, or through a router).

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard, RwLockReadGuard};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::peer::Peer;
use crate::protocol::Mode;
use crate::stream::Stream;

/// Where a uuid is held.
pub(crate) struct Holder {
    /// The stream to send on.
    pub(crate) stream: Arc<Stream>,
    /// The uuid is not the stream's own but reachable through it (a router): messages need
    /// `_uuid` to reach it.
    pub(crate) routed: bool,
}

impl Engine {
    pub(crate) fn streams(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Stream>>> {
        self.streams.read().unwrap_or_else(|p| p.into_inner())
    }

    fn older(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<Stream>>>> {
        self.older.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an authenticated stream. As in legacy, a stream already registered with the
    /// same uuid stays connected: it is set aside (its own requests, answers and events go
    /// on), and `dispatch`/`request` to that uuid reach the newest stream.
    ///
    /// Except that a uuid held by a v2 stream is never taken over by a legacy-mode one: a v2
    /// peer proved the secret over its own connection and its uuid is bound into that proof,
    /// while a legacy-mode peer's claim is only as good as a secret that may have leaked to any
    /// legacy peer (issue 19, attack 4). The newcomer is refused (the error says why) and the v2
    /// holder stays reachable. A uuid routed through a v2 stream counts as held by it. A v2
    /// newcomer still takes a uuid over, as in legacy.
    pub(crate) fn register(&self, stream: Arc<Stream>) -> Result<()> {
        let uuid = stream.peer.uuid().to_owned();
        let legacy = stream.peer.mode() == Mode::Legacy;
        // A uuid reachable through a v2 peer (a router's route) is held by that v2 stream too: a
        // direct stream would win over the route.
        let routed_via_v2 = legacy
            && self
                .route_via(&uuid)
                .and_then(|via| self.stream(&via))
                .is_some_and(|s| s.peer.mode() == Mode::V2);
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if legacy {
            let older = self.older();
            let held_by_v2 = routed_via_v2
                || streams
                    .get(&uuid)
                    .into_iter()
                    .chain(older.get(&uuid).into_iter().flatten())
                    .any(|s| s.peer.mode() == Mode::V2);
            if held_by_v2 {
                return Err(Error::Auth(format!(
                    "refused a legacy-mode stream claiming uuid {uuid:?}: that uuid is held by a \
                     v2 stream, which a legacy-mode peer (authenticated by the shared secret \
                     alone) may not take over"
                )));
            }
        }
        if let Some(old) = streams.insert(uuid.clone(), stream) {
            self.older().entry(uuid).or_default().push(old);
        }
        Ok(())
    }

    /// Removes a stream. When it was the registered one for its uuid, the newest stream set
    /// aside with that uuid takes its place, or else the routes through that uuid go away
    /// (returned).
    pub(crate) fn unregister(&self, stream: &Arc<Stream>) -> Vec<String> {
        let uuid = stream.peer.uuid();
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        let mut older = self.older();
        let current = streams.get(uuid).is_some_and(|s| Arc::ptr_eq(s, stream));
        let next = match older.get_mut(uuid) {
            Some(list) => {
                let next = if current {
                    list.pop()
                } else {
                    list.retain(|s| !Arc::ptr_eq(s, stream));
                    None
                };
                if list.is_empty() {
                    older.remove(uuid);
                }
                next
            }
            None => None,
        };
        if !current {
            return Vec::new();
        }
        if let Some(next) = next {
            streams.insert(uuid.to_owned(), next);
            return Vec::new();
        }
        streams.remove(uuid);
        drop(older);
        drop(streams);
        self.drop_routes_via(uuid)
    }

    /// The one answer to "who holds `uuid`": its own stream, else the stream of the peer it
    /// is reachable through.
    pub(crate) fn holder(&self, uuid: &str) -> Option<Holder> {
        if let Some(stream) = self.stream(uuid) {
            return Some(Holder {
                stream,
                routed: false,
            });
        }
        let via = self.route_via(uuid)?;
        self.stream(&via).map(|stream| Holder {
            stream,
            routed: true,
        })
    }

    /// Whether `uuid` is held here, directly or through a peer.
    pub(crate) fn holds(&self, uuid: &str) -> bool {
        self.holder(uuid).is_some()
    }

    pub(crate) fn stream(&self, uuid: &str) -> Option<Arc<Stream>> {
        self.streams().get(uuid).cloned()
    }

    pub(crate) fn peers(&self) -> Vec<Peer> {
        self.streams().values().map(|s| s.peer.clone()).collect()
    }

    pub(crate) fn is_connected(&self) -> bool {
        !self.streams().is_empty()
    }

    /// Every authenticated stream, those set aside by a newer one with the same uuid too.
    pub(crate) fn all_streams(&self) -> Vec<Arc<Stream>> {
        let streams = self.streams();
        let mut all: Vec<Arc<Stream>> = streams.values().cloned().collect();
        all.extend(self.older().values().flatten().cloned());
        all
    }
}
