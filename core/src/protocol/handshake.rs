//! The handshake as one state machine per role: lines in, lines and an outcome out.
//!
//! A client whose `security` is not `legacy` adds a v2 offer to its first line; a server that
//! speaks v2 answers it with a v2 challenge, and the session continues in v2 (see
//! docs/PROTOCOL-V2.md). Otherwise the legacy handshake runs, byte for byte as 0.2.20, except
//! that a server speaking v2 ends its challenge vector with the downgrade marker
//! ([`super::v2::DOWNGRADE_MARKER`]) and a client that offered v2 refuses a marked legacy
//! challenge:
//!
//! ```text
//! C -> S  {"op":"rpc::auth::request"}
//! S -> C  {"op":"rpc::auth::challenge","v":1,"vector":V}
//! C -> S  {"op":"rpc::auth::response","v":1,"cipher":X,"data":D}
//! S -> C  {"op":"rpc::init","v":1,"data":{..},"routes":[..],"_sig":..}   (encrypted if on)
//! C -> S  {"op":"rpc::init","v":1,"routes":[..],"_sig":..}               (encrypted if on)
//! ```

use std::sync::Arc;

use rand::RngCore;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::cipher::LEGACY_CIPHER_NAME;
use super::hex;
use super::keys::Keys;
use super::message::{ops, Control, Kind};
use super::session::{OpenError, Opener, Sealer};
use super::v2::{
    self, Mode, RecordError, RecordKey, Security, SessionKeys, Transcript, TranscriptIdentity,
    MODE_V2,
};

/// Who we are, as announced to peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Unique id of this instance.
    pub uuid: String,
    /// Free-form role name (legacy default `""`).
    pub designation: String,
    /// Optional MAC address string; omitted from the wire when `None`.
    pub mac: Option<String>,
}

/// Who the peer said it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's uuid: the key of its stream.
    pub uuid: String,
    /// The peer's designation, if it sent one.
    pub designation: Option<String>,
    /// The peer's MAC, if it sent one.
    pub mac: Option<String>,
}

/// Why a handshake failed. The connection is closed; the peer is told nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The peer did not prove the shared secret.
    Auth(String),
    /// The peer announced a cipher this implementation does not support.
    UnsupportedCipher(String),
    /// The peer offered no cipher and this side requires one.
    CipherRequired,
    /// The `security` policy refused the peer's protocol (a legacy peer under `require-v2`).
    Policy(String),
    /// A downgrade to the legacy protocol was detected: on the server, a client that says it
    /// offered v2 while no offer arrived; on the client, a legacy challenge that carries the v2
    /// server's downgrade marker although this side offered v2.
    Downgrade(String),
    /// v2 was asked for on a connection that cannot carry it: not TLS 1.3, so no channel
    /// binding this side can trust.
    NeedsTls13,
    /// Anything else out of protocol.
    Protocol(String),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Auth(m) => write!(f, "authentication failed: {m}"),
            HandshakeError::UnsupportedCipher(c) => write!(
                f,
                "peer announced unsupported cipher {c:?} (only {LEGACY_CIPHER_NAME} is supported)"
            ),
            HandshakeError::CipherRequired => f.write_str(
                "peer offered no cipher but this side requires it (set cipher: false to allow)",
            ),
            HandshakeError::Policy(m) => write!(f, "refused by security policy: {m}"),
            HandshakeError::Downgrade(m) => write!(f, "downgrade detected: {m}"),
            HandshakeError::NeedsTls13 => f.write_str(NEEDS_TLS13),
            HandshakeError::Protocol(m) => write!(f, "handshake protocol error: {m}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

impl From<OpenError> for HandshakeError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Decrypt | OpenError::BadSignature | OpenError::MissingSignature => {
                HandshakeError::Auth(format!("peer failed to prove the secret ({e})"))
            }
            OpenError::Record(RecordError::Invalid) => HandshakeError::Auth(format!(
                "peer failed to prove the secret over this connection ({e})"
            )),
            other => HandshakeError::Protocol(other.to_string()),
        }
    }
}

impl From<RecordError> for HandshakeError {
    fn from(e: RecordError) -> Self {
        HandshakeError::Protocol(e.to_string())
    }
}

