//! TLS for both roles: certificates from PEM text or files, the legacy "accept any server
//! certificate" mode, and self-signed generation for demos and tests.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// One PEM item: either the PEM text itself or a path to a file holding it.
///
/// A value containing `-----BEGIN` is taken as PEM text, anything else as a path.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem(String);

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_inline() {
            f.write_str("Pem(<inline>)")
        } else {
            write!(f, "Pem({:?})", self.0)
        }
    }
}

impl Pem {
    /// PEM text or a file path.
    pub fn new(text_or_path: impl Into<String>) -> Self {
        Pem(text_or_path.into())
    }

    fn is_inline(&self) -> bool {
        self.0.contains("-----BEGIN")
    }

    /// The PEM bytes, reading the file when this is a path.
    pub fn load(&self, what: &str) -> Result<Vec<u8>> {
        if self.is_inline() {
            Ok(self.0.as_bytes().to_vec())
        } else {
            std::fs::read(&self.0)
                .map_err(|e| Error::Config(format!("cannot read {what} file {:?}: {e}", self.0)))
        }
    }
}

impl From<&str> for Pem {
    fn from(s: &str) -> Self {
        Pem::new(s)
    }
}

impl From<String> for Pem {
    fn from(s: String) -> Self {
        Pem::new(s)
    }
}

/// The `certificates` option: `key`, `cert` and optional `ca`, each PEM text or a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificates {
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Pem,
    /// Certificate chain, leaf first.
    pub cert: Pem,
    /// Trusted roots, used when `reject_unauthorized` is on.
    pub ca: Vec<Pem>,
}

impl Certificates {
    /// Key and certificate, no CA.
    pub fn new(key: impl Into<Pem>, cert: impl Into<Pem>) -> Self {
        Certificates {
            key: key.into(),
            cert: cert.into(),
            ca: Vec::new(),
        }
    }

    /// Adds a trusted root.
    pub fn with_ca(mut self, ca: impl Into<Pem>) -> Self {
        self.ca.push(ca.into());
        self
    }

