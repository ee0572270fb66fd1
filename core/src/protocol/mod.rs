//! The legacy iris-rpc protocol, sans-IO: bytes and lines in, lines and outcomes out. No
//! sockets, no runtime; everything here is deterministic given its inputs.

pub mod cipher;
pub mod framing;
pub mod handshake;
pub mod hex;
pub mod keys;
pub mod message;
pub mod pending;
pub mod session;
#[cfg(feature = "otel")]
pub mod traceparent;
pub mod v2;

pub use cipher::{LegacyCipher, LEGACY_CIPHER_NAME};
pub use framing::{LineBuffer, LineTooLong};
pub use handshake::{
    ClientConfig, ClientHandshake, Established, HandshakeError, Identity, PeerIdentity,
    ServerConfig, ServerHandshake, Step,
};
pub use keys::Keys;
pub use message::{BadMessage, BodyMeta, Control, Kind, Parsed};
pub use session::{OpenError, Opener, Sealer};
pub use v2::{Mode, Security};