/// The state both roles end with.
pub struct Established {
    /// The peer's identity.
    pub peer: PeerIdentity,
    /// Uuids the peer said are reachable through it.
    pub routes: Vec<String>,
    /// Whether lines are encrypted (legacy cipher, or v2 AEAD records).
    pub cipher: bool,
    /// The session mode negotiated.
    pub mode: Mode,
    /// Outgoing half.
    pub sealer: Sealer,
    /// Incoming half.
    pub opener: Opener,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("peer", &self.peer)
            .field("routes", &self.routes)
            .field("cipher", &self.cipher)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// What to do after feeding a line.
#[derive(Debug)]
pub enum Step {
    /// Send this line (it ends with `\n`) and keep going.
    Send(Vec<u8>),
    /// The handshake is complete; send `send` first if present.
    Done {
        /// A last line to send.
        send: Option<Vec<u8>>,
        /// The session state.
        established: Box<Established>,
    },
    /// The handshake failed; send `send` (an explanation for the peer) first, then close.
    Refuse {
        /// The last line to send.
        send: Vec<u8>,
        /// Why.
        error: HandshakeError,
    },
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn identity_json(id: &Identity) -> String {
    let mut s = format!("{{\"uuid\":{}", json_str(&id.uuid));
    if let Some(mac) = &id.mac {
        s.push_str(",\"mac\":");
        s.push_str(&json_str(mac));
    }
    s.push_str(",\"designation\":");
    s.push_str(&json_str(&id.designation));
    s.push('}');
    s
}

fn routes_json(routes: &[String]) -> String {
    serde_json::to_string(routes).unwrap_or_else(|_| "[]".to_owned())
}

/// Parses a handshake line as a JSON object and checks its `op`.
fn expect_op<'a, T: Deserialize<'a>>(line: &'a [u8], op: &str) -> Result<T, HandshakeError> {
    #[derive(Deserialize)]
    struct Op<'a> {
        #[serde(borrow)]
        op: Option<&'a RawValue>,
    }
    let text = std::str::from_utf8(line)
        .map_err(|_| HandshakeError::Protocol("line is not valid UTF-8".into()))?;
    let got: Op<'_> = serde_json::from_str(text)
        .map_err(|e| HandshakeError::Protocol(format!("invalid JSON: {e}")))?;
    let got_op = got.op.map(|r| r.get().trim_matches('"').to_owned());
    if got_op.as_deref() != Some(op) {
        return Err(HandshakeError::Protocol(format!(
            "expected {op}, got {}",
            got_op.as_deref().unwrap_or("a message without op")
        )));
    }
    serde_json::from_str(text).map_err(|e| HandshakeError::Protocol(format!("bad {op}: {e}")))
}

/// Client-side options of the handshake.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our identity.
    pub identity: Identity,
    /// Use the line cipher (legacy cipher, or v2 AEAD records).
    pub cipher: bool,
    /// Sign our messages and require the server's signatures (legacy mode only).
    pub signatures: bool,
    /// Uuids reachable through us.
    pub routes: Vec<String>,
    /// Which session modes to offer and accept.
    pub security: Security,
}

enum ClientState {
    AwaitChallenge,
    AwaitInit {
        sealer: Sealer,
        opener: Opener,
    },
    AwaitV2Init {
        keys: Box<SessionKeys>,
        sealer: Sealer,
        opener: Opener,
    },
    Finished,
}

/// The client role.
pub struct ClientHandshake {
    keys: Arc<Keys>,
    config: ClientConfig,
    nonce: [u8; v2::LEN],
    channel_binding: Option<[u8; v2::LEN]>,
    state: ClientState,
}

/// The fields of the v2 offer: `"v2":{"modes":[..],"nonce":".."}`.
#[derive(Deserialize)]
struct Offer {
    modes: Vec<String>,
    nonce: String,
}

fn nonce_from_hex(text: &str, what: &str) -> Result<[u8; v2::LEN], HandshakeError> {
    let mut buf = Vec::new();
    match hex::decode_into(text.as_bytes(), &mut buf) {
        Some(()) if buf.len() == v2::LEN => {
            let mut n = [0u8; v2::LEN];
            n.copy_from_slice(&buf);
            Ok(n)
        }
        _ => Err(HandshakeError::Protocol(format!(
            "{what} is not {} hex characters",
            v2::LEN * 2
        ))),
    }
}

