//! [`Client`]: keeps one authenticated stream per address, reconnecting with backoff.

use std::sync::Arc;

use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::Instrument;

use crate::connection::{handshake, serve, Handshake};
use crate::endpoint::{spawn_pinger, Endpoint};
use crate::engine::{Counted, Engine};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::options::Options;
use crate::protocol::LineBuffer;

/// An iris-rpc client (legacy `Client`).
pub struct Client {
    endpoint: Endpoint,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("uuid", &self.engine().identity.uuid)
            .field("address", &self.engine().opts.address)
            .finish()
    }
}

impl std::ops::Deref for Client {
    type Target = Endpoint;

    /// Everything a client and a server share ([`Endpoint`]).
    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Client {
    /// Starts connecting to every address on the current tokio runtime and returns at once,
    /// like legacy; use [`Client::wait_connected`] or the `Connect` event to know when a stream
    /// is up. Each stream retries every second (`reconnect_initial`, plus up to a fifth of
    /// jitter) like legacy, until [`Client::close`]; with `reconnect_max` above
    /// `reconnect_initial` the delay doubles after each failure up to `reconnect_max`.
    pub fn connect(opts: Options) -> Result<Client> {
        Self::connect_inner(opts, false).map(|(c, _)| c)
    }

    /// [`Client::connect`] with the event receiver installed before connecting starts, so the
    /// first `Connect` (or `Error`) cannot be missed.
    pub fn connect_with_events(opts: Options) -> Result<(Client, crate::event::Events)> {
        let (c, events) = Self::connect_inner(opts, true)?;
        Ok((c, events.ok_or(Error::Closed)?))
    }

    fn connect_inner(
        opts: Options,
        with_events: bool,
    ) -> Result<(Client, Option<crate::event::Events>)> {
        if opts.address.is_empty() && opts.failover.is_empty() {
            return Err(Error::Config("a client needs 'address' (host:port)".into()));
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("Client::connect must be called inside a tokio runtime".into())
        })?;
        let store = opts
            .pin_store
            .as_ref()
            .map(|p| Arc::new(crate::tls::PinStore::new(p)));
        let shared = crate::tls::client_config_pinned(
            opts.certificates.as_ref(),
            opts.reject_unauthorized,
            &opts.server_pins,
        )?;
        // With a pin store each address is checked against its own stored pin.
        let connector_for = |a: &str| -> Result<TlsConnector> {
            let tls = match &store {
                Some(store) => crate::tls::client_config_for(
                    opts.certificates.as_ref(),
                    opts.reject_unauthorized,
                    &opts.server_pins,
                    Some((store.clone(), a)),
                )?,
                None => shared.clone(),
            };
            Ok(TlsConnector::from(tls))
        };
        // One stream per address, and one more over every failover address.
        let mut targets = Vec::new();
        for a in &opts.address {
            let (host, port) = split_host_port(a)?;
            targets.push(vec![(a.clone(), host, port, connector_for(a)?)]);
        }
        let mut failover = Vec::new();
        for a in &opts.failover {
            let (host, port) = split_host_port(a)?;
            failover.push((a.clone(), host, port, connector_for(a)?));
        }
        if !failover.is_empty() {
            targets.push(failover);
        }
        let engine = Engine::new(opts)?;
        let events = with_events.then(|| engine.events());
        for t in targets {
            engine.task_started();
            let e = engine.clone();
            let store = store.clone();
            handle.spawn(async move {
                reconnect_loop(&e, &t, store).await;
                e.task_finished();
            });
        }
        let _guard = handle.enter();
        spawn_pinger(&engine);
        Ok((
            Client {
                endpoint: Endpoint::new(engine),
            },
            events,
        ))
    }
}

fn split_host_port(address: &str) -> Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| Error::Config(format!("address must be host:port, got {address:?}")))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| Error::Config(format!("invalid port in address {address:?}")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Error::Config(format!(
            "missing host in address {address:?}"
        )));
    }
    Ok((host.to_owned(), port))
}

