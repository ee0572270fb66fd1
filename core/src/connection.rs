//! One connection: TLS, the handshake under a deadline, then a reader (this task) and a writer
//! (its own task) for the authenticated stream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::Instrument;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::metrics::Limit;
use crate::outbox::Outbox;
use crate::peer::{Peer, PeerInner};
use crate::protocol::{
    ClientConfig, ClientHandshake, Established, HandshakeError, LineBuffer, Opener, Sealer,
    ServerConfig, ServerHandshake, Step,
};
use crate::requests::run_timer;
use crate::shutdown::Shutdown;
use crate::stream::Stream;

/// Reads start small, so an idle connection holds little, grow while reads come full, and shrink
/// back (the buffer is given back once empty) when they come small.
const READ_MIN: usize = 2 * 1024;
const READ_MAX: usize = 64 * 1024;
const WRITE_BATCH: usize = 1024;
/// A reader's pass over what one read delivered lets the writer go, and other tasks run, every
/// this many lines. One read can carry hundreds of pipelined requests; answering all of them
/// before writing any would leave the peer idle meanwhile, so the two ends would take turns
/// instead of working at once. Measured with 256 requests in flight (`bench client --runtime
/// current`): from about 220,000 to 430,000 requests/s in v2 (64 and 128 gave the same within
/// the noise; 16 and 32 less).
const PASS_LINES: usize = 128;

pub(crate) enum Role {
    Client(ClientHandshake),
    Server(ServerHandshake),
}

/// One handshake: the role's state machine and the limits it reads under.
pub(crate) struct Handshake {
    role: Role,
    /// Line limit until the peer's proof (then the buffer's own, `max_line`).
    max_line: usize,
}

impl Handshake {
    /// The client role; `channel_binding` is the connection's TLS exporter value (v2 needs it).
    pub(crate) fn client(engine: &Engine, channel_binding: Option<[u8; 32]>) -> Self {
        let mut h = ClientHandshake::new(
            engine.keys.clone(),
            ClientConfig {
                identity: engine.identity.clone(),
                cipher: engine.opts.cipher,
                signatures: engine.opts.signatures,
                routes: engine.local_routes(),
                security: engine.opts.security,
            },
        );
        if let Some(cb) = channel_binding {
            h = h.with_channel_binding(cb);
        }
        Handshake {
            role: Role::Client(h),
            max_line: handshake_line(engine),
        }
    }

    /// The server role; `channel_binding` as for [`Handshake::client`].
    pub(crate) fn server(engine: &Engine, channel_binding: Option<[u8; 32]>) -> Self {
        let mut h = ServerHandshake::new(
            engine.keys.clone(),
            ServerConfig {
                identity: engine.identity.clone(),
                require_cipher: engine.opts.cipher,
                signatures: engine.opts.signatures,
                routes: engine.local_routes(),
                security: engine.opts.security,
            },
        );
        if let Some(cb) = channel_binding {
            h = h.with_channel_binding(cb);
        }
        Handshake {
            role: Role::Server(h),
            max_line: handshake_line(engine),
        }
    }

    fn on_line(&mut self, line: &[u8]) -> std::result::Result<Step, HandshakeError> {
        match &mut self.role {
            Role::Client(h) => h.on_line(line),
            Role::Server(h) => h.on_line(line),
        }
    }

    fn awaits_init(&self) -> bool {
        match &self.role {
            Role::Client(h) => h.awaits_init(),
            Role::Server(h) => h.awaits_init(),
        }
    }
}

fn handshake_line(engine: &Engine) -> usize {
    let l = &engine.opts.limits;
    l.max_handshake_line.min(l.max_line)
}

/// What the unauthenticated connections of one server hold in their line buffers, against
/// `max_unauthenticated_bytes`. Each connection charges its buffer's allocation as it grows
/// and gives it back when its handshake ends, however it ends.
pub(crate) struct HandshakeBudget<'a> {
    total: &'a AtomicUsize,
    max: usize,
    held: usize,
}

impl<'a> HandshakeBudget<'a> {
    pub(crate) fn new(total: &'a AtomicUsize, max: usize) -> Self {
        HandshakeBudget {
            total,
            max,
            held: 0,
        }
    }