fn transcript_identity(id: &PeerIdentity) -> TranscriptIdentity {
    TranscriptIdentity {
        uuid: id.uuid.clone(),
        designation: id.designation.clone().unwrap_or_default(),
        mac: id.mac.clone().unwrap_or_default(),
    }
}

fn own_transcript_identity(id: &Identity) -> TranscriptIdentity {
    TranscriptIdentity {
        uuid: id.uuid.clone(),
        designation: id.designation.clone(),
        mac: id.mac.clone().unwrap_or_default(),
    }
}

/// The `proof` member of a v2 line, if it is a string.
fn proof_of(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct P {
        proof: Option<serde_json::Value>,
    }
    match serde_json::from_str::<P>(text).ok()?.proof? {
        serde_json::Value::String(p) => Some(p),
        _ => None,
    }
}

const NEEDS_TLS13: &str = "iris-rpc v2 needs TLS 1.3 (its channel binding, RFC 9266) and this \
                           connection negotiated an older TLS version";

/// The client's view of a marked legacy challenge.
fn client_downgrade(tls13: bool) -> HandshakeError {
    HandshakeError::Downgrade(if tls13 {
        "the server speaks v2 but answered with the legacy handshake (its challenge carries the \
         v2 downgrade marker): the v2 offer was removed in transit, or the challenge is a replay"
            .into()
    } else {
        format!(
            "the server speaks v2 but answered with the legacy handshake (its challenge carries \
             the v2 downgrade marker); {NEEDS_TLS13}, so a man in the middle, or a peer \
             restricted to TLS 1.2, is in the way"
        )
    })
}

impl ClientHandshake {
    /// True once the client's proof is sent and the next line is the server's `rpc::init`,
    /// whose `routes` may be long (a router announces every peer of its other side).
    pub fn awaits_init(&self) -> bool {
        matches!(
            self.state,
            ClientState::AwaitInit { .. } | ClientState::AwaitV2Init { .. }
        )
    }

    /// A client handshake with the given keys and options.
    pub fn new(keys: Arc<Keys>, config: ClientConfig) -> Self {
        ClientHandshake {
            keys,
            config,
            nonce: v2::new_nonce(),
            channel_binding: None,
            state: ClientState::AwaitChallenge,
        }
    }

    /// The TLS exporter value of this connection (RFC 9266 `tls-exporter`); v2 needs it.
    pub fn with_channel_binding(mut self, cb: [u8; v2::LEN]) -> Self {
        self.channel_binding = Some(cb);
        self
    }

    /// Uses `nonce` instead of a random one: the known-answer vectors only. Not public API
    /// (feature `__test-hooks`).
    #[cfg(any(test, feature = "__test-hooks"))]
    #[doc(hidden)]
    pub fn with_nonce(mut self, nonce: [u8; v2::LEN]) -> Self {
        self.nonce = nonce;
        self
    }

    /// The first line, sent as soon as TLS is up: with the v2 offer unless `security` is
    /// `legacy`.
    pub fn hello(&self) -> Vec<u8> {
        if self.config.security.speaks_v2() {
            format!(
                "{{\"op\":\"rpc::auth::request\",\"v2\":{{\"modes\":[\"{MODE_V2}\"],\"nonce\":\"{}\"}}}}\n",
                hex::encode(&self.nonce)
            )
            .into_bytes()
        } else {
            b"{\"op\":\"rpc::auth::request\"}\n".to_vec()
        }
    }

