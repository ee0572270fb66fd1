//! Who holds which uuid: the authenticated streams of an instance, and the one lookup that
//! finds the stream a message for a uuid goes out on (directly, or through a router).

use std::collections::HashMap;
use std::sync::{Arc, RwLockReadGuard};

use crate::engine::Engine;
use crate::peer::Peer;
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

    /// Registers an authenticated stream; an older stream with the same uuid is closed.
    pub(crate) fn register(&self, stream: Arc<Stream>) {
        let uuid = stream.peer.uuid().to_owned();
        let old = self
            .streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uuid, stream);
        if let Some(old) = old {
            old.close("replaced by a new connection with the same uuid");
        }
    }

    /// Removes a stream if it is still the registered one for its uuid; returns the routes
    /// that went away with it.
    pub(crate) fn unregister(&self, stream: &Arc<Stream>) -> Vec<String> {
        let uuid = stream.peer.uuid();
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if !streams.get(uuid).is_some_and(|s| Arc::ptr_eq(s, stream)) {
            return Vec::new();
        }
        streams.remove(uuid);
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

    pub(crate) fn all_streams(&self) -> Vec<Arc<Stream>> {
        self.streams().values().cloned().collect()
    }
}
