//! Uuids reachable through a peer (a router's other side): learned from `rpc::init`'s
//! `routes`, `rpc::online` and `rpc::offline`, and announced in our own handshakes.

use std::sync::Arc;

use crate::engine::Engine;
use crate::event::Event;
use crate::peer::Peer;

/// Computes the uuids announced as reachable through an instance, at each handshake.
pub(crate) type RouteProvider = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

impl Engine {
    /// Sets the uuids announced as reachable through this instance (beyond `routes`).
    pub(crate) fn set_route_provider(&self, f: RouteProvider) {
        if let Ok(mut p) = self.route_provider.write() {
            *p = Some(f);
        }
    }

    /// The `routes` announced in `rpc::init`.
    pub(crate) fn local_routes(&self) -> Vec<String> {
        let mut routes = self.opts.routes.clone();
        let provider = self.route_provider.read().ok().and_then(|p| p.clone());
        if let Some(f) = provider {
            routes.extend(f());
        }
        routes
    }

    /// Records uuids reachable through `peer`. A uuid that is this instance, a directly
    /// connected peer, or already reachable through another stream is refused: no peer can
    /// take over another's route.
    pub(crate) async fn add_routes(&self, peer: &Peer, routes: &[String]) {
        let via = peer.uuid();
        let mut added = Vec::new();
        let mut refused = 0;
        {
            let streams = self.streams();
            let Ok(mut table) = self.remote_routes.write() else {
                return;
            };
            for u in routes {
                let taken = u == &self.identity.uuid
                    || u == via
                    || streams.contains_key(u)
                    || table.get(u).is_some_and(|v| v != via);
                if taken {
                    tracing::warn!(peer = %via, route = %u, "route refused: uuid already held");
                    continue;
                }
                if table.get(u).is_none()
                    && table.count(via) >= self.opts.limits.max_routes_per_peer
                {
                    refused += 1;
                    continue;
                }
                if table.insert(u.clone(), via.to_owned()).is_none() {
                    added.push(u.clone());
                }
            }
        }
        if !added.is_empty() {
            self.emit(Event::Routes {
                peer: peer.clone(),
                online: added,
                offline: Vec::new(),
            })
            .await;
        }
        if refused > 0 {
            // A peer past its share is misbehaving or misconfigured: its stream is closed
            // (with the routes it holds), as for any other limit a peer crosses.
            let reason = format!(
                "limit exceeded: more than {} routes announced (max_routes_per_peer)",
                self.opts.limits.max_routes_per_peer
            );
            tracing::warn!(peer = %via, %reason, "closing the stream");
            if let Some(s) = self.stream(via).filter(|s| s.peer.same_stream(peer)) {
                s.close(reason);
            }
        }
    }

    pub(crate) async fn remove_route(&self, peer: &Peer, uuid: &str) {
        let removed = self.remote_routes.write().is_ok_and(|mut r| {
            if r.get(uuid).is_some_and(|v| v == peer.uuid()) {
                r.remove(uuid);
                true
            } else {
                false
            }
        });
        if removed {
            self.emit(Event::Routes {
                peer: peer.clone(),
                online: Vec::new(),
                offline: vec![uuid.to_owned()],
            })
            .await;
        }
    }

    /// Forgets every route through the stream `via`; returns them.
    pub(crate) fn drop_routes_via(&self, via: &str) -> Vec<String> {
        let mut lost = Vec::new();
        if let Ok(mut r) = self.remote_routes.write() {
            r.retain(|u, v| {
                if v == via {
                    lost.push(u.clone());
                    false
                } else {
                    true
                }
            });
        }
        lost
    }

    /// The sender of a message from `peer`: `_r.uuid` when `peer` really routes that uuid (so
    /// `_r` cannot be spoofed), else the peer itself.
    pub(crate) fn sender<'a>(&self, peer: &'a Peer, routed_from: Option<&'a str>) -> &'a str {
        match routed_from {
            Some(u) if self.route_via(u).as_deref() == Some(peer.uuid()) => u,
            _ => peer.uuid(),
        }
    }

    /// The uuid of the stream `uuid` is reachable through, if it is routed.
    pub(crate) fn route_via(&self, uuid: &str) -> Option<String> {
        self.remote_routes
            .read()
            .ok()
            .and_then(|r| r.get(uuid).cloned())
    }

    /// Routes known: `(uuid, uuid of the stream it is reachable through)`.
    pub(crate) fn route_table(&self) -> Vec<(String, String)> {
        self.remote_routes
            .read()
            .map(|r| r.iter().map(|(a, b)| (a.clone(), b.clone())).collect())
            .unwrap_or_default()
    }
}