    /// Feeds one received line (without its newline).
    pub fn on_line(&mut self, line: &[u8]) -> Result<Step, HandshakeError> {
        match std::mem::replace(&mut self.state, ClientState::Finished) {
            ClientState::AwaitChallenge => {
                #[derive(Deserialize)]
                struct Challenge {
                    vector: Option<String>,
                    mode: Option<String>,
                    nonce: Option<String>,
                    error: Option<String>,
                }
                let c: Challenge = expect_op(line, ops::AUTH_CHALLENGE)?;
                if let Some(mode) = c.mode {
                    return self.on_v2_challenge(&mode, c.nonce.as_deref());
                }
                // We offered v2 and the server says (in a vector our HMAC will cover, so no one
                // without the secret can swap it) that it speaks v2: the offer never got there.
                if self.config.security.speaks_v2()
                    && c.vector.as_deref().is_some_and(v2::is_marked)
                {
                    return Err(client_downgrade(self.channel_binding.is_some()));
                }
                if self.config.security == Security::RequireV2 {
                    return Err(HandshakeError::Policy(
                        "the server speaks only the legacy protocol and this side requires v2 \
                         (security: require-v2)"
                            .into(),
                    ));
                }
                let vector = match (c.vector.filter(|v| !v.is_empty()), c.error) {
                    (Some(v), _) => v,
                    (None, Some(e)) => {
                        return Err(HandshakeError::Auth(format!("server refused: {e}")))
                    }
                    (None, None) => {
                        return Err(HandshakeError::Protocol("challenge without vector".into()))
                    }
                };
                self.on_legacy_challenge(&vector)
            }
            ClientState::AwaitInit { sealer, mut opener } => {
                let (peer, routes, _) = server_init(&mut opener, line)?;
                self.complete(sealer, opener, peer, routes, Mode::Legacy)
            }
            ClientState::AwaitV2Init {
                keys,
                sealer,
                mut opener,
            } => {
                let (peer, routes, proof) = server_init(&mut opener, line)?;
                let proof = proof
                    .ok_or_else(|| HandshakeError::Protocol("v2 rpc::init without proof".into()))?;
                if !SessionKeys::check(&keys.server_proof(&transcript_identity(&peer)), &proof) {
                    return Err(HandshakeError::Auth(
                        "the server did not prove the secret over this connection (wrong \
                         secret, or a relayed handshake)"
                            .into(),
                    ));
                }
                self.complete(sealer, opener, peer, routes, Mode::V2)
            }
            ClientState::Finished => Err(HandshakeError::Protocol("handshake already over".into())),
        }
    }

    /// Sends our `rpc::init` (the first record of ours in v2) and ends the handshake.
    fn complete(
        &self,
        mut sealer: Sealer,
        opener: Opener,
        peer: PeerIdentity,
        routes: Vec<String>,
        mode: Mode,
    ) -> Result<Step, HandshakeError> {
        let v = if mode == Mode::V2 { 2 } else { 1 };
        let init = format!(
            "{{\"op\":\"rpc::init\",\"v\":{v},\"routes\":{}}}",
            routes_json(&self.config.routes)
        );
        let send = sealer.seal_to_vec(&init)?;
        Ok(Step::Done {
            send: Some(send),
            established: Box::new(Established {
                peer,
                routes,
                cipher: self.config.cipher,
                mode,
                sealer,
                opener,
            }),
        })
    }

    fn on_legacy_challenge(&mut self, vector: &str) -> Result<Step, HandshakeError> {
        let auth = self.keys.auth(vector);
        let id = &self.config.identity;
        let mut data = format!(
            "{{\"auth\":\"{auth}\",\"signatures\":{},\"uuid\":{}",
            self.config.signatures,
            json_str(&id.uuid)
        );
        if let Some(mac) = &id.mac {
            data.push_str(",\"mac\":");
            data.push_str(&json_str(mac));
        }
        data.push_str(",\"designation\":");
        data.push_str(&json_str(&id.designation));
        if self.config.security.speaks_v2() {
            // Legacy servers ignore it; a v2 server that sees it without having seen the offer
            // knows the offer was stripped. With the cipher on it travels encrypted.
            data.push_str(",\"modes\":[\"");
            data.push_str(MODE_V2);
            data.push_str("\"]");
        }
        data.push('}');
        let line = if self.config.cipher {
            let c = self.keys.cipher();
            format!(
                "{{\"op\":\"rpc::auth::response\",\"v\":1,\"cipher\":\"{}\",\"data\":\"{}\"}}\n",
                c.encrypt_to_string(LEGACY_CIPHER_NAME.as_bytes()),
                c.encrypt_to_string(data.as_bytes())
            )
        } else {
            format!("{{\"op\":\"rpc::auth::response\",\"v\":1,\"cipher\":false,\"data\":{data}}}\n")
        };
        let (tx, rx) = self.keys.sequence_seeds(vector);
        let sign = self.config.signatures;
        self.state = ClientState::AwaitInit {
            sealer: Sealer::new(self.keys.clone(), self.config.cipher, sign.then_some(tx)),
            opener: Opener::new(self.keys.clone(), self.config.cipher, rx, sign),
        };
        Ok(Step::Send(line.into_bytes()))
    }

