//! The native half of the `iris-rpc` npm package: a napi-rs addon over the iris-rpc core.
//!
//! JavaScript never sees these items directly: the hand-written `index.js` wraps them in the
//! legacy classes (`Client`, `Server`, ...). The addon only translates types and threads; all
//! protocol behaviour lives in the core crate. Events cross into JavaScript in batches, one JSON
//! text per call (see `batch.rs`), and message bodies cross as JSON text parsed by V8.

#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod batch;
mod logs;
mod native;
mod router;

use napi_derive::napi;

pub use logs::set_log_listener;
pub use native::NativePeer;
pub use router::NativeRouter;

/// Sets up the core's log once per process: records go to the package's `log` emitter
/// (`logs.rs`) at the level JavaScript asks for, and also to stderr when the environment
/// variable `IRIS_RPC_LOG` holds a filter such as `debug` or `iris_rpc=info`.
pub(crate) fn init_logging() {
    use tracing_subscriber::prelude::*;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let stderr = std::env::var("IRIS_RPC_LOG")
            .ok()
            .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
            .map(|filter| {
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .with_filter(filter)
            });
        let _ = tracing_subscriber::registry()
            .with(stderr)
            .with(logs::Forward.with_filter(logs::filter()))
            .try_init();
    });
}

/// The process's metrics in the Prometheus text format (version 0.0.4): every instance in the
/// process adds into them (the core's `iris_rpc::metrics`).
#[napi(catch_unwind)]
pub fn metrics() -> String {
    iris_rpc::metrics::text()
}

/// A PEM key and certificate pair.
#[napi(object)]
pub struct KeyAndCert {
    /// The private key (PKCS#8 PEM).
    pub key: String,
    /// The certificate (PEM).
    pub cert: String,
}

/// A fresh self-signed certificate for `names` (default `localhost`, `127.0.0.1`, `::1`), for
/// demos and tests.
#[napi(catch_unwind)]
pub fn self_signed(names: Option<Vec<String>>) -> napi::Result<KeyAndCert> {
    let names = names.unwrap_or_else(|| {
        vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ]
    });
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (key, cert) = iris_rpc::tls::self_signed_pem(&refs).map_err(|e| {
        napi::Error::new(
            napi::Status::GenericFailure,
            format!("{}: {e}", e.kind().as_str()),
        )
    })?;
    Ok(KeyAndCert { key, cert })
}