    /// Charges `now` bytes held in all; fails when that takes the total past the maximum.
    fn hold(&mut self, now: usize) -> Result<()> {
        if now > self.held {
            let more = now - self.held;
            let before = self.total.fetch_add(more, Ordering::SeqCst);
            self.held = now;
            if before + more > self.max {
                crate::metrics::get().limit_hit(Limit::MaxUnauthenticatedBytes);
                return Err(Error::LimitExceeded(format!(
                    "unauthenticated connections would hold more than the {} byte limit \
                     (max_unauthenticated_bytes)",
                    self.max
                )));
            }
        } else {
            self.total.fetch_sub(self.held - now, Ordering::SeqCst);
            self.held = now;
        }
        Ok(())
    }
}

impl Drop for HandshakeBudget<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.held, Ordering::SeqCst);
    }
}

fn handshake_error(e: HandshakeError) -> Error {
    match e {
        HandshakeError::Protocol(_) => Error::Protocol(e.to_string()),
        _ => Error::Auth(e.to_string()),
    }
}

/// The connection's channel binding: see [`crate::tls::channel_binding`] (`None` unless TLS 1.3;
/// the v2 handshake then refuses instead of running unbound).
pub(crate) fn channel_binding<D>(conn: &rustls::ConnectionCommon<D>) -> Option<[u8; 32]> {
    crate::tls::channel_binding(conn)
}

/// Runs the handshake on an established TLS stream. Lines before the peer's proof are read
/// under the handshake's own small limit, then `lines` gets its own maximum back; a server
/// charges its buffer to `budget` meanwhile.
pub(crate) async fn handshake<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    lines: &mut LineBuffer,
    mut hs: Handshake,
    mut budget: Option<HandshakeBudget<'_>>,
) -> Result<Established> {
    let stream_max = lines.max();
    let result = async {
        if let Role::Client(c) = &hs.role {
            io.write_all(&c.hello()).await?;
            io.flush().await?;
        }
        loop {
            let max = if hs.awaits_init() {
                stream_max
            } else {
                hs.max_line.min(stream_max)
            };
            lines.set_max(max);
            let line = loop {
                match lines.next_line() {
                    Ok(Some(l)) => break l.to_vec(),
                    Ok(None) => {}
                    Err(e) if max < stream_max => {
                        crate::metrics::get().limit_hit(Limit::MaxHandshakeLine);
                        return Err(Error::LimitExceeded(format!(
                            "{e} before authentication (max_handshake_line)"
                        )));
                    }
                    Err(e) => {
                        crate::metrics::get().limit_hit(Limit::MaxLine);
                        return Err(Error::LimitExceeded(e.to_string()));
                    }
                }
                let n = match io.read(lines.read_buf(READ_MIN)).await {
                    Ok(n) => n,
                    // A peer that drops TLS without close_notify has closed all the same.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                    Err(e) => return Err(e.into()),
                };
                lines.filled(n);
                if let Some(b) = budget.as_mut() {
                    b.hold(lines.capacity())?;
                }
                if n == 0 {
                    return Err(match hs.role {
                        Role::Client(_) => Error::Auth(
                            "server closed the connection during authentication (wrong secret, \
                             or a cipher setting the server refuses?)"
                                .into(),
                        ),
                        Role::Server(_) => Error::Protocol(
                            "client closed the connection during the handshake".into(),
                        ),
                    });
                }
            };
            if line.is_empty() {
                continue;
            }
            match hs.on_line(&line).map_err(handshake_error)? {
                Step::Send(out) => {
                    io.write_all(&out).await?;
                    io.flush().await?;
                }
                Step::Refuse { send, error } => {
                    io.write_all(&send).await?;
                    io.flush().await?;
                    return Err(handshake_error(error));
                }
                Step::Done { send, established } => {
                    if let Some(out) = send {
                        io.write_all(&out).await?;
                        io.flush().await?;
                    }
                    return Ok(*established);
                }
            }
        }
    }
    .await;
    lines.set_max(stream_max);
    result
}

/// Serves an authenticated stream until it ends; returns why it ended.
///
/// Three tasks carry a stream: this one reads and delivers, the writer writes, and the timer
/// keeps the request deadlines and the dead-peer limit. Nothing the event consumer does can
/// hold up the timer, and the end of the stream (`peer.end()`, close, a dead peer) stops the
/// reader even while it waits for room in a full event queue.
///
/// Everything the stream logs, in these tasks, is inside a `connection` span that names the
/// peer (uuid, designation, address, session mode).
pub(crate) async fn serve<IO>(
    engine: Arc<Engine>,
    io: IO,
    lines: LineBuffer,
    est: Established,
    address: String,
) -> String
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let span = tracing::info_span!(
        "connection",
        peer = %est.peer.uuid,
        designation = est.peer.designation.as_deref().unwrap_or(""),
        address = %address,
        mode = est.mode.as_str(),
    );
    serve_stream(engine, io, lines, est, address)
        .instrument(span)
        .await
}