    /// A fresh self-signed pair for `localhost`, `127.0.0.1` and `::1`, as PEM text.
    pub fn self_signed() -> Result<Self> {
        let (key, cert) = self_signed_pem(&["localhost", "127.0.0.1", "::1"])?;
        Ok(Certificates::new(key, cert))
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>> {
        let bytes = self.cert.load("cert")?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Config(format!("invalid certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Config("no certificate found in cert PEM".into()));
        }
        Ok(certs)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>> {
        let bytes = self.key.load("key")?;
        PrivateKeyDer::from_pem_slice(&bytes)
            .map_err(|e| Error::Config(format!("invalid private key PEM: {e}")))
    }

    fn roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for ca in &self.ca {
            let bytes = ca.load("ca")?;
            for cert in CertificateDer::pem_slice_iter(&bytes) {
                let cert = cert.map_err(|e| Error::Config(format!("invalid CA PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::Config(format!("unusable CA certificate: {e}")))?;
            }
        }
        Ok(roots)
    }
}

/// Generates a self-signed key and certificate for `names` (DNS names or IP addresses), as
/// `(key_pem, cert_pem)`.
pub fn self_signed_pem(names: &[&str]) -> Result<(String, String)> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::Config(format!("cannot generate certificate: {e}")))?;
    Ok((ck.key_pair.serialize_pem(), ck.cert.pem()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server-side TLS configuration: `reject_unauthorized` requires client certificates signed by `ca`.
pub fn server_config(
    certs: &Certificates,
    reject_unauthorized: bool,
) -> Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = if reject_unauthorized {
        let roots = certs.roots()?;
        if roots.is_empty() {
            return Err(Error::Config(
                "reject_unauthorized on a server needs `ca` to verify client certificates".into(),
            ));
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| Error::Tls(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(certs.chain()?, certs.private_key()?)
        .map_err(|e| Error::Config(format!("key does not match certificate: {e}")))?;
    Ok(Arc::new(config))
}

/// Client-side TLS configuration: any server certificate unless `reject_unauthorized`, then `ca`.
pub fn client_config(
    certs: Option<&Certificates>,
    reject_unauthorized: bool,
) -> Result<Arc<rustls::ClientConfig>> {
    client_config_pinned(certs, reject_unauthorized, &[])
}

/// [`client_config`] that also requires the server certificate's key to match one of `pins`
/// (each `sha256/<base64>` as in RFC 7469, or 64 hex characters, of SHA-256 over the
/// certificate's DER SubjectPublicKeyInfo; see [`spki_pin`]). No pins: no pinning.
pub fn client_config_pinned(
    certs: Option<&Certificates>,
    reject_unauthorized: bool,
    pins: &[String],
) -> Result<Arc<rustls::ClientConfig>> {
    client_config_for(certs, reject_unauthorized, pins, None)
}

/// [`client_config_pinned`] for one address, whose server key must also match the pin that
/// `store` holds for `address`, if it holds one (trust on first use; see [`PinStore`]).
pub fn client_config_for(
    certs: Option<&Certificates>,
    reject_unauthorized: bool,
    pins: &[String],
    store: Option<(Arc<PinStore>, &str)>,
) -> Result<Arc<rustls::ClientConfig>> {
    let pins = pins
        .iter()
        .map(|p| parse_pin(p))
        .collect::<Result<Vec<_>>>()?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let inner: Arc<dyn ServerCertVerifier> = if reject_unauthorized {
        let roots = match certs {
            Some(c) => c.roots()?,
            None => RootCertStore::empty(),
        };
        if roots.is_empty() {
            return Err(Error::Config(
                "reject_unauthorized needs `ca` to verify the server certificate".into(),
            ));
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?
    } else {
        Arc::new(AcceptAnyServerCert(provider()))
    };
    let store = store.map(|(store, address)| (store, address.to_owned()));
    let verifier: Arc<dyn ServerCertVerifier> = if pins.is_empty() && store.is_none() {
        inner
    } else {
        Arc::new(PinnedServerCert { inner, pins, store })
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    // Legacy clients present their certificate too; servers that ask for one get it.
    let config = match certs {
        Some(c) => builder
            .with_client_auth_cert(c.chain()?, c.private_key()?)
            .map_err(|e| Error::Config(format!("key does not match certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The RFC 9266 `tls-exporter` channel binding of a TLS connection, for the v2 handshake: 32
/// bytes exported with the label `EXPORTER-Channel-Binding` and an empty context.
///
/// `None` unless the connection negotiated TLS 1.3 (and finished its handshake). Under TLS 1.2
/// the exporter is only unique to the connection when the extended master secret extension
/// (RFC 7627) was negotiated, and rustls does not report whether it was; a value that two
/// connections can share (the triple handshake attack) would let a relay forward the proofs.
/// So v2 refuses TLS 1.2 instead of trusting it (docs/PROTOCOL-V2.md section 7).
pub fn channel_binding<D>(conn: &rustls::ConnectionCommon<D>) -> Option<[u8; 32]> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return None;
    }
    conn.export_keying_material(
        [0u8; 32],
        crate::protocol::v2::EXPORTER_LABEL.as_bytes(),
        Some(&[]),
    )
    .ok()
}

/// The TLS server name for a host string.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|_| Error::Config(format!("invalid host name {host:?}")))
}

/// The pin of a certificate: `sha256/` and the base64 of SHA-256 over its DER
/// SubjectPublicKeyInfo (RFC 7469 `pin-sha256`, curl's `--pinnedpubkey`), from the first
/// certificate of `cert` (PEM text or a path). The pin names the key, so it survives a
/// certificate renewed with the same key.
pub fn spki_pin(cert: &Pem) -> Result<String> {
    let bytes = cert.load("cert")?;
    let der = CertificateDer::pem_slice_iter(&bytes)
        .next()
        .ok_or_else(|| Error::Config("no certificate found in cert PEM".into()))?
        .map_err(|e| Error::Config(format!("invalid certificate PEM: {e}")))?;
    let hash =
        spki_sha256(&der).map_err(|e| Error::Config(format!("unusable certificate: {e}")))?;
    Ok(format!("sha256/{}", base64_encode(&hash)))
}

/// The SHA-256 of the SubjectPublicKeyInfo of the first certificate of a peer's chain: what
/// [`spki_pin`] prints, as bytes.
pub fn peer_spki_sha256(chain: Option<&[CertificateDer<'_>]>) -> Result<[u8; 32]> {
    let der = chain
        .and_then(|c| c.first())
        .ok_or_else(|| Error::Tls("the peer showed no certificate".into()))?;
    spki_sha256(der).map_err(|e| Error::Tls(format!("unusable peer certificate: {e}")))
}

/// The pin text (`sha256/<base64>`) of an SPKI hash.
pub fn pin_text(hash: &[u8; 32]) -> String {
    format!("sha256/{}", base64_encode(hash))
}

/// `client_cert_uuid`: whether the (already verified) client certificate `chain` names `uuid`,
/// as a DNS name of its subjectAltName or as the URI `urn:uuid:<uuid>`. The error says which
/// names the certificate carries.
pub fn check_client_cert_uuid(
    chain: Option<&[CertificateDer<'_>]>,
    uuid: &str,
) -> std::result::Result<(), String> {
    let der = chain.and_then(|c| c.first()).ok_or_else(|| {
        format!(
            "client claiming uuid {uuid:?} showed no certificate, and client_cert_uuid binds \
             every uuid to a client certificate"
        )
    })?;
    let cert = webpki::EndEntityCert::try_from(der)
        .map_err(|e| format!("client certificate unusable: {e}"))?;
    let urn = format!("urn:uuid:{uuid}");
    let dns: Vec<&str> = cert.valid_dns_names().collect();
    let uris: Vec<&str> = cert.valid_uri_names().collect();
    if dns.contains(&uuid) || uris.contains(&urn.as_str()) {
        return Ok(());
    }
    Err(format!(
        "client claimed uuid {uuid:?} but its certificate is for {:?} (client_cert_uuid: the uuid \
         must be a DNS name of the certificate or the URI {urn:?}); a peer that holds the \
         secret but not that uuid's certificate",
        dns.iter().chain(uris.iter()).collect::<Vec<_>>()
    ))
}

fn spki_sha256(der: &CertificateDer<'_>) -> std::result::Result<[u8; 32], webpki::Error> {
    use sha2::Digest;
    let cert = webpki::EndEntityCert::try_from(der)?;
    Ok(sha2::Sha256::digest(cert.subject_public_key_info().as_ref()).into())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Parses one pin: `sha256/<base64>` or 64 hex characters.
fn parse_pin(pin: &str) -> Result<[u8; 32]> {
    let bytes = match pin.strip_prefix("sha256/") {
        Some(b64) => base64_decode(b64),
        None => {
            let mut buf = Vec::new();
            crate::protocol::hex::decode_into(pin.as_bytes(), &mut buf).map(|()| buf)
        }
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            Error::Config(format!(
                "invalid server pin {pin:?} (expected sha256/<base64 of 32 bytes>, as `iris-rpc \
                 cert` prints, or 64 hex characters)"
            ))
        })
}

/// Why a pinned client refused a server: its key is not one of the pins.
struct PinMismatch(String);

impl std::fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's certificate key {} matches none of server_pins (a fake server or a man \
             in the middle, or the server changed its key)",
            self.0
        )
    }
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for PinMismatch {}

/// A trust-on-first-use store of server key pins (the `pin_store` option): a text file of
/// `address sha256/<base64>` lines, one per server address, like ssh's `known_hosts`. A client
/// checks a server against the pin stored for its address during the TLS handshake, before it
/// sends anything; the first connection to an address that authenticates records its pin
/// ([`PinStore::record`]). The file is replaced atomically (a temporary file in the same
/// directory, flushed, then renamed over it) with mode 0600; `#` lines and blank lines are kept
/// out of the way (ignored and not rewritten).
#[derive(Debug)]
pub struct PinStore {
    path: std::path::PathBuf,
}

/// One process updates a store at a time (another process may still write between our read
/// and our rename: the last writer wins, and the lost pin is recorded again next time).
static STORE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl PinStore {
    /// The store in `path` (read at each use; a missing file is an empty store).
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        PinStore { path: path.into() }
    }

    fn load(&self) -> Result<Vec<(String, [u8; 32])>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Config(format!(
                    "cannot read pin_store {}: {e}",
                    self.path.display()
                )))
            }
        };
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line
                .split_once(char::is_whitespace)
                .and_then(|(a, p)| Some((a.to_owned(), parse_pin(p.trim()).ok()?)));
            match parsed {
                Some(entry) => out.push(entry),
                None => {
                    return Err(Error::Config(format!(
                        "pin_store {} line {}: expected `address sha256/<base64>`",
                        self.path.display(),
                        n + 1
                    )))
                }
            }
        }
        Ok(out)
    }

    /// The pin stored for `address`.
    pub fn lookup(&self, address: &str) -> Result<Option<[u8; 32]>> {
        Ok(self
            .load()?
            .into_iter()
            .find(|(a, _)| a == address)
            .map(|(_, p)| p))
    }

    /// Records `pin` for `address` unless the store has one for it; fails if the stored one
    /// differs (the server changed its key, or another connection met a different server).
    pub fn record(&self, address: &str, pin: &[u8; 32]) -> Result<()> {
        let _guard = STORE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut entries = self.load()?;
        if let Some((_, stored)) = entries.iter().find(|(a, _)| a == address) {
            if bool::from(stored.ct_eq(pin)) {
                return Ok(());
            }
            return Err(Error::Auth(
                StoreMismatch {
                    address: address.to_owned(),
                    stored: pin_text(stored),
                    seen: pin_text(pin),
                    path: self.path.display().to_string(),
                }
                .to_string(),
            ));
        }
        entries.push((address.to_owned(), *pin));
        let mut text = String::from(
            "# iris-rpc pin_store: server key pins recorded on first use (address sha256/<base64>)\n",
        );
        for (a, p) in &entries {
            text.push_str(a);
            text.push(' ');
            text.push_str(&pin_text(p));
            text.push('\n');
        }
        self.write_atomically(text.as_bytes()).map_err(|e| {
            Error::Config(format!(
                "cannot write pin_store {}: {e}",
                self.path.display()
            ))
        })
    }

    fn write_atomically(&self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pins".into());
        let tmp = self.path.with_file_name(format!(
            ".{name}.tmp.{}.{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let result = (|| {
            let mut f = options.open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Why a client refused a server by its pin_store entry.
struct StoreMismatch {
    address: String,
    stored: String,
    seen: String,
    path: String,
}

impl std::fmt::Display for StoreMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server at {} shows certificate key {}, but pin_store {} recorded {} for that \
             address on first use (a fake server or a man in the middle, or the server changed \
             its key: then remove its line from the store)",
            self.address, self.seen, self.path, self.stored
        )
    }
}

impl std::fmt::Debug for StoreMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for StoreMismatch {}

/// `pin_store` and `server_pins`: the key of the server's certificate must match the stored
/// pin of its address, if the store has one, and be one of `pins`, if there are any; then
/// `inner` decides.
#[derive(Debug)]
struct PinnedServerCert {
    inner: Arc<dyn ServerCertVerifier>,
    pins: Vec<[u8; 32]>,
    /// The pin store and the address whose stored pin applies.
    store: Option<(Arc<PinStore>, String)>,
}

impl ServerCertVerifier for PinnedServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let hash = spki_sha256(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let mismatch = |e: Arc<dyn std::error::Error + Send + Sync>| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                e,
            )))
        };
        if let Some((store, address)) = &self.store {
            let stored = store
                .lookup(address)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            if let Some(stored) = stored {
                if !bool::from(stored.ct_eq(&hash)) {
                    return Err(mismatch(Arc::new(StoreMismatch {
                        address: address.clone(),
                        stored: pin_text(&stored),
                        seen: pin_text(&hash),
                        path: store.path.display().to_string(),
                    })));
                }
            }
        }
        if !self.pins.is_empty() && !self.pins.iter().any(|p| bool::from(p.ct_eq(&hash))) {
            return Err(mismatch(Arc::new(PinMismatch(format!(
                "sha256/{}",
                base64_encode(&hash)
            )))));
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Legacy's `rejectUnauthorized: false`: any certificate is accepted, but the handshake
/// signatures are still checked so the peer must hold the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_pins_parse_in_both_spellings() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes, "{n}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        let hash = [0xabu8; 32];
        let b64 = format!("sha256/{}", base64_encode(&hash));
        assert_eq!(parse_pin(&b64).unwrap(), hash);
        assert_eq!(parse_pin(&"ab".repeat(32)).unwrap(), hash);
        for bad in [
            "",
            "sha256/",
            "sha256/Zm9v",
            "sha256/!!!!",
            &"ab".repeat(31),
        ] {
            let e = parse_pin(bad).unwrap_err().to_string();
            assert!(e.contains("invalid server pin"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_pin_names_the_key() {
        let (key, cert) = self_signed_pem(&["localhost"]).unwrap();
        let pin = spki_pin(&Pem::new(cert.clone())).unwrap();
        assert!(pin.starts_with("sha256/") && pin.len() == 7 + 44, "{pin}");
        assert_eq!(spki_pin(&Pem::new(cert)).unwrap(), pin);
        let (_, other) = self_signed_pem(&["localhost"]).unwrap();
        assert_ne!(spki_pin(&Pem::new(other)).unwrap(), pin);
        assert!(spki_pin(&Pem::new(key)).is_err());
    }
}