    fn on_v2_challenge(&mut self, mode: &str, nonce: Option<&str>) -> Result<Step, HandshakeError> {
        if !self.config.security.speaks_v2() {
            return Err(HandshakeError::Protocol(
                "the server answered a legacy request with a v2 challenge".into(),
            ));
        }
        if mode != MODE_V2 {
            return Err(HandshakeError::Protocol(format!(
                "the server chose mode {mode:?}, which was not offered"
            )));
        }
        let server_nonce = nonce_from_hex(
            nonce.ok_or_else(|| HandshakeError::Protocol("v2 challenge without nonce".into()))?,
            "the server nonce",
        )?;
        let channel_binding = self.channel_binding.ok_or(HandshakeError::NeedsTls13)?;
        let transcript = Transcript {
            offered: vec![MODE_V2.to_owned()],
            client_nonce: self.nonce,
            chosen: mode.to_owned(),
            server_nonce,
            client: own_transcript_identity(&self.config.identity),
            cipher: self.config.cipher,
            channel_binding,
        };
        let keys = SessionKeys::derive(self.keys.secret(), &transcript);
        let line = format!(
            "{{\"op\":\"rpc::auth::response\",\"v\":2,\"cipher\":{},\"data\":{},\"proof\":\"{}\"}}\n",
            self.config.cipher,
            identity_json(&self.config.identity),
            keys.client_proof()
        );
        let (sealer, opener) = if self.config.cipher {
            (
                Sealer::v2(Some(RecordKey::new(&keys.c2s.0, &keys.c2s.1))),
                Opener::v2(Some(RecordKey::new(&keys.s2c.0, &keys.s2c.1))),
            )
        } else {
            (Sealer::v2(None), Opener::v2(None))
        };
        self.state = ClientState::AwaitV2Init {
            keys: Box::new(keys),
            sealer,
            opener,
        };
        Ok(Step::Send(line.into_bytes()))
    }
}

/// Opens the server's `rpc::init`: its identity, the routes behind it, and (v2) its proof.
fn server_init(
    opener: &mut Opener,
    line: &[u8],
) -> Result<(PeerIdentity, Vec<String>, Option<String>), HandshakeError> {
    let mut buf = Vec::new();
    let parsed = opener.open(line, &mut buf)?;
    match parsed.kind {
        Kind::Control(Control::Init {
            data: Some(data),
            routes,
        }) => Ok((peer_identity(data.get())?, routes, proof_of(parsed.text))),
        _ => Err(HandshakeError::Protocol(
            "expected rpc::init with the server's identity".into(),
        )),
    }
}

fn peer_identity(data: &str) -> Result<PeerIdentity, HandshakeError> {
    #[derive(Deserialize)]
    struct Data {
        uuid: Option<serde_json::Value>,
        designation: Option<serde_json::Value>,
        mac: Option<serde_json::Value>,
    }
    let d: Data = serde_json::from_str(data)
        .map_err(|e| HandshakeError::Protocol(format!("bad identity: {e}")))?;
    let as_string = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    };
    let uuid = d
        .uuid
        .and_then(as_string)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| HandshakeError::Protocol("peer identity without uuid".into()))?;
    Ok(PeerIdentity {
        uuid,
        designation: d.designation.and_then(as_string),
        mac: d.mac.and_then(as_string),
    })
}

/// Server-side options of the handshake.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Our identity.
    pub identity: Identity,
    /// Refuse clients that offer no cipher.
    pub require_cipher: bool,
    /// Sign our messages even if the client does not ask for it (legacy mode only).
    pub signatures: bool,
    /// Uuids reachable through us.
    pub routes: Vec<String>,
    /// Which session modes to accept.
    pub security: Security,
}