async fn serve_stream<IO>(
    engine: Arc<Engine>,
    io: IO,
    lines: LineBuffer,
    est: Established,
    address: String,
) -> String
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let outbox = Arc::new(Outbox::default());
    let queued = Arc::new(AtomicUsize::new(0));
    let shutdown = Arc::new(Shutdown::default());
    let peer = Peer(Arc::new(PeerInner {
        uuid: est.peer.uuid.clone(),
        address,
        designation: est.peer.designation.clone(),
        mac: est.peer.mac.clone(),
        cipher: est.cipher,
        mode: est.mode,
        shutdown: shutdown.clone(),
    }));
    let stream = Arc::new(Stream::new(
        peer.clone(),
        outbox.clone(),
        queued.clone(),
        &engine.opts,
    ));
    if est.mode == crate::protocol::Mode::Legacy && engine.opts.security.speaks_v2() {
        engine.warn_legacy_peer(&peer);
    }
    if let Err(error) = engine.register(stream.clone()) {
        let reason = error.to_string();
        tracing::warn!(peer = %peer.uuid(), address = %peer.address(), %reason, "stream refused");
        stream.close(reason.clone());
        drop(stream);
        // Close cleanly (TLS close_notify): the peer sees the end of the stream.
        let mut io = Box::pin(io);
        let _ = io.as_mut().shutdown().await;
        engine
            .emit(Event::Error {
                error,
                address: Some(peer.address().to_owned()),
            })
            .await;
        return reason;
    }
    let (rd, wr) = tokio::io::split(io);
    let writer = tokio::spawn(
        write_loop(wr, outbox, est.sealer, queued, shutdown.clone())
            .instrument(tracing::Span::current()),
    );
    let timer = tokio::spawn(
        run_timer(stream.clone(), engine.opts.limits.dead_peer_timeout)
            .instrument(tracing::Span::current()),
    );
    engine.announce_connect(&stream).await;
    engine.add_routes(&peer, &est.routes).await;

    let result = tokio::select! {
        biased;
        _ = shutdown.wait() => Ok(()),
        _ = engine.shutdown.wait() => Err("closed locally".to_owned()),
        r = read_loop(&engine, &stream, rd, lines, est.opener) => r,
    };
    // The reader may have been stopped in the middle of a pass.
    stream.out.release();
    let reason = match result {
        Ok(()) => stream.close_reason().unwrap_or_else(|| "closed".into()),
        Err(e) => e,
    };
    stream.close(reason.clone());
    let lost_routes = engine.unregister(&stream);
    stream.close_pending(engine.shutdown.is_triggered());
    let _ = writer.await;
    let _ = timer.await;
    if !reason.starts_with("closed") {
        tracing::info!(peer = %peer.uuid(), address = %peer.address(), %reason, "stream ended");
    }
    if !lost_routes.is_empty() {
        engine
            .emit(Event::Routes {
                peer: peer.clone(),
                online: Vec::new(),
                offline: lost_routes,
            })
            .await;
    }
    engine.announce_disconnect(&stream, reason.clone()).await;
    reason
}

