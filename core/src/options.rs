//! Options, mirroring the legacy constructor options, plus the limits legacy never had.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::protocol::Security;
use crate::tls::{Certificates, Pem};

/// Resource limits. Every one has a default and is enforced per connection or per instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest line accepted, checked while reading (default 16 MiB).
    pub max_line: usize,
    /// TLS plus authentication must finish within this (default 10 s).
    pub auth_timeout: Duration,
    /// Connections accepted but not yet authenticated, per server (default 1,024).
    pub max_unauthenticated: usize,
    /// Longest line before the peer has proven the secret (default 8 KiB; `max_line` if
    /// smaller). The longest legitimate one, a legacy `rpc::auth::response` with the cipher
    /// on, is about twice the length of the client's uuid, designation and mac (as JSON)
    /// plus 300 bytes: 8 KiB leaves them about 3.5 KiB. Once the secret is proven, `rpc::init` (whose
    /// `routes` grow with a router's peers) is read under `max_line`: on a server only after
    /// the client's proof, on a client from the server it chose to connect to.
    pub max_handshake_line: usize,
    /// Bytes that all unauthenticated connections of a server may hold together in their
    /// line buffers (default 4 MiB). A connection whose read would cross it is closed.
    pub max_unauthenticated_bytes: usize,
    /// Uuids one peer may announce as reachable through it (`routes`, `rpc::online`; default
    /// 100,000). A peer announcing more is disconnected (`limit exceeded: more than ... routes
    /// announced (max_routes_per_peer)`).
    pub max_routes_per_peer: usize,
    /// Events a [`crate::Router`] buffers for [`crate::Router::events`] (default 4,096). A router
    /// never waits for its reader: past this, new events are dropped, counted
    /// ([`crate::Router::dropped_events`]) and logged. Read from the frontend's options.
    pub router_event_queue: usize,
    /// Total connections per server (default unlimited).
    pub max_connections: Option<usize>,
    /// Requests awaiting an answer per stream (default 100,000).
    pub max_pending: usize,
    /// Bytes queued for one stream before it is treated as a slow reader and disconnected
    /// (default 64 MiB).
    pub max_queue_bytes: usize,
    /// Events buffered for the event receiver before reading from peers pauses (default 4,096).
    pub event_queue: usize,
    /// Drop a stream that has sent nothing for this long (default off). Meant for peers that
    /// ping: [`Options::dead_peer_detection`] sets it to three ping intervals.
    pub dead_peer_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 16 * 1024 * 1024,
            auth_timeout: Duration::from_secs(10),
            max_unauthenticated: 1024,
            max_handshake_line: 8 * 1024,
            max_unauthenticated_bytes: 4 * 1024 * 1024,
            max_routes_per_peer: 100_000,
            router_event_queue: 4096,
            max_connections: None,
            max_pending: 100_000,
            max_queue_bytes: 64 * 1024 * 1024,
            event_queue: 4096,
            dead_peer_timeout: None,
        }
    }
}

/// Where a server listens: legacy `port` as a number or a `"host:port"` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Host to bind; all interfaces when `None`.
    pub host: Option<String>,
    /// TCP port (0 picks a free one).
    pub port: u16,
}

impl Listen {
    /// Parses `"4488"`, `"host:4488"` or `"[::1]:4488"`.
    pub fn parse(s: &str) -> Result<Self> {
        let number = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let out_of_range =
            |p: &str| Error::Config(format!("port {p} is out of range (0-65535) in {s:?}"));
        if let Ok(port) = s.parse::<u16>() {
            return Ok(Listen { host: None, port });
        }
        if number(s) {
            return Err(out_of_range(s));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| {
            Error::Config(format!("port must be a number or host:port, got {s:?}"))
        })?;
        let port = port.parse::<u16>().map_err(|_| {
            if number(port) {
                out_of_range(port)
            } else {
                Error::Config(format!("invalid port in {s:?}"))
            }
        })?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Listen {
            host: (!host.is_empty()).then(|| host.to_owned()),
            port,
        })
    }

    pub(crate) fn bind_addr(&self) -> String {
        match &self.host {
            Some(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Some(h) => format!("{h}:{}", self.port),
            None => format!("0.0.0.0:{}", self.port),
        }
    }
}

impl From<u16> for Listen {
    fn from(port: u16) -> Self {
        Listen { host: None, port }
    }
}