// One per connection and only while it authenticates: size does not matter here.
#[allow(clippy::large_enum_variant)]
enum ServerState {
    AwaitRequest,
    AwaitResponse {
        vector: String,
    },
    AwaitV2Response {
        offered: Vec<String>,
        client_nonce: [u8; v2::LEN],
    },
    AwaitInit {
        peer: PeerIdentity,
        cipher: bool,
        mode: Mode,
        sealer: Sealer,
        opener: Opener,
    },
    Finished,
}

/// The server role.
pub struct ServerHandshake {
    keys: Arc<Keys>,
    config: ServerConfig,
    vector: Option<String>,
    nonce: [u8; v2::LEN],
    channel_binding: Option<[u8; v2::LEN]>,
    state: ServerState,
}

/// A fresh challenge vector: hex SHA-512 of 512 random bytes, as legacy makes it.
pub fn new_vector() -> String {
    let mut bytes = [0u8; 512];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(&Sha512::digest(bytes))
}

impl ServerHandshake {
    /// True once the client has proven the secret and the next line is its `rpc::init`,
    /// whose `routes` may be long (a router announces every peer of its other side).
    pub fn awaits_init(&self) -> bool {
        matches!(self.state, ServerState::AwaitInit { .. })
    }

    /// A server handshake with the given keys and options.
    pub fn new(keys: Arc<Keys>, config: ServerConfig) -> Self {
        ServerHandshake {
            keys,
            config,
            vector: None,
            nonce: v2::new_nonce(),
            channel_binding: None,
            state: ServerState::AwaitRequest,
        }
    }

    /// Uses `vector` as the whole challenge instead of a fresh one: the known-answer vectors
    /// only. Not public API (feature `__test-hooks`).
    #[cfg(any(test, feature = "__test-hooks"))]
    #[doc(hidden)]
    pub fn with_vector(mut self, vector: impl Into<String>) -> Self {
        self.vector = Some(vector.into());
        self
    }

    /// Uses `nonce` as the v2 server nonce instead of a random one: the known-answer vectors
    /// only. Not public API (feature `__test-hooks`).
    #[cfg(any(test, feature = "__test-hooks"))]
    #[doc(hidden)]
    pub fn with_nonce(mut self, nonce: [u8; v2::LEN]) -> Self {
        self.nonce = nonce;
        self
    }

    /// The TLS exporter value of this connection (RFC 9266 `tls-exporter`); v2 needs it.
    pub fn with_channel_binding(mut self, cb: [u8; v2::LEN]) -> Self {
        self.channel_binding = Some(cb);
        self
    }