async fn read_loop<R: AsyncRead + Unpin>(
    engine: &Arc<Engine>,
    stream: &Arc<Stream>,
    mut rd: R,
    mut lines: LineBuffer,
    mut opener: Opener,
) -> std::result::Result<(), String> {
    let mut plain = Vec::new();
    let mut room = READ_MIN;
    loop {
        // Lines already buffered first: the handshake may have read past its last line. What
        // the pass queues (answers, echoes) leaves in one write when it ends.
        stream.out.hold();
        let pass = async {
            let mut in_pass = 0usize;
            // Counted once per pass, not per line.
            let mut received = Received(0);
            loop {
                if in_pass == PASS_LINES {
                    // Let what this pass queued leave while the rest is worked through.
                    in_pass = 0;
                    stream.out.release();
                    tokio::task::yield_now().await;
                    stream.out.hold();
                }
                in_pass += 1;
                let line = match lines.next_line() {
                    Ok(Some(l)) => l,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        crate::metrics::get().limit_hit(Limit::MaxLine);
                        return Err(format!("limit exceeded: {e}"));
                    }
                };
                if line.is_empty() {
                    continue;
                }
                received.0 += 1;
                let parsed = opener
                    .open(line, &mut plain)
                    .map_err(|e| format!("protocol error: {e}"))?;
                let delivery = engine.deliver(stream, parsed);
                // Delivery that has to wait (a full event queue, a filter) must not hold
                // back the writer: release first.
                released_if_pending(delivery, &stream.out).await?;
            }
        };
        let passed = pass.await;
        stream.out.release();
        passed?;
        lines.shrink(room);
        let n = rd
            .read(lines.read_buf(room))
            .await
            .map_err(|e| format!("read error: {e}"))?;
        lines.filled(n);
        crate::metrics::get().received_bytes(n);
        // Grow while reads come back full; shrink back (and give the buffer back once it is
        // empty) when they come back small.
        room = if n == room {
            (room * 2).min(READ_MAX)
        } else if n < room / 4 && room > READ_MIN {
            (room / 2).max(READ_MIN)
        } else {
            room
        };
        if n == 0 {
            return Err("connection closed by peer".into());
        }
        stream.heard();
    }
}

/// Messages read in one pass, added to the counter when the pass ends however it ends.
struct Received(u64);

impl Drop for Received {
    fn drop(&mut self) {
        if self.0 > 0 {
            crate::metrics::get().received_messages(self.0);
        }
    }
}

/// Polls `fut` once; if it cannot finish at once, releases the writer before waiting for it.
async fn released_if_pending<F: std::future::Future>(fut: F, out: &Outbox) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await;
    match first {
        Some(v) => v,
        None => {
            out.release();
            let v = fut.await;
            out.hold();
            v
        }
    }
}

async fn write_loop<W: AsyncWrite>(
    wr: W,
    outbox: Arc<Outbox>,
    mut sealer: Sealer,
    queued: Arc<AtomicUsize>,
    shutdown: Arc<Shutdown>,
) {
    tokio::pin!(wr);
    // Both grow with the traffic; an idle stream keeps them empty.
    let mut batch: Vec<Arc<str>> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut more = false;
    let mut last_batch = 0;
    loop {
        let closing = if more {
            shutdown.is_triggered()
        } else {
            tokio::select! {
                biased;
                _ = outbox.ready() => false,
                _ = shutdown.wait() => true,
            }
        };
        if closing {
            batch.extend(outbox.close());
        } else {
            if !more && last_batch > 1 {
                // Busy (the last write carried several messages): let the tasks that are
                // ready now, such as callers woken by the answers just read, queue theirs
                // first so they share this write. A lone message (ping-pong) goes at once.
                tokio::task::yield_now().await;
            }
            more = outbox.take(&mut batch, WRITE_BATCH);
            last_batch = batch.len();
        }
        let mut bytes = 0;
        let mut sent = 0usize;
        let mut exhausted = false;
        for text in batch.drain(..) {
            bytes += text.len() + 1;
            if sealer.seal(&text, &mut buf).is_err() {
                // 2^64 - 1 records one way: end the session rather than reuse a nonce.
                tracing::warn!("record sequence exhausted; closing the stream");
                exhausted = true;
                break;
            }
            sent += 1;
        }
        if exhausted {
            shutdown.trigger();
        }
        if !buf.is_empty() {
            let flush_now = closing || (!more && outbox.is_empty());
            let write = async {
                wr.write_all(&buf).await?;
                if flush_now {
                    wr.flush().await?;
                }
                std::io::Result::Ok(())
            };
            tokio::pin!(write);
            // A write in progress when the stream closes still gets a short grace, so answers
            // queued just before a close reach the peer; a peer that stops reading cannot
            // hold the writer longer than that.
            let grace = std::time::Duration::from_secs(2);
            let ok = if closing {
                matches!(tokio::time::timeout(grace, &mut write).await, Ok(Ok(())))
            } else {
                tokio::select! {
                    r = &mut write => r.is_ok(),
                    // The next turn drains what was queued behind it, then stops.
                    _ = shutdown.wait() => {
                        matches!(tokio::time::timeout(grace, &mut write).await, Ok(Ok(())))
                    }
                }
            };
            crate::metrics::get().sent(buf.len(), sent);
            buf.clear();
            queued.fetch_sub(bytes, Ordering::Relaxed);
            if !ok {
                shutdown.trigger();
                outbox.close();
                break;
            }
        }
        if closing {
            break;
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), wr.shutdown()).await;
}
