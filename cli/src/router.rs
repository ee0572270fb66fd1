//! `iris-rpc router`: a frontend server relaying to a backend server (`--to`) or to a second
//! listening port (`--backend-port`), printing peers coming and going as JSON lines.

use std::path::PathBuf;

use clap::Args;
use iris_rpc::{
    Backend, Certificates, ClusterOptions, Error, Options, Router, RouterEvent, Security, Side,
};
use serde_json::json;

/// Options of `iris-rpc router`.
#[derive(Args)]
pub struct RouterArgs {
    /// Frontend port, or host:port, where clients connect.
    #[arg(long)]
    port: String,
    /// The frontend's shared secret.
    #[arg(long, env = "IRIS_RPC_AUTH")]
    auth: String,
    /// Backend server to relay to, host:port.
    #[arg(
        long,
        conflicts_with = "backend_port",
        required_unless_present = "backend_port"
    )]
    to: Option<String>,
    /// Instead of --to: a second port where more clients connect (they meet in the middle).
    #[arg(long)]
    backend_port: Option<String>,
    /// The backend's secret (default: the frontend's).
    #[arg(long)]
    backend_auth: Option<String>,
    /// Turn the legacy line cipher off on both sides.
    #[arg(long)]
    no_cipher: bool,
    /// Session modes on both sides: legacy, prefer-v2 or require-v2.
    #[arg(long, default_value = "prefer-v2", value_parser = crate::parse_security)]
    security: Security,
    /// This router's uuid on the backend (random when absent).
    #[arg(long)]
    uuid: Option<String>,
    /// Private key PEM file (a self-signed pair is generated when absent).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Certificate PEM file.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[command(flatten)]
    limits: crate::HandshakeLimits,
    #[command(flatten)]
    metrics: crate::observe::MetricsArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Options of a router that joins a cluster (`docs/CLUSTER.md`).
#[derive(Args)]
struct ClusterArgs {
    /// Join a cluster of routers over NATS: nats://HOST:PORT[,nats://HOST:PORT..].
    #[arg(long)]
    cluster: Option<String>,
    /// The cluster's name (subject prefix): routers with the same name form one router.
    #[arg(long, default_value = "iris", requires = "cluster")]
    cluster_name: String,
    /// NATS token.
    #[arg(
        long,
        env = "IRIS_RPC_CLUSTER_TOKEN",
        hide_env_values = true,
        requires = "cluster"
    )]
    cluster_token: Option<String>,
    /// NATS user (with IRIS_RPC_CLUSTER_PASSWORD or --cluster-password).
    #[arg(long, requires_all = ["cluster", "cluster_password"])]
    cluster_user: Option<String>,
    /// NATS password.
    #[arg(
        long,
        env = "IRIS_RPC_CLUSTER_PASSWORD",
        hide_env_values = true,
        requires = "cluster_user"
    )]
    cluster_password: Option<String>,
    /// A file holding the NKey seed (SU...) for NATS.
    #[arg(long, requires = "cluster")]
    cluster_nkey: Option<PathBuf>,
    /// A NATS .creds file (JWT and NKey seed).
    #[arg(long, requires = "cluster")]
    cluster_creds: Option<PathBuf>,
    /// Require TLS to NATS.
    #[arg(long, requires = "cluster")]
    cluster_tls: bool,
    /// CA certificates (PEM) to trust for NATS.
    #[arg(long, requires = "cluster")]
    cluster_ca: Option<PathBuf>,
}

impl ClusterArgs {
    fn options(&self) -> Result<Option<ClusterOptions>, Error> {
        let Some(servers) = &self.cluster else {
            return Ok(None);
        };
        let mut o = ClusterOptions::new(servers);
        o.name = self.cluster_name.clone();
        o.token = self.cluster_token.clone();
        if let (Some(u), Some(p)) = (&self.cluster_user, &self.cluster_password) {
            o.user_password = Some((u.clone(), p.clone()));
        }
        if let Some(path) = &self.cluster_nkey {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("--cluster-nkey {}: {e}", path.display())))?;
            o.nkey_seed = Some(seed.trim().to_owned());
        }
        o.credentials_file = self.cluster_creds.clone();
        o.require_tls = self.cluster_tls;
        o.root_certificates = self.cluster_ca.clone();
        Ok(Some(o))
    }
}

fn side(s: Side) -> &'static str {
    match s {
        Side::Frontend => "frontend",
        Side::Backend => "backend",
    }
}

/// Runs the router until interrupted.
pub async fn run(a: RouterArgs) -> Result<(), Error> {
    let certs = match (&a.key, &a.cert) {
        (Some(k), Some(c)) => Certificates::new(k.display().to_string(), c.display().to_string()),
        _ => Certificates::self_signed()?,
    };
    let frontend = a
        .limits
        .apply(Options::new(a.auth.clone()))
        .port(a.port.as_str())
        .cipher(!a.no_cipher)
        .security(a.security)
        .designation("router")
        .certificates(certs.clone());
    let secret = a.backend_auth.clone().unwrap_or_else(|| a.auth.clone());
    let mut back = a
        .limits
        .apply(Options::new(secret))
        .cipher(!a.no_cipher)
        .security(a.security)
        .designation("router")
        .certificates(certs);
    if let Some(u) = &a.uuid {
        back = back.uuid(u.clone());
    }
    let backend = match (&a.to, &a.backend_port) {
        (Some(to), _) => Backend::Client(back.address(to.clone())),
        (None, Some(p)) => Backend::Server(back.port(p.as_str())),
        (None, None) => return Err(Error::Config("give --to or --backend-port".into())),
    };
    let router = match a.cluster.options()? {
        Some(c) => Router::start_clustered(frontend, backend, c).await?,
        None => Router::start(frontend, backend).await?,
    };
    let mut listen = json!({"event": "listen", "frontend": router.local_addr().to_string()});
    if let Some(c) = &a.cluster.cluster {
        listen["cluster"] = json!(c);
    }
    if let Some(b) = router.backend_addr() {
        listen["backend"] = json!(b.to_string());
    }
    if let Some(to) = &a.to {
        listen["to"] = json!(to);
    }
    crate::print_json(&listen);
    a.metrics.start().await?;
    let Some(mut events) = router.events() else {
        return Err(Error::Closed);
    };
    loop {
        let ev = tokio::select! {
            _ = crate::shutdown_signal() => break,
            ev = events.recv() => ev,
        };
        let Some(ev) = ev else { break };
        let line = match ev {
            RouterEvent::Connect { side: s, peer } => json!({
                "event": "connect", "side": side(s), "uuid": peer.uuid(),
                "address": peer.address(), "designation": peer.designation(),
            }),
            RouterEvent::Disconnect {
                side: s,
                peer,
                reason,
            } => json!({
                "event": "disconnect", "side": side(s), "uuid": peer.uuid(), "reason": reason,
            }),
            RouterEvent::Refused { peer } => json!({
                "event": "refused", "uuid": peer.uuid(), "address": peer.address(),
                "reason": "uuid already held on the other side",
            }),
            RouterEvent::Yielded { side: s, uuid } => json!({
                "event": "yielded", "side": side(s), "uuid": uuid,
                "reason": "another router of the cluster holds it now",
            }),
            RouterEvent::Error {
                side: s,
                error,
                address,
            } => json!({
                "event": "error", "side": side(s), "error": error.to_string(), "address": address,
            }),
            _ => continue,
        };
        crate::print_json(&line);
    }
    router.close().await;
    Ok(())
}
