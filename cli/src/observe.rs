//! What an operator watches: `--metrics HOST:PORT` (the Prometheus text format over HTTP) and
//! the log output (`--log-format`, `IRIS_RPC_LOG` or `RUST_LOG` filters, colour only on a
//! terminal).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use iris_rpc::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `--metrics` (shared by server, client and router).
#[derive(Args, Clone, Copy, Debug)]
pub(crate) struct MetricsArgs {
    /// Serve the process's metrics in the Prometheus text format at http://HOST:PORT/metrics
    /// (port 0 picks a free one; the address is printed as a `metrics` event).
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Starts the endpoint if asked for, printing where it listens.
    pub(crate) async fn start(self) -> Result<(), Error> {
        if let Some(addr) = self.metrics {
            let local = serve(addr).await?;
            crate::print_json(
                &serde_json::json!({"event": "metrics", "address": local.to_string()}),
            );
        }
        Ok(())
    }
}

/// The longest request head read (a scraper's is a few hundred bytes).
const MAX_HEAD: usize = 8 * 1024;
/// How long a scraper has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Listens on `addr` and answers `GET /metrics` (and `/`) with [`iris_rpc::metrics::text`].
pub(crate) async fn serve(addr: SocketAddr) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen for --metrics on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    tokio::spawn(answer(sock));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(local)
}

async fn answer(mut sock: TcpStream) {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut sock)).await {
        Ok(Some(h)) => h,
        _ => return,
    };
    let (status, ctype, body) = match route(&head) {
        Route::Metrics => (
            "200 OK",
            iris_rpc::metrics::CONTENT_TYPE,
            iris_rpc::metrics::text(),
        ),
        Route::NotFound => ("404 Not Found", "text/plain", "try /metrics\n".to_owned()),
        Route::BadMethod => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(reply.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// Reads up to the end of the request head; `None` if it does not come within [`MAX_HEAD`].
async fn read_head(sock: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return String::from_utf8(buf).ok();
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadMethod,
}

fn route(head: &str) -> Route {
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return Route::BadMethod;
    }
    match path {
        "/metrics" | "/" => Route::Metrics,
        _ => Route::NotFound,
    }
}

/// `--log-format`.
#[derive(ValueEnum, Clone, Copy, Debug, Default)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (fields, spans and the message).
    Json,
}

/// Whether log lines on stderr get ANSI colour: only on a terminal, and never with `NO_COLOR`
/// set (<https://no-color.org>).
pub(crate) fn log_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the log subscriber on stderr: `IRIS_RPC_LOG`, else `RUST_LOG`, filters
/// (`warn` when neither is set), in `format`; with feature `otel` and `IRIS_RPC_TRACES`, the
/// trace exporter beside it (`traces.rs`). `Err` for an exporter it does not know.
pub(crate) fn init_logs(format: LogFormat) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IRIS_RPC_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    #[cfg(feature = "otel")]
    if let Some(traces) = crate::traces::layer()? {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let logs = match format {
            LogFormat::Text => logs.with_ansi(log_colour()).boxed(),
            LogFormat::Json => logs
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .boxed(),
        };
        tracing_subscriber::registry()
            .with(traces)
            .with(logs.with_filter(filter))
            .init();
        return Ok(());
    }
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(log_colour()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route("GET /metrics HTTP/1.1\r\n\r\n"), Route::Metrics);
        assert_eq!(route("GET /metrics?x=1 HTTP/1.1\r\n\r\n"), Route::Metrics);
        assert_eq!(route("GET /other HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(""), Route::BadMethod);
    }
}
