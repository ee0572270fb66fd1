//! The ping-pong floor of this machine, without iris-rpc: one 64-byte line sent and echoed over
//! loopback, first over plain TCP, then over TLS (rustls, as iris-rpc uses it), each echo
//! server in a process of its own (on tokio's multi-thread runtime, as `bench serve`), the
//! client on each of tokio's runtimes in turn (multi-thread, then current-thread, as `bench
//! client --runtime`). It shows how much of a request's round trip the kernel, TLS and the
//! runtime take before the protocol adds anything.
//!
//! ```text
//! cargo run --release -p iris-rpc --example pingpong_floor -- [ROUNDS]
//! ```

use std::sync::Arc;
use std::time::Instant;

use iris_rpc::Certificates;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: S) {
    let (r, mut w) = tokio::io::split(s);
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(mut l)) = lines.next_line().await {
        l.push('\n');
        if w.write_all(l.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn rounds<S: AsyncRead + AsyncWrite + Unpin>(s: S, n: usize) -> Vec<f64> {
    let (r, mut w) = tokio::io::split(s);
    let mut lines = BufReader::new(r).lines();
    let line = format!("{}\n", "x".repeat(63));
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        if w.write_all(line.as_bytes()).await.is_err() {
            break;
        }
        match lines.next_line().await {
            Ok(Some(_)) => out.push(t.elapsed().as_secs_f64() * 1e6),
            _ => break,
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

fn p50(v: &[f64]) -> f64 {
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn serve(tls: bool) -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        let acceptor = tls
            .then(|| {
                let certs = Certificates::self_signed().ok()?;
                iris_rpc::tls::server_config(&certs, false).ok()
            })
            .flatten()
            .map(tokio_rustls::TlsAcceptor::from);
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        match acceptor {
            Some(a) => echo(a.accept(tcp).await?).await,
            None => echo(tcp).await,
        }
        Ok(())
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(mode) = args.get(1).and_then(|a| a.strip_prefix("--serve-")) {
        return serve(mode == "tls");
    }
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    for (flavor, tls) in [
        ("multi-thread", false),
        ("multi-thread", true),
        ("current-thread", false),
        ("current-thread", true),
    ] {
        let rt = if flavor == "current-thread" {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Runtime::new()?
        };
        let mut child = std::process::Command::new(&args[0])
            .arg(if tls { "--serve-tls" } else { "--serve-tcp" })
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut port = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut port)?;
        }
        let port: u16 = port.trim().parse()?;
        let times = rt.block_on(async move {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
            tcp.set_nodelay(true)?;
            let v = if tls {
                let config = iris_rpc::tls::client_config(None, false)?;
                let name = iris_rpc::tls::server_name("localhost")?;
                let s = tokio_rustls::TlsConnector::from(Arc::clone(&config))
                    .connect(name, tcp)
                    .await?;
                rounds(s, n).await
            } else {
                rounds(tcp, n).await
            };
            Ok::<_, Box<dyn std::error::Error>>(v)
        })?;
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "{}, client on the {flavor} runtime: {} round trips of a 64-byte line, p50 {:.1} us, p99 {:.1} us",
            if tls { "TLS (rustls)" } else { "plain TCP" },
            times.len(),
            p50(&times),
            times
                .get(times.len() * 99 / 100)
                .copied()
                .unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