    /// Feeds one received line (without its newline).
    pub fn on_line(&mut self, line: &[u8]) -> Result<Step, HandshakeError> {
        match std::mem::replace(&mut self.state, ServerState::Finished) {
            ServerState::AwaitRequest => {
                #[derive(Deserialize)]
                struct Request {
                    v2: Option<serde_json::Value>,
                }
                let r: Request = expect_op(line, ops::AUTH_REQUEST)?;
                let offer = match r.v2 {
                    Some(v) if self.config.security.speaks_v2() => Some(
                        serde_json::from_value::<Offer>(v)
                            .map_err(|e| HandshakeError::Protocol(format!("bad v2 offer: {e}")))?,
                    ),
                    // Legacy behaviour: unknown fields are ignored.
                    _ => None,
                };
                if let Some(offer) = offer.filter(|o| o.modes.iter().any(|m| m == MODE_V2)) {
                    let client_nonce = nonce_from_hex(&offer.nonce, "the client nonce")?;
                    if self.channel_binding.is_none() {
                        // Not TLS 1.3, so no channel binding to trust. The client offered v2
                        // and would refuse a marked legacy challenge anyway: tell it why.
                        return Ok(Step::Refuse {
                            send: format!(
                                "{{\"op\":\"rpc::auth::challenge\",\"v\":1,\"error\":{}}}\n",
                                json_str(NEEDS_TLS13)
                            )
                            .into_bytes(),
                            error: HandshakeError::NeedsTls13,
                        });
                    }
                    let out = format!(
                        "{{\"op\":\"rpc::auth::challenge\",\"v\":2,\"mode\":\"{MODE_V2}\",\"nonce\":\"{}\"}}\n",
                        hex::encode(&self.nonce)
                    );
                    self.state = ServerState::AwaitV2Response {
                        offered: offer.modes,
                        client_nonce,
                    };
                    return Ok(Step::Send(out.into_bytes()));
                }
                if self.config.security == Security::RequireV2 {
                    // Legacy clients print "no vector in auth message" and close; ours show this.
                    let why = "this server requires iris-rpc v2 (security: require-v2) and the \
                               client offered only the legacy protocol";
                    return Ok(Step::Refuse {
                        send: format!(
                            "{{\"op\":\"rpc::auth::challenge\",\"v\":1,\"error\":{}}}\n",
                            json_str(why)
                        )
                        .into_bytes(),
                        error: HandshakeError::Policy(
                            "the client speaks only the legacy protocol and this side requires \
                             v2 (security: require-v2)"
                                .into(),
                        ),
                    });
                }
                let mut vector = self.vector.take().unwrap_or_else(new_vector);
                if self.config.security.speaks_v2() {
                    // The downgrade signal legacy clients carry without knowing it.
                    v2::mark(&mut vector);
                }
                let out = format!(
                    "{{\"op\":\"rpc::auth::challenge\",\"v\":1,\"vector\":\"{vector}\"}}\n"
                );
                self.state = ServerState::AwaitResponse { vector };
                Ok(Step::Send(out.into_bytes()))
            }
            ServerState::AwaitResponse { vector } => self.on_response(line, vector),
            ServerState::AwaitV2Response {
                offered,
                client_nonce,
            } => self.on_v2_response(line, offered, client_nonce),
            ServerState::AwaitInit {
                peer,
                cipher,
                mode,
                sealer,
                mut opener,
            } => {
                let mut buf = Vec::new();
                let parsed = opener.open(line, &mut buf)?;
                let routes = match parsed.kind {
                    Kind::Control(Control::Init { data: None, routes }) => routes,
                    _ => {
                        return Err(HandshakeError::Protocol(
                            "expected the client's rpc::init".into(),
                        ))
                    }
                };
                Ok(Step::Done {
                    send: None,
                    established: Box::new(Established {
                        peer,
                        routes,
                        cipher,
                        mode,
                        sealer,
                        opener,
                    }),
                })
            }
            ServerState::Finished => Err(HandshakeError::Protocol("handshake already over".into())),
        }
    }

