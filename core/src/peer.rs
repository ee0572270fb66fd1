//! [`Peer`]: what is known about the other end of one authenticated stream.

use std::sync::Arc;

use crate::protocol::Mode;
use crate::shutdown::Shutdown;

/// The other end of one authenticated stream (legacy's `stream` object).
#[derive(Clone)]
pub struct Peer(pub(crate) Arc<PeerInner>);

pub(crate) struct PeerInner {
    pub(crate) uuid: String,
    pub(crate) address: String,
    pub(crate) designation: Option<String>,
    pub(crate) mac: Option<String>,
    pub(crate) cipher: bool,
    pub(crate) mode: Mode,
    pub(crate) shutdown: Arc<Shutdown>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("uuid", &self.0.uuid)
            .field("address", &self.0.address)
            .field("designation", &self.0.designation)
            .field("mode", &self.0.mode)
            .finish()
    }
}

impl Peer {
    /// The peer's uuid.
    pub fn uuid(&self) -> &str {
        &self.0.uuid
    }

    /// The remote address (`host:port`).
    pub fn address(&self) -> &str {
        &self.0.address
    }

    /// The designation the peer announced.
    pub fn designation(&self) -> Option<&str> {
        self.0.designation.as_deref()
    }

    /// The MAC the peer announced.
    pub fn mac(&self) -> Option<&str> {
        self.0.mac.as_deref()
    }

    /// Whether lines are encrypted on this stream (the legacy cipher, or v2 AEAD records).
    pub fn cipher(&self) -> bool {
        self.0.cipher
    }

    /// The session mode negotiated with this peer: [`Mode::V2`] with new peers, or
    /// [`Mode::Legacy`].
    pub fn mode(&self) -> Mode {
        self.0.mode
    }

    /// Closes this stream (legacy `stream.end()`); a client reconnects afterwards.
    pub fn end(&self) {
        self.0.shutdown.trigger();
    }

    /// True when both values describe the same stream.
    pub fn same_stream(&self, other: &Peer) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