/// The `port` option as given: a number, or text parsed by [`Listen::parse`] when the server
/// binds (so a bad value is a clear [`Error::Config`] there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// A port on all interfaces.
    Port(u16),
    /// `"port"`, `"host:port"` or `"[v6]:port"`.
    Text(String),
}

impl PortSpec {
    /// The parsed listen address.
    pub fn listen(&self) -> Result<Listen> {
        match self {
            PortSpec::Port(p) => Ok(Listen::from(*p)),
            PortSpec::Text(t) => Listen::parse(t),
        }
    }
}

impl From<u16> for PortSpec {
    fn from(p: u16) -> Self {
        PortSpec::Port(p)
    }
}

impl From<&str> for PortSpec {
    fn from(s: &str) -> Self {
        PortSpec::Text(s.to_owned())
    }
}

impl From<String> for PortSpec {
    fn from(s: String) -> Self {
        PortSpec::Text(s)
    }
}

impl From<Listen> for PortSpec {
    fn from(l: Listen) -> Self {
        PortSpec::Text(l.bind_addr())
    }
}

/// Options of a [`crate::Client`] or [`crate::Server`], named after the legacy options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The shared secret (legacy `auth` or `secret`).
    pub auth: String,
    /// This instance's uuid; a random one when `None` (legacy required it).
    pub uuid: Option<String>,
    /// Role name announced to peers (default `""`).
    pub designation: String,
    /// MAC string announced to peers; omitted when `None`.
    pub mac: Option<String>,
    /// TLS key, certificate and CA. Required by servers.
    pub certificates: Option<Certificates>,
    /// The legacy line cipher (default on). On a server, on means clients must use it.
    pub cipher: bool,
    /// Sign messages and require signatures (default on; legacy mode only: v2 records are
    /// authenticated as a whole).
    pub signatures: bool,
    /// Which session modes to speak (default [`Security::PreferV2`]): v2 with new peers and
    /// the legacy protocol with old ones, `Legacy` to behave exactly as 0.2.20, `RequireV2` to
    /// refuse legacy peers.
    pub security: Security,
    /// Refuse to start with a weak secret (below [`crate::secret::MIN_BITS`] by
    /// [`crate::secret::estimate_bits`]) instead of logging a warning (default off).
    pub refuse_weak_secret: bool,
    /// Send `{"op":"ping","data":ping_data}` to every stream every `ping_freq`.
    pub ping: bool,
    /// Ping interval (default 3 s).
    pub ping_freq: Duration,
    /// The ping `data` value.
    pub ping_data: Option<Value>,
    /// Default request timeout (default 60 s); a request's `op_timeout` (ms) overrides it.
    pub timeout: Duration,
    /// Verify the peer's certificate against `ca` (default off, as legacy).
    pub reject_unauthorized: bool,
    /// Client: the server certificate's key must match one of these pins (`sha256/<base64>`
    /// of its SubjectPublicKeyInfo, as [`crate::tls::spki_pin`] and `iris-rpc cert` print; or
    /// 64 hex characters). Checked before anything is sent, so a fake server or a man in the
    /// middle gets no proof of the secret. Empty (the default): no pinning.
    pub server_pins: Vec<String>,
    /// Client: a trust-on-first-use store of server key pins, a file (default none). The first
    /// connection to an address that authenticates records the server certificate's key pin
    /// for that address; every later connection to it must show the same key, checked in the
    /// TLS handshake before anything is sent. The file holds `address sha256/<base64>` lines
    /// and is replaced atomically, mode 0600.
    pub pin_store: Option<std::path::PathBuf>,
    /// Client: the uuid (or one of the uuids) the server must authenticate as (default: any).
    /// A server that announces another uuid is refused after the handshake. In v2 the server's
    /// uuid is covered by its proof of the secret over this connection; in legacy mode only by
    /// the secret (and a replayed legacy session announces the recorded uuid).
    pub expect_server_uuid: Vec<String>,
    /// Server: bind each client's uuid to its TLS client certificate (default off). Needs
    /// `reject_unauthorized` and `ca` (the CA that signs client certificates, verified by
    /// rustls' WebPKI client verifier); then the uuid a client claims must be a DNS name of its
    /// certificate's subjectAltName, or `urn:uuid:<uuid>` among its URI names. A client whose
    /// certificate names another uuid is refused, so one leaked secret does not let its holder
    /// be anyone.
    pub client_cert_uuid: bool,
    /// Client: `host:port` addresses, one stream each.
    pub address: Vec<String>,
    /// Client: `host:port` addresses for one more stream, which fails over: each attempt tries
    /// the next one in turn, so when the router it was on dies the stream comes back on
    /// another (for a cluster of routers). Beside `address`, whose meaning (a stream per
    /// address) stays legacy's.
    pub failover: Vec<String>,
    /// Server: where to listen.
    pub port: Option<PortSpec>,
    /// Uuids announced as reachable through this instance in `rpc::init`.
    pub routes: Vec<String>,
    /// First reconnect delay (default 1 s, as legacy).
    pub reconnect_initial: Duration,
    /// Longest reconnect delay after exponential backoff (default 1 s, as legacy: a client is
    /// back about a second after its server, however long the outage was). Set it higher for
    /// exponential backoff (doubling from `reconnect_initial` up to this).
    pub reconnect_max: Duration,
    /// Resource limits.
    pub limits: Limits,
}