    fn on_v2_response(
        &mut self,
        line: &[u8],
        offered: Vec<String>,
        client_nonce: [u8; v2::LEN],
    ) -> Result<Step, HandshakeError> {
        #[derive(Deserialize)]
        struct Response<'a> {
            cipher: Option<serde_json::Value>,
            #[serde(borrow)]
            data: Option<&'a RawValue>,
            proof: Option<String>,
        }
        let r: Response<'_> = expect_op(line, ops::AUTH_RESPONSE)?;
        let cipher = match r.cipher {
            Some(serde_json::Value::Bool(b)) => b,
            _ => {
                return Err(HandshakeError::Protocol(
                    "v2 auth response: cipher must be true or false".into(),
                ))
            }
        };
        if !cipher && self.config.require_cipher {
            return Err(HandshakeError::CipherRequired);
        }
        let data = r
            .data
            .ok_or_else(|| HandshakeError::Protocol("auth response without data".into()))?;
        let peer = peer_identity(data.get())?;
        let proof = r
            .proof
            .ok_or_else(|| HandshakeError::Auth("v2 auth response without proof".into()))?;
        let channel_binding = self.channel_binding.ok_or(HandshakeError::NeedsTls13)?;
        let transcript = Transcript {
            offered,
            client_nonce,
            chosen: MODE_V2.to_owned(),
            server_nonce: self.nonce,
            client: transcript_identity(&peer),
            cipher,
            channel_binding,
        };
        let keys = SessionKeys::derive(self.keys.secret(), &transcript);
        if !SessionKeys::check(&keys.client_proof(), &proof) {
            return Err(HandshakeError::Auth(
                "the client did not prove the secret over this connection (wrong secret, or a \
                 relayed handshake)"
                    .into(),
            ));
        }
        let (mut sealer, opener) = if cipher {
            (
                Sealer::v2(Some(RecordKey::new(&keys.s2c.0, &keys.s2c.1))),
                Opener::v2(Some(RecordKey::new(&keys.c2s.0, &keys.c2s.1))),
            )
        } else {
            (Sealer::v2(None), Opener::v2(None))
        };
        let own = own_transcript_identity(&self.config.identity);
        let init = format!(
            "{{\"op\":\"rpc::init\",\"v\":2,\"data\":{},\"routes\":{},\"proof\":\"{}\"}}",
            identity_json(&self.config.identity),
            routes_json(&self.config.routes),
            keys.server_proof(&own)
        );
        let out = sealer.seal_to_vec(&init)?;
        self.state = ServerState::AwaitInit {
            peer,
            cipher,
            mode: Mode::V2,
            sealer,
            opener,
        };
        Ok(Step::Send(out))
    }

    fn on_response(&mut self, line: &[u8], vector: String) -> Result<Step, HandshakeError> {
        #[derive(Deserialize)]
        struct Response<'a> {
            #[serde(borrow)]
            cipher: Option<&'a RawValue>,
            #[serde(borrow)]
            data: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct Data {
            auth: Option<serde_json::Value>,
            signatures: Option<serde_json::Value>,
            modes: Option<serde_json::Value>,
        }
        let r: Response<'_> = expect_op(line, ops::AUTH_RESPONSE)?;
        let data = r
            .data
            .ok_or_else(|| HandshakeError::Protocol("auth response without data".into()))?;
        let cipher_field = r.cipher.map(RawValue::get).unwrap_or("false");
        let offered = !matches!(cipher_field, "false" | "null" | "0" | "\"\"");
        let data_text: String = if offered {
            let name_hex: String = serde_json::from_str(cipher_field)
                .map_err(|_| HandshakeError::Protocol("cipher is not a string".into()))?;
            let c = self.keys.cipher();
            let name = c.decrypt_to_string(&name_hex).map_err(|_| {
                HandshakeError::Auth("cipher name undecryptable (wrong secret?)".into())
            })?;
            if name != LEGACY_CIPHER_NAME {
                return Err(HandshakeError::UnsupportedCipher(name));
            }
            let data_hex: String = serde_json::from_str(data.get())
                .map_err(|_| HandshakeError::Protocol("encrypted data is not a string".into()))?;
            c.decrypt_to_string(&data_hex)
                .map_err(|_| HandshakeError::Auth("auth data undecryptable".into()))?
        } else {
            if self.config.require_cipher {
                return Err(HandshakeError::CipherRequired);
            }
            data.get().to_owned()
        };
        let peer = peer_identity(&data_text)?;
        let d: Data = serde_json::from_str(&data_text)
            .map_err(|e| HandshakeError::Protocol(format!("bad auth data: {e}")))?;
        let auth = match d.auth {
            Some(serde_json::Value::String(a)) => a,
            _ => return Err(HandshakeError::Auth("auth data without auth".into())),
        };
        let expected = self.keys.auth(&vector);
        if !bool::from(auth.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(HandshakeError::Auth("wrong secret".into()));
        }
        // A client that says (inside its proven, and with the cipher on encrypted, data) that it
        // offered v2, while no offer arrived: someone removed it on the way.
        let offered_v2 = match &d.modes {
            Some(serde_json::Value::Array(m)) => m.iter().any(|m| m.as_str() == Some(MODE_V2)),
            _ => false,
        };
        if offered_v2 && self.config.security.speaks_v2() {
            return Err(HandshakeError::Downgrade(
                "the client offered v2 but no offer arrived (stripped in transit?)".into(),
            ));
        }
        let client_signs = matches!(d.signatures, Some(serde_json::Value::Bool(true)));
        let (rx, tx) = self.keys.sequence_seeds(&vector);
        let sign = self.config.signatures || client_signs;
        let mut sealer = Sealer::new(self.keys.clone(), offered, sign.then_some(tx));
        let opener = Opener::new(self.keys.clone(), offered, rx, client_signs);
        let init = format!(
            "{{\"op\":\"rpc::init\",\"v\":1,\"data\":{},\"routes\":{}}}",
            identity_json(&self.config.identity),
            routes_json(&self.config.routes)
        );
        let out = sealer.seal_to_vec(&init)?;
        self.state = ServerState::AwaitInit {
            peer,
            cipher: offered,
            mode: Mode::Legacy,
            sealer,
            opener,
        };
        Ok(Step::Send(out))
    }
}
