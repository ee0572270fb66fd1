//! [`Server`]: accepts TLS connections, authenticates them, serves streams.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::connection::{handshake, serve, Handshake, HandshakeBudget};
use crate::endpoint::{spawn_pinger, Endpoint};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::metrics::Limit;
use crate::options::Options;
use crate::protocol::LineBuffer;

/// An iris-rpc server (legacy `Server`).
pub struct Server {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    /// Stops the accept loop alone (legacy `tlsServer.close()`).
    unlisten: Arc<crate::shutdown::Shutdown>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("uuid", &self.engine().identity.uuid)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl std::ops::Deref for Server {
    type Target = Endpoint;

    /// Everything a client and a server share ([`Endpoint`]).
    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Server {
    /// Binds and starts serving on the current tokio runtime. Fails on bad options, unusable
    /// certificates or an address that cannot be bound.
    pub async fn bind(opts: Options) -> Result<Server> {
        Self::bind_inner(opts, false).await.map(|(s, _)| s)
    }

    /// [`Server::bind`] with the event receiver installed before anything can happen, so not
    /// even the `Listen` event or a first connection's events can be missed.
    pub async fn bind_with_events(opts: Options) -> Result<(Server, crate::event::Events)> {
        let (s, events) = Self::bind_inner(opts, true).await?;
        let events = events.ok_or(Error::Closed)?;
        Ok((s, events))
    }

    async fn bind_inner(
        opts: Options,
        with_events: bool,
    ) -> Result<(Server, Option<crate::event::Events>)> {
        let listen = opts
            .port
            .as_ref()
            .ok_or_else(|| Error::Config("a server needs 'port'".into()))?
            .listen()?;
        let certs = opts
            .certificates
            .clone()
            .ok_or_else(|| Error::Config("a server needs 'certificates' (key and cert)".into()))?;
        if opts.client_cert_uuid && !opts.reject_unauthorized {
            return Err(Error::Config(
                "client_cert_uuid needs reject_unauthorized and a `ca` (the CA that signs client \
                 certificates): a certificate nobody verified binds nothing"
                    .into(),
            ));
        }
        let tls = crate::tls::server_config(&certs, opts.reject_unauthorized)?;
        let engine = Engine::new(opts)?;
        let events = with_events.then(|| engine.events());
        let addr = listen.bind_addr();
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(tls);
        engine.task_started();
        let unlisten = Arc::new(crate::shutdown::Shutdown::default());
        tokio::spawn(accept_loop(
            engine.clone(),
            listener,
            acceptor,
            unlisten.clone(),
        ));
        spawn_pinger(&engine);
        tracing::debug!(%local_addr, "listening");
        let e = engine.clone();
        tokio::spawn(async move {
            e.emit(Event::Listen {
                address: local_addr,
            })
            .await
        });
        Ok((
            Server {
                endpoint: Endpoint::new(engine),
                local_addr,
                unlisten,
            },
            events,
        ))
    }

    /// Stops accepting connections and frees the port (legacy `tlsServer.close()`); streams
    /// already up go on until they end or [`Server::close`]. Idempotent.
    pub fn stop_listening(&self) {
        self.unlisten.trigger();
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

async fn accept_loop(
    engine: Arc<Engine>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    unlisten: Arc<crate::shutdown::Shutdown>,
) {
    loop {
        let accepted = tokio::select! {
            _ = engine.shutdown.wait() => break,
            _ = unlisten.wait() => break,
            r = listener.accept() => r,
        };
        let (tcp, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and similar: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let limits = &engine.opts.limits;
        let total = engine.connections.load(Ordering::SeqCst);
        let metrics = crate::metrics::get();
        if limits.max_connections.is_some_and(|m| total >= m) {
            tracing::warn!(%addr, "refused: max_connections reached");
            metrics.refused(Limit::MaxConnections);
            continue;
        }
        if engine.unauthenticated.load(Ordering::SeqCst) >= limits.max_unauthenticated {
            tracing::warn!(%addr, "refused: max_unauthenticated reached");
            metrics.refused(Limit::MaxUnauthenticated);
            continue;
        }
        metrics.accepted();
        engine.connections.fetch_add(1, Ordering::SeqCst);
        engine.unauthenticated.fetch_add(1, Ordering::SeqCst);
        engine.task_started();
        let e = engine.clone();
        let acceptor = acceptor.clone();
        // Until the handshake names the peer, a connection is known by its address.
        let span = tracing::info_span!("accepted", address = %addr);
        tokio::spawn(
            async move {
                connection(&e, tcp, addr, acceptor).await;
                e.connections.fetch_sub(1, Ordering::SeqCst);
                e.task_finished();
            }
            .instrument(span),
        );
    }
    // The port is free once close() returns: the listener goes before the task counts done.
    drop(listener);
    engine.task_finished();
}

async fn connection(engine: &Arc<Engine>, tcp: TcpStream, addr: SocketAddr, acceptor: TlsAcceptor) {
    let _ = tcp.set_nodelay(true);
    let mut lines = LineBuffer::new(engine.opts.limits.max_line);
    let auth = async {
        let mut tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| Error::Tls(e.to_string()))?;
        let cb = crate::connection::channel_binding(&**tls.get_ref().1);
        let budget = HandshakeBudget::new(
            &engine.unauthenticated_bytes,
            engine.opts.limits.max_unauthenticated_bytes,
        );
        let hs = Handshake::server(engine, cb);
        let est = handshake(&mut tls, &mut lines, hs, Some(budget)).await;
        // client_cert_uuid: the uuid claimed is the one the verified certificate names.
        let est = est.and_then(|est| {
            if engine.opts.client_cert_uuid {
                crate::tls::check_client_cert_uuid(
                    tls.get_ref().1.peer_certificates(),
                    &est.peer.uuid,
                )
                .map_err(Error::Auth)?;
            }
            Ok(est)
        });
        match est {
            Ok(est) => Ok((tls, est)),
            Err(e) => {
                // Refuse cleanly (close_notify), telling the peer nothing more.
                let _ = tls.shutdown().await;
                Err(e)
            }
        }
    };
    let result = tokio::select! {
        _ = engine.shutdown.wait() => Err(Error::Closed),
        r = tokio::time::timeout(engine.opts.limits.auth_timeout, auth) => r.unwrap_or_else(|_| {
            crate::metrics::get().limit_hit(Limit::AuthTimeout);
            Err(Error::LimitExceeded(format!(
                "authentication not completed within {:?}",
                engine.opts.limits.auth_timeout
            )))
        }),
    };
    engine.unauthenticated.fetch_sub(1, Ordering::SeqCst);
    match &result {
        // Closed locally (shutdown) is not the handshake's outcome.
        Err(Error::Closed) => {}
        r => crate::metrics::get().handshake(true, r.as_ref().map(|(_, est)| est.mode)),
    }
    match result {
        Ok((tls, est)) => {
            serve(engine.clone(), tls, lines, est, addr.to_string()).await;
        }
        Err(Error::Closed) => {}
        Err(error) => {
            tracing::warn!(%addr, %error, "connection refused");
            engine
                .emit(Event::Error {
                    error,
                    address: Some(addr.to_string()),
                })
                .await;
        }
    }
}