impl Options {
    /// Options with the given shared secret and every default.
    pub fn new(auth: impl Into<String>) -> Self {
        Options {
            auth: auth.into(),
            uuid: None,
            designation: String::new(),
            mac: None,
            certificates: None,
            cipher: true,
            signatures: true,
            security: Security::default(),
            refuse_weak_secret: false,
            ping: false,
            ping_freq: Duration::from_secs(3),
            ping_data: None,
            timeout: Duration::from_secs(60),
            reject_unauthorized: false,
            server_pins: Vec::new(),
            pin_store: None,
            expect_server_uuid: Vec::new(),
            client_cert_uuid: false,
            address: Vec::new(),
            failover: Vec::new(),
            port: None,
            routes: Vec::new(),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(1),
            limits: Limits::default(),
        }
    }

    /// Sets `uuid`.
    pub fn uuid(mut self, uuid: impl Into<String>) -> Self {
        self.uuid = Some(uuid.into());
        self
    }

    /// Sets `designation`.
    pub fn designation(mut self, d: impl Into<String>) -> Self {
        self.designation = d.into();
        self
    }

    /// Sets `mac`.
    pub fn mac(mut self, mac: impl Into<String>) -> Self {
        self.mac = Some(mac.into());
        self
    }

    /// Sets `certificates`.
    pub fn certificates(mut self, c: Certificates) -> Self {
        self.certificates = Some(c);
        self
    }

    /// Sets `cipher`.
    pub fn cipher(mut self, on: bool) -> Self {
        self.cipher = on;
        self
    }

    /// Sets `signatures`.
    pub fn signatures(mut self, on: bool) -> Self {
        self.signatures = on;
        self
    }

    /// Sets `security`.
    pub fn security(mut self, s: Security) -> Self {
        self.security = s;
        self
    }

    /// Sets `refuse_weak_secret`.
    pub fn refuse_weak_secret(mut self, on: bool) -> Self {
        self.refuse_weak_secret = on;
        self
    }

    /// Turns pinging on with this interval.
    pub fn ping_freq(mut self, every: Duration) -> Self {
        self.ping = true;
        self.ping_freq = every;
        self
    }

    /// Sets the default request timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Sets `reject_unauthorized`.
    pub fn reject_unauthorized(mut self, on: bool) -> Self {
        self.reject_unauthorized = on;
        self
    }

    /// Adds a server pin (see [`Options::server_pins`]).
    pub fn server_pin(mut self, pin: impl Into<String>) -> Self {
        self.server_pins.push(pin.into());
        self
    }

    /// Sets `pin_store` (see [`Options::pin_store`]).
    pub fn pin_store(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.pin_store = Some(path.into());
        self
    }

    /// Adds a uuid the server may authenticate as (see [`Options::expect_server_uuid`]).
    pub fn expect_server_uuid(mut self, uuid: impl Into<String>) -> Self {
        self.expect_server_uuid.push(uuid.into());
        self
    }

    /// Sets `client_cert_uuid` (see [`Options::client_cert_uuid`]).
    pub fn client_cert_uuid(mut self, on: bool) -> Self {
        self.client_cert_uuid = on;
        self
    }