/// Keeps one stream up over `targets`: the same one while it works, the next after a failure.
async fn reconnect_loop(
    engine: &Arc<Engine>,
    targets: &[(String, String, u16, TlsConnector)],
    store: Option<Arc<crate::tls::PinStore>>,
) {
    let initial = engine.opts.reconnect_initial;
    let max = engine.opts.reconnect_max.max(initial);
    let mut delay = initial;
    let mut next = 0;
    while !engine.shutdown.is_triggered() {
        let Some((address, host, port, connector)) = targets.get(next % targets.len().max(1))
        else {
            return;
        };
        let (address, host, port) = (address.as_str(), host.as_str(), *port);
        // Only connecting races the shutdown: a stream that came up is served to its end,
        // which on close is soon, so its `Disconnect` is never lost.
        let attempt = connect_once(engine, address, host, port, connector, store.as_deref())
            .instrument(tracing::info_span!("connecting", address = %address))
            .await;
        match attempt {
            // A stream that ended (its router died) moves on too: the next is most likely up.
            Ok(true) => {
                delay = initial;
                next = (next + 1) % targets.len().max(1);
            }
            Ok(false) => {}
            Err(error) => {
                next = (next + 1) % targets.len().max(1);
                tracing::debug!(%address, %error, "connection attempt failed");
                engine
                    .emit(Event::Error {
                        error,
                        address: Some(address.to_owned()),
                    })
                    .await;
            }
        }
        // Jitter of up to a fifth, so a restarted server is not hit by every client at once.
        let jitter = delay.mul_f64(rand::thread_rng().gen_range(0.0..0.2));
        tokio::select! {
            _ = engine.shutdown.wait() => break,
            _ = tokio::time::sleep(delay + jitter) => {}
        }
        delay = (delay * 2).min(max);
    }
}

/// One connection: `Ok(true)` if it authenticated (and has now ended).
async fn connect_once(
    engine: &Arc<Engine>,
    address: &str,
    host: &str,
    port: u16,
    connector: &TlsConnector,
    store: Option<&crate::tls::PinStore>,
) -> Result<bool> {
    let name = crate::tls::server_name(host)?;
    let mut lines = LineBuffer::new(engine.opts.limits.max_line);
    let _counted = Counted::new(&engine.connections);
    // Handshakes count from TCP up: a server that is down is not a failed handshake.
    let tcp_up = std::sync::atomic::AtomicBool::new(false);
    let auth = async {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp_up.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| Error::Tls(e.to_string()))?;
        let cb = crate::connection::channel_binding(&**tls.get_ref().1);
        let est = handshake(&mut tls, &mut lines, Handshake::client(engine, cb), None).await?;
        let expected = &engine.opts.expect_server_uuid;
        if !expected.is_empty() && !expected.contains(&est.peer.uuid) {
            let _ = tls.shutdown().await;
            return Err(Error::Auth(format!(
                "the server authenticated as uuid {:?}, not as expect_server_uuid {:?} (another \
                 server that knows the secret, or the wrong address)",
                est.peer.uuid, expected
            )));
        }
        if let Some(store) = store {
            // Trust on first use: the first server at this address that authenticated.
            let pin = crate::tls::peer_spki_sha256(tls.get_ref().1.peer_certificates())?;
            if let Err(e) = store.record(address, &pin) {
                let _ = tls.shutdown().await;
                return Err(e);
            }
        }
        Ok::<_, Error>((tls, est))
    };
    let connected = tokio::select! {
        _ = engine.shutdown.wait() => return Ok(false),
        r = tokio::time::timeout(engine.opts.limits.auth_timeout, auth) => r,
    };
    let connected = connected.unwrap_or_else(|_| {
        crate::metrics::get().limit_hit(crate::metrics::Limit::AuthTimeout);
        Err(Error::LimitExceeded(format!(
            "connect and authentication not completed within {:?}",
            engine.opts.limits.auth_timeout
        )))
    });
    if tcp_up.load(std::sync::atomic::Ordering::Relaxed) {
        let m = crate::metrics::get();
        m.handshake(false, connected.as_ref().map(|(_, est)| est.mode));
    }
    let (tls, est) = connected?;
    serve(engine.clone(), tls, lines, est, address.to_owned()).await;
    Ok(true)
}
