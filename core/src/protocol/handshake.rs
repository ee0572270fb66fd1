//! The legacy handshake as one state machine per role: lines in, lines and an outcome out.
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
            other => HandshakeError::Protocol(other.to_string()),
        }
    }
}

/// The state both roles end with.
pub struct Established {
    /// The peer's identity.
    pub peer: PeerIdentity,
    /// Uuids the peer said are reachable through it.
    pub routes: Vec<String>,
    /// Whether the legacy line cipher is on.
    pub cipher: bool,
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
    /// Use the legacy line cipher.
    pub cipher: bool,
    /// Sign our messages and require the server's signatures.
    pub signatures: bool,
    /// Uuids reachable through us.
    pub routes: Vec<String>,
}

enum ClientState {
    AwaitChallenge,
    AwaitInit { sealer: Sealer, opener: Opener },
    Finished,
}

/// The client role.
pub struct ClientHandshake {
    keys: Arc<Keys>,
    config: ClientConfig,
    state: ClientState,
}

impl ClientHandshake {
    /// A client handshake with the given keys and options.
    pub fn new(keys: Arc<Keys>, config: ClientConfig) -> Self {
        ClientHandshake {
            keys,
            config,
            state: ClientState::AwaitChallenge,
        }
    }

    /// The first line, sent as soon as TLS is up.
    pub fn hello(&self) -> Vec<u8> {
        b"{\"op\":\"rpc::auth::request\"}\n".to_vec()
    }

    /// Feeds one received line (without its newline).
    pub fn on_line(&mut self, line: &[u8]) -> Result<Step, HandshakeError> {
        match std::mem::replace(&mut self.state, ClientState::Finished) {
            ClientState::AwaitChallenge => {
                #[derive(Deserialize)]
                struct Challenge {
                    vector: Option<String>,
                }
                let c: Challenge = expect_op(line, ops::AUTH_CHALLENGE)?;
                let vector = c
                    .vector
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| HandshakeError::Protocol("challenge without vector".into()))?;
                let auth = self.keys.auth(&vector);
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
                data.push('}');
                let line = if self.config.cipher {
                    let c = self.keys.cipher();
                    format!(
                        "{{\"op\":\"rpc::auth::response\",\"v\":1,\"cipher\":\"{}\",\"data\":\"{}\"}}\n",
                        c.encrypt_to_string(LEGACY_CIPHER_NAME.as_bytes()),
                        c.encrypt_to_string(data.as_bytes())
                    )
                } else {
                    format!(
                        "{{\"op\":\"rpc::auth::response\",\"v\":1,\"cipher\":false,\"data\":{data}}}\n"
                    )
                };
                let (tx, rx) = self.keys.sequence_seeds(&vector);
                let sign = self.config.signatures;
                self.state = ClientState::AwaitInit {
                    sealer: Sealer::new(self.keys.clone(), self.config.cipher, sign.then_some(tx)),
                    opener: Opener::new(self.keys.clone(), self.config.cipher, rx, sign),
                };
                Ok(Step::Send(line.into_bytes()))
            }
            ClientState::AwaitInit {
                mut sealer,
                mut opener,
            } => {
                let mut buf = Vec::new();
                let parsed = opener.open(line, &mut buf)?;
                let (data, routes) = match parsed.kind {
                    Kind::Control(Control::Init {
                        data: Some(data),
                        routes,
                    }) => (data, routes),
                    _ => {
                        return Err(HandshakeError::Protocol(
                            "expected rpc::init with server identity".into(),
                        ))
                    }
                };
                let peer = peer_identity(data.get())?;
                let init = format!(
                    "{{\"op\":\"rpc::init\",\"v\":1,\"routes\":{}}}",
                    routes_json(&self.config.routes)
                );
                let send = sealer.seal_to_vec(&init);
                Ok(Step::Done {
                    send: Some(send),
                    established: Box::new(Established {
                        peer,
                        routes,
                        cipher: self.config.cipher,
                        sealer,
                        opener,
                    }),
                })
            }
            ClientState::Finished => Err(HandshakeError::Protocol("handshake already over".into())),
        }
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
    /// Sign our messages even if the client does not ask for it.
    pub signatures: bool,
    /// Uuids reachable through us.
    pub routes: Vec<String>,
}

enum ServerState {
    AwaitRequest,
    AwaitResponse {
        vector: String,
    },
    AwaitInit {
        peer: PeerIdentity,
        cipher: bool,
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
    state: ServerState,
}

/// A fresh challenge vector: hex SHA-512 of 512 random bytes, as legacy makes it.
pub fn new_vector() -> String {
    let mut bytes = [0u8; 512];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(&Sha512::digest(bytes))
}

impl ServerHandshake {
    /// A server handshake with the given keys and options.
    pub fn new(keys: Arc<Keys>, config: ServerConfig) -> Self {
        ServerHandshake {
            keys,
            config,
            vector: None,
            state: ServerState::AwaitRequest,
        }
    }

    /// Uses `vector` as the challenge instead of a random one (tests and vectors only).
    pub fn with_vector(mut self, vector: impl Into<String>) -> Self {
        self.vector = Some(vector.into());
        self
    }

    /// Feeds one received line (without its newline).
    pub fn on_line(&mut self, line: &[u8]) -> Result<Step, HandshakeError> {
        match std::mem::replace(&mut self.state, ServerState::Finished) {
            ServerState::AwaitRequest => {
                let _: serde::de::IgnoredAny = expect_op(line, ops::AUTH_REQUEST)?;
                let vector = self.vector.take().unwrap_or_else(new_vector);
                let out = format!(
                    "{{\"op\":\"rpc::auth::challenge\",\"v\":1,\"vector\":\"{vector}\"}}\n"
                );
                self.state = ServerState::AwaitResponse { vector };
                Ok(Step::Send(out.into_bytes()))
            }
            ServerState::AwaitResponse { vector } => self.on_response(line, vector),
            ServerState::AwaitInit {
                peer,
                cipher,
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
                        sealer,
                        opener,
                    }),
                })
            }
            ServerState::Finished => Err(HandshakeError::Protocol("handshake already over".into())),
        }
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
        let out = sealer.seal_to_vec(&init);
        self.state = ServerState::AwaitInit {
            peer,
            cipher: offered,
            sealer,
            opener,
        };
        Ok(Step::Send(out))
    }
}