    /// Adds a client address `host:port`.
    pub fn address(mut self, addr: impl Into<String>) -> Self {
        self.address.push(addr.into());
        self
    }

    /// Adds an address to the failover stream (see [`Options::failover`]).
    pub fn failover(mut self, addr: impl Into<String>) -> Self {
        self.failover.push(addr.into());
        self
    }

    /// Sets the server's listen port (`4488`) or address (`"127.0.0.1:4488"`).
    pub fn port(mut self, listen: impl Into<PortSpec>) -> Self {
        self.port = Some(listen.into());
        self
    }

    /// Drops streams silent for three ping intervals (turn ping on too, on both sides).
    pub fn dead_peer_detection(mut self, on: bool) -> Self {
        self.limits.dead_peer_timeout = on.then(|| self.ping_freq * 3);
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Options from a legacy-style JSON object: the legacy names (`auth`/`secret`, `uuid`,
    /// `designation`, `mac`, `certificates`, `cipher`, `signatures`, `security`, `ping`, `pingFreq`,
    /// `pingDataObject`, `timeout`, `rejectUnauthorized`, `address`, `port`, `routes`,
    /// `refuseWeakSecret`, `serverPins`, `pinStore`, `expectServerUuid`, `clientCertUuid`) in
    /// camelCase or snake_case, durations in milliseconds, and the limit names of [`Limits`].
    pub fn from_json(v: &Value) -> Result<Self> {
        let raw: RawOptions = serde_json::from_value(v.clone())
            .map_err(|e| Error::Config(format!("invalid options: {e}")))?;
        raw.into_options()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.auth.is_empty() {
            return Err(Error::Config("missing 'auth' (the shared secret)".into()));
        }
        self.check_secret()?;
        let l = &self.limits;
        if l.max_line == 0
            || l.max_pending == 0
            || l.max_queue_bytes == 0
            || l.event_queue == 0
            || l.max_handshake_line == 0
            || l.max_unauthenticated_bytes == 0
            || l.max_routes_per_peer == 0
            || l.router_event_queue == 0
        {
            return Err(Error::Config("limits must be greater than zero".into()));
        }
        if l.dead_peer_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::Config(
                "dead_peer_timeout must be greater than zero".into(),
            ));
        }
        if self.ping && self.ping_freq.is_zero() {
            return Err(Error::Config("ping_freq must be greater than zero".into()));
        }
        Ok(())
    }
}

