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
    /// Client: `host:port` addresses, one stream each.
    pub address: Vec<String>,
    /// Server: where to listen.
    pub port: Option<PortSpec>,
    /// Uuids announced as reachable through this instance in `rpc::init`.
    pub routes: Vec<String>,
    /// First reconnect delay (default 1 s, as legacy).
    pub reconnect_initial: Duration,
    /// Longest reconnect delay after exponential backoff (default 30 s).
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
            ping: false,
            ping_freq: Duration::from_secs(3),
            ping_data: None,
            timeout: Duration::from_secs(60),
            reject_unauthorized: false,
            address: Vec::new(),
            port: None,
            routes: Vec::new(),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
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

    /// Adds a client address `host:port`.
    pub fn address(mut self, addr: impl Into<String>) -> Self {
        self.address.push(addr.into());
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
    /// `pingDataObject`, `timeout`, `rejectUnauthorized`, `address`, `port`, `routes`) in
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
        let l = &self.limits;
        if l.max_line == 0 || l.max_pending == 0 || l.max_queue_bytes == 0 || l.event_queue == 0 {
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

#[derive(Deserialize)]
#[serde(untagged)]
enum PortValue {
    Number(u16),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Addresses {
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
    ping: Option<bool>,
    #[serde(alias = "pingFreq")]
    ping_freq: Option<u64>,
    #[serde(alias = "pingDataObject")]
    ping_data: Option<Value>,
    timeout: Option<u64>,
    #[serde(alias = "rejectUnauthorized")]
    reject_unauthorized: Option<bool>,
    address: Option<Addresses>,
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
        o.address = match self.address {
            None => Vec::new(),
            Some(Addresses::One(a)) => vec![a],
            Some(Addresses::Many(v)) => v,
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
