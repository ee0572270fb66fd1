//! Helpers shared by the integration tests: servers, a well-behaved client that keeps
//! talking, raw protocol clients for hostile input, and process resource readings.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iris_rpc::protocol::{
    ClientConfig, ClientHandshake, Established, Identity, Keys, LineBuffer, Step,
};
use iris_rpc::{Certificates, Client, Options, Server};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub const SECRET: &str = "secret";

/// How long any single expectation waits.
pub const WAIT: Duration = Duration::from_secs(15);

/// The next event that satisfies `f`, skipping others.
pub async fn next_matching(
    events: &mut iris_rpc::Events,
    f: impl Fn(&iris_rpc::Event) -> bool,
) -> iris_rpc::Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = events.next().await.expect("events closed");
            if f(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("event did not arrive in time")
}

/// Waits until `f` holds.
pub async fn until<F: Fn() -> bool>(what: &str, f: F) {
    tokio::time::timeout(WAIT, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

pub fn server_options() -> Options {
    Options::new(SECRET)
        .port("127.0.0.1:0")
        .uuid("srv")
        .certificates(Certificates::self_signed().unwrap())
}

pub async fn server(opts: Options) -> Server {
    let s = Server::bind(opts).await.unwrap();
    s.handle("echo", |req| async move { Ok(req.msg.value()) });
    s
}

/// A client that keeps sending requests and counts answers and errors.
pub struct Good {
    pub client: Arc<Client>,
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Good {
    pub async fn start(server: &Server) -> Good {
        let client = Arc::new(
            Client::connect(
                Options::new(SECRET)
                    .address(server.local_addr().to_string())
                    .uuid("good"),
            )
            .unwrap(),
        );
        client
            .wait_connected(Duration::from_secs(10))
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (c, s, o, e) = (client.clone(), stop.clone(), ok.clone(), errors.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !s.load(Ordering::SeqCst) {
                n += 1;
                match c.request(json!({"op": "echo", "n": n})).await {
                    Ok(v) if v["n"] == n => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(v) => e.lock().unwrap().push(format!("wrong answer {v}")),
                    Err(err) => e.lock().unwrap().push(err.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Good {
            client,
            stop,
            ok,
            errors,
            task,
        }
    }

    /// Requests answered so far; panics if any failed.
    pub fn check(&self) -> u64 {
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "the good client saw errors: {errors:?}");
        self.ok.load(Ordering::SeqCst)
    }

    pub async fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = (&mut self.task).await;
        let n = self.check();
        self.client.close().await;
        n
    }
}

pub async fn try_tls(server: &Server) -> std::io::Result<TlsStream<TcpStream>> {
    try_tls_to(server.local_addr()).await
}

pub async fn try_tls_to(addr: std::net::SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let config = iris_rpc::tls::client_config(None, false).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(iris_rpc::tls::server_name("localhost").unwrap(), tcp)
        .await
}

pub async fn tls(server: &Server) -> TlsStream<TcpStream> {
    try_tls(server).await.unwrap()
}

/// An authenticated raw client: the stream, its buffer and session state.
pub struct Raw {
    pub io: TlsStream<TcpStream>,
    pub lines: LineBuffer,
    pub est: Established,
}

pub async fn raw_handshake(
    server: &Server,
    secret: &str,
    cipher: bool,
    uuid: &str,
) -> Result<Raw, String> {
    raw_handshake_to(server.local_addr(), secret, cipher, uuid).await
}

pub async fn raw_handshake_to(
    addr: std::net::SocketAddr,
    secret: &str,
    cipher: bool,
    uuid: &str,
) -> Result<Raw, String> {
    raw_handshake_with(addr, secret, cipher, uuid, iris_rpc::Security::Legacy).await
}

/// A hand-driven client handshake under `security`, channel-bound to this TLS connection.
#[allow(dead_code)]
pub async fn raw_handshake_with(
    addr: std::net::SocketAddr,
    secret: &str,
    cipher: bool,
    uuid: &str,
    security: iris_rpc::Security,
) -> Result<Raw, String> {
    let mut io = try_tls_to(addr).await.map_err(|e| e.to_string())?;
    let cb = io
        .get_ref()
        .1
        .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", Some(&[]))
        .map_err(|e| e.to_string())?;
    let hs = ClientHandshake::new(
        Arc::new(Keys::new(secret)),
        ClientConfig {
            identity: Identity {
                uuid: uuid.into(),
                designation: String::new(),
                mac: None,
            },
            cipher,
            signatures: true,
            routes: vec![],
            security,
        },
    );
    let mut hs = hs.with_channel_binding(cb);
    io.write_all(&hs.hello()).await.map_err(|e| e.to_string())?;
    let mut lines = LineBuffer::new(1 << 24);
    loop {
        while let Some(line) = lines.next_line().map_err(|e| e.to_string())? {
            match hs.on_line(line).map_err(|e| e.to_string())? {
                Step::Send(out) => io.write_all(&out).await.map_err(|e| e.to_string())?,
                Step::Refuse { error, .. } => return Err(error.to_string()),
                Step::Done { send, established } => {
                    if let Some(out) = send {
                        io.write_all(&out).await.map_err(|e| e.to_string())?;
                    }
                    return Ok(Raw {
                        io,
                        lines,
                        est: *established,
                    });
                }
            }
        }
        let n = io
            .read(lines.read_buf(4096))
            .await
            .map_err(|e| e.to_string())?;
        lines.filled(n);
        if n == 0 {
            return Err("closed during handshake".into());
        }
    }
}

/// Reads until the peer closes; returns how long that took and how many bytes came first.
pub async fn until_closed<R: AsyncRead + Unpin>(io: &mut R, limit: Duration) -> (Duration, usize) {
    let start = Instant::now();
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    let r = tokio::time::timeout(limit, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(r.is_ok(), "connection still open after {limit:?}");
    (start.elapsed(), got)
}

/// Resident memory of this process, KiB.
pub fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The TLS versions a hand-built peer may negotiate.
pub fn versions(
    tls12_only: bool,
) -> &'static [&'static tokio_rustls::rustls::SupportedProtocolVersion] {
    static TLS12_ONLY: [&tokio_rustls::rustls::SupportedProtocolVersion; 1] =
        [&tokio_rustls::rustls::version::TLS12];
    if tls12_only {
        &TLS12_ONLY
    } else {
        tokio_rustls::rustls::ALL_VERSIONS
    }
}

fn ring() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// A TLS server configuration with a fresh self-signed certificate, limited to `versions`.
pub fn tls_server_config(
    versions: &[&'static tokio_rustls::rustls::SupportedProtocolVersion],
) -> Arc<tokio_rustls::rustls::ServerConfig> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (key, cert) = iris_rpc::tls::self_signed_pem(&["localhost"]).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    Arc::new(
        tokio_rustls::rustls::ServerConfig::builder_with_provider(ring())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

/// Accepts any server certificate (the legacy default), checking only handshake signatures.
#[derive(Debug)]
struct AnyCert(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        _: &[tokio_rustls::rustls::pki_types::CertificateDer<'_>],
        _: &tokio_rustls::rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: tokio_rustls::rustls::pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        d: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        d: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client configuration that accepts any certificate, limited to `versions`.
pub fn tls_client_config(
    versions: &[&'static tokio_rustls::rustls::SupportedProtocolVersion],
) -> Arc<tokio_rustls::rustls::ClientConfig> {
    Arc::new(
        tokio_rustls::rustls::ClientConfig::builder_with_provider(ring())
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(ring())))
            .with_no_client_auth(),
    )
}

/// Drives a handshake (either role) over `io` until it ends: the session on success, the
/// error text otherwise. The first line is `hello` when given (the client's).
pub async fn drive_handshake<IO: AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: &mut IO,
    hello: Option<Vec<u8>>,
    mut on_line: impl FnMut(&[u8]) -> Result<Step, String>,
) -> Result<Established, String> {
    if let Some(h) = hello {
        io.write_all(&h).await.map_err(|e| e.to_string())?;
    }
    let mut lines = LineBuffer::new(1 << 16);
    loop {
        while let Some(line) = lines.next_line().map_err(|e| e.to_string())? {
            match on_line(line)? {
                Step::Send(out) => io.write_all(&out).await.map_err(|e| e.to_string())?,
                Step::Refuse { send, error } => {
                    let _ = io.write_all(&send).await;
                    return Err(error.to_string());
                }
                Step::Done { send, established } => {
                    if let Some(out) = send {
                        io.write_all(&out).await.map_err(|e| e.to_string())?;
                    }
                    return Ok(*established);
                }
            }
        }
        let n = io
            .read(lines.read_buf(4096))
            .await
            .map_err(|e| e.to_string())?;
        lines.filled(n);
        if n == 0 {
            return Err("closed during handshake".into());
        }
    }
}