impl Options {
    /// A weak secret is a warning, or with `refuse_weak_secret` an error: a client proves the
    /// secret to any server it reaches (certificates are not checked by default), and that proof
    /// lets an attacker test guesses offline.
    fn check_secret(&self) -> Result<()> {
        let Some(bits) = crate::secret::is_weak(&self.auth) else {
            return Ok(());
        };
        let why = format!(
            "the shared secret is weak (about {bits:.0} bits by a conservative estimate, {:.0} \
             wanted): one proof collected by a fake server lets an attacker test guesses offline; \
             make one with `iris-rpc secret`",
            crate::secret::MIN_BITS
        );
        if self.refuse_weak_secret {
            return Err(Error::Config(format!("{why} (refuse_weak_secret is set)")));
        }
        tracing::warn!("{why}, or set refuse_weak_secret to refuse weak secrets");
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortValue {
    Number(u16),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CaValue {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawCertificates {
    key: String,
    #[serde(alias = "crt")]
    cert: String,
    #[serde(default)]
    ca: Option<CaValue>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CipherValue {
    Flag(bool),
    Name(String),
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawOptions {
    auth: Option<String>,
    secret: Option<String>,
    uuid: Option<String>,
    designation: Option<String>,
    mac: Option<String>,
    certificates: Option<RawCertificates>,
    cipher: Option<CipherValue>,
    signatures: Option<bool>,
    security: Option<Value>,
    #[serde(alias = "refuseWeakSecret")]
    refuse_weak_secret: Option<bool>,
    ping: Option<bool>,
    #[serde(alias = "pingFreq")]
    ping_freq: Option<u64>,
    #[serde(alias = "pingDataObject")]
    ping_data: Option<Value>,
    timeout: Option<u64>,
    #[serde(alias = "rejectUnauthorized")]
    reject_unauthorized: Option<bool>,
    #[serde(alias = "serverPins")]
    server_pins: Option<OneOrMany>,
    #[serde(alias = "pinStore")]
    pin_store: Option<String>,
    #[serde(alias = "expectServerUuid")]
    expect_server_uuid: Option<OneOrMany>,
    #[serde(alias = "clientCertUuid")]
    client_cert_uuid: Option<bool>,
    address: Option<OneOrMany>,
    port: Option<PortValue>,
    host: Option<String>,
    routes: Option<Vec<String>>,
    #[serde(alias = "reconnectInitial")]
    reconnect_initial: Option<u64>,
    #[serde(alias = "reconnectMax")]
    reconnect_max: Option<u64>,
    #[serde(alias = "maxLine")]
    max_line: Option<usize>,
    #[serde(alias = "authTimeout")]
    auth_timeout: Option<u64>,
    #[serde(alias = "maxUnauthenticated")]
    max_unauthenticated: Option<usize>,
    #[serde(alias = "maxHandshakeLine")]
    max_handshake_line: Option<usize>,
    #[serde(alias = "maxUnauthenticatedBytes")]
    max_unauthenticated_bytes: Option<usize>,
    #[serde(alias = "maxRoutesPerPeer")]
    max_routes_per_peer: Option<usize>,
    #[serde(alias = "routerEventQueue")]
    router_event_queue: Option<usize>,
    #[serde(alias = "maxConnections")]
    max_connections: Option<usize>,
    #[serde(alias = "maxPending")]
    max_pending: Option<usize>,
    #[serde(alias = "maxQueueBytes")]
    max_queue_bytes: Option<usize>,
    #[serde(alias = "eventQueue")]
    event_queue: Option<usize>,
    #[serde(alias = "deadPeer")]
    dead_peer: Option<bool>,
    #[serde(alias = "deadPeerTimeout")]
    dead_peer_timeout: Option<u64>,
}

impl RawOptions {
    fn into_options(self) -> Result<Options> {
        let auth = self
            .auth
            .or(self.secret)
            .ok_or_else(|| Error::Config("missing 'auth' (the shared secret)".into()))?;
        let mut o = Options::new(auth);
        o.uuid = self.uuid;
        if let Some(d) = self.designation {
            o.designation = d;
        }
        o.mac = self.mac;
        o.certificates = self.certificates.map(|c| Certificates {
            key: Pem::new(c.key),
            cert: Pem::new(c.cert),
            ca: match c.ca {
                None => Vec::new(),
                Some(CaValue::One(s)) => vec![Pem::new(s)],
                Some(CaValue::Many(v)) => v.into_iter().map(Pem::new).collect(),
            },
        });
        match self.cipher {
            None | Some(CipherValue::Flag(true)) => o.cipher = true,
            Some(CipherValue::Flag(false)) => o.cipher = false,
            Some(CipherValue::Name(n)) if n == crate::protocol::LEGACY_CIPHER_NAME => {
                o.cipher = true
            }
            Some(CipherValue::Name(n)) => {
                return Err(Error::Config(format!(
                    "unsupported cipher {n:?} (only aes-256-cbc, true or false)"
                )))
            }
        }
        if let Some(s) = self.signatures {
            o.signatures = s;
        }
        if let Some(r) = self.refuse_weak_secret {
            o.refuse_weak_secret = r;
        }
        match self.security {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => o.security = s.parse().map_err(Error::Config)?,
            Some(other) => {
                return Err(Error::Config(format!(
                    "security must be \"legacy\", \"prefer-v2\" or \"require-v2\", got {other}"
                )))
            }
        }
        let ms = Duration::from_millis;
        if self.ping == Some(true) || self.ping_freq.is_some() || self.ping_data.is_some() {
            o.ping = true;
        }
        if let Some(f) = self.ping_freq {
            o.ping_freq = ms(f);
        }
        o.ping_data = self.ping_data;
        if let Some(t) = self.timeout {
            o.timeout = ms(t);
        }
        if let Some(r) = self.reject_unauthorized {
            o.reject_unauthorized = r;
        }
        o.server_pins = match self.server_pins {
            None => Vec::new(),
            Some(OneOrMany::One(p)) => vec![p],
            Some(OneOrMany::Many(v)) => v,
        };
        o.pin_store = self.pin_store.map(std::path::PathBuf::from);
        o.expect_server_uuid = match self.expect_server_uuid {
            None => Vec::new(),
            Some(OneOrMany::One(u)) => vec![u],
            Some(OneOrMany::Many(v)) => v,
        };
        if let Some(b) = self.client_cert_uuid {
            o.client_cert_uuid = b;
        }
        o.address = match self.address {
            None => Vec::new(),
            Some(OneOrMany::One(a)) => vec![a],
            Some(OneOrMany::Many(v)) => v,
        };
        o.port = match self.port {
            None => None,
            Some(PortValue::Number(p)) => Some(match self.host {
                Some(h) => PortSpec::from(Listen {
                    host: Some(h),
                    port: p,
                }),
                None => PortSpec::Port(p),
            }),
            Some(PortValue::Text(t)) => {
                Listen::parse(&t)?;
                Some(PortSpec::Text(t))
            }
        };
        if let Some(r) = self.routes {
            o.routes = r;
        }
        if let Some(v) = self.reconnect_initial {
            o.reconnect_initial = ms(v);
        }
        if let Some(v) = self.reconnect_max {
            o.reconnect_max = ms(v);
        }
        let l = &mut o.limits;
        if let Some(v) = self.max_line {
            l.max_line = v;
        }
        if let Some(v) = self.auth_timeout {
            l.auth_timeout = ms(v);
        }
        if let Some(v) = self.max_unauthenticated {
            l.max_unauthenticated = v;
        }
        if let Some(v) = self.max_handshake_line {
            l.max_handshake_line = v;
        }
        if let Some(v) = self.max_unauthenticated_bytes {
            l.max_unauthenticated_bytes = v;
        }
        if let Some(v) = self.max_routes_per_peer {
            l.max_routes_per_peer = v;
        }
        if let Some(v) = self.router_event_queue {
            l.router_event_queue = v;
        }
        if self.max_connections.is_some() {
            l.max_connections = self.max_connections;
        }
        if let Some(v) = self.max_pending {
            l.max_pending = v;
        }
        if let Some(v) = self.max_queue_bytes {
            l.max_queue_bytes = v;
        }
        if let Some(v) = self.event_queue {
            l.event_queue = v;
        }
        if self.dead_peer == Some(true) {
            l.dead_peer_timeout = Some(o.ping_freq * 3);
        }
        if let Some(v) = self.dead_peer_timeout {
            l.dead_peer_timeout = Some(ms(v));
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn legacy_json_options() {
        let o = Options::from_json(&json!({
            "secret": "s", "pingFreq": 500, "rejectUnauthorized": true,
            "address": "127.0.0.1:4488", "port": "localhost:99", "cipher": false,
            "certificates": {"key": "k.pem", "cert": "c.pem", "ca": ["a.pem"]}
        }))
        .unwrap();
        assert_eq!(o.auth, "s");
        assert!(o.ping);
        assert_eq!(o.ping_freq, Duration::from_millis(500));
        assert!(o.reject_unauthorized && !o.cipher);
        assert_eq!(o.address, vec!["127.0.0.1:4488"]);
        assert_eq!(
            o.port.unwrap().listen().unwrap(),
            Listen {
                host: Some("localhost".into()),
                port: 99
            }
        );
        assert_eq!(o.certificates.unwrap().ca.len(), 1);
        let o = Options::from_json(&json!({
            "auth": "s", "maxHandshakeLine": 1000, "max_unauthenticated_bytes": 5000
        }))
        .unwrap();
        assert_eq!(
            (
                o.limits.max_handshake_line,
                o.limits.max_unauthenticated_bytes
            ),
            (1000, 5000)
        );
        assert!(Options::from_json(&json!({})).is_err());
        assert!(Options::from_json(&json!({"auth": "s", "cipher": "aes-128-cbc"})).is_err());
        assert!(Options::from_json(&json!({"auth": "s", "port": "a:b:c"})).is_err());
    }

    #[test]
    fn ports_beyond_65535_are_out_of_range() {
        for s in [
            "70000",
            "127.0.0.1:70000",
            "[::1]:65536",
            "99999999999999999999",
        ] {
            let e = Listen::parse(s).unwrap_err().to_string();
            assert!(e.contains("out of range"), "{s}: {e}");
        }
        assert_eq!(Listen::parse("65535").unwrap().port, 65535);
        let e = Listen::parse("host:http").unwrap_err().to_string();
        assert!(e.contains("invalid port"), "{e}");
    }
}
