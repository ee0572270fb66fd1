//! TLS for both roles: certificates from PEM text or files, the legacy "accept any server
//! certificate" mode, and self-signed generation for demos and tests.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

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
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = if reject_unauthorized {
        let roots = match certs {
            Some(c) => c.roots()?,
            None => RootCertStore::empty(),
        };
        if roots.is_empty() {
            return Err(Error::Config(
                "reject_unauthorized needs `ca` to verify the server certificate".into(),
            ));
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider())))
    };
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
