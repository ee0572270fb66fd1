//! The open-loop latency floor of this machine, without iris-rpc: 64-byte lines sent at a fixed
//! rate over one loopback connection and echoed, over TLS (rustls, as iris-rpc uses it) and over
//! plain TCP. The echo server runs in a process of its own (tokio's multi-thread runtime, as
//! `bench serve`); the client is paced the way `bench client --workload openloop` is (a pacer
//! thread hands the due sends to one task on a current-thread runtime, all that is due goes out in
//! one write) and measures each echo from its intended send time, so a late send counts. What
//! this shows at a rate is what the kernel, TLS, the runtime and the machine's scheduling cost
//! before any protocol adds anything: no iris-rpc pairing can have a lower p99 here.
//!
//! ```text
//! cargo run --release -p iris-rpc --example openloop_floor -- [SECONDS] [RATE ...]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use iris_rpc::Certificates;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: S) {
    let (r, mut w) = tokio::io::split(s);
    let mut r = BufReader::new(r);
    let mut out = Vec::new();
    loop {
        // Echo whole lines, all that has arrived in one write (as a server that answers what
        // it has read before reading more).
        let buf = match r.fill_buf().await {
            Ok([]) | Err(_) => return,
            Ok(b) => b,
        };
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            let n = buf.len();
            out.extend_from_slice(buf);
            r.consume(n);
            continue;
        };
        out.extend_from_slice(&buf[..=end]);
        r.consume(end + 1);
        if w.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

fn serve(tls: bool) -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        let acceptor = if tls {
            let certs = Certificates::self_signed()?;
            Some(tokio_rustls::TlsAcceptor::from(
                iris_rpc::tls::server_config(&certs, false)?,
            ))
        } else {
            None
        };
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        match acceptor {
            Some(a) => echo(a.accept(tcp).await?).await,
            None => echo(tcp).await,
        }
        Ok(())
    })
}

/// What follows a line's 16-digit index: 47 bytes of padding and the newline (64 bytes in all).
const PAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n";

/// At most this many lines per run: the latencies are kept in memory (8 bytes each).
const MAX_LINES: f64 = 50_000_000.0;

/// Sends `rate` lines a second for `secs` seconds and returns each echo's latency from its
/// intended send time, in µs, sorted.
async fn paced<S>(s: S, rate: f64, secs: f64) -> Result<Vec<f64>, Box<dyn std::error::Error>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let total = (rate * secs).round().max(1.0) as u64;
    let interval = 1e9 / rate;
    let start = Instant::now();
    let at = move |i: u64| start + Duration::from_nanos((i as f64 * interval) as u64);
    let (tx, mut due) = tokio::sync::mpsc::unbounded_channel::<std::ops::Range<u64>>();
    let pacer = std::thread::spawn(move || {
        let mut i = 0u64;
        while i < total {
            let now = Instant::now();
            if at(i) > now {
                std::thread::sleep(at(i) - now);
            }
            let now = Instant::now();
            let first = i;
            while i < total && at(i) <= now {
                i += 1;
            }
            if tx.send(first..i).is_err() {
                break;
            }
        }
    });
    let (r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        use std::io::Write as _;
        let mut buf = Vec::new();
        while let Some(range) = due.recv().await {
            buf.clear();
            for i in range {
                // 16 hex digits of the index, padding to 63 bytes, a newline: no allocation
                // per line, so the floor is the machine's and not this loop's.
                write!(buf, "{i:016x}{PAD}")?;
            }
            w.write_all(&buf).await?;
        }
        Ok::<_, std::io::Error>(w)
    });
    let mut lines = BufReader::new(r).lines();
    let mut out = Vec::with_capacity(total as usize);
    while (out.len() as u64) < total {
        let Some(line) = lines.next_line().await? else {
            return Err("the echo server closed the connection".into());
        };
        let i = line
            .get(..16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or("a line without its index")?;
        out.push(at(i).elapsed().as_secs_f64() * 1e6);
    }
    drop(writer.await??);
    pacer.join().map_err(|_| "the pacer thread panicked")?;
    out.sort_by(f64::total_cmp);
    Ok(out)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(mode) = args.get(1).and_then(|a| a.strip_prefix("--serve-")) {
        return serve(mode == "tls");
    }
    let secs: f64 = match args.get(1) {
        None => 5.0,
        Some(a) => a
            .parse()
            .map_err(|_| format!("SECONDS: not a number: {a}"))?,
    };
    let mut rates = Vec::new();
    for a in args.iter().skip(2) {
        rates.push(
            a.parse::<f64>()
                .map_err(|_| format!("RATE: not a number: {a}"))?,
        );
    }
    if rates.is_empty() {
        rates = vec![5_000.0, 50_000.0, 100_000.0];
    }
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("SECONDS must be in (0, 3600], not {secs}").into());
    }
    if let Some(r) = rates
        .iter()
        .find(|r| !(**r >= 1.0 && **r * secs <= MAX_LINES))
    {
        return Err(format!(
            "RATE {r}: at least 1 line/s and at most {MAX_LINES} lines per run ({secs} s)"
        )
        .into());
    }
    for tls in [true, false] {
        for &rate in &rates {
            let mut child = std::process::Command::new(&args[0])
                .arg(if tls { "--serve-tls" } else { "--serve-tcp" })
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            let mut port = String::new();
            if let Some(out) = child.stdout.take() {
                std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut port)?;
            }
            let port: u16 = port.trim().parse()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let times = rt.block_on(async move {
                let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
                tcp.set_nodelay(true)?;
                if tls {
                    let config = iris_rpc::tls::client_config(None, false)?;
                    let name = iris_rpc::tls::server_name("localhost")?;
                    let s = tokio_rustls::TlsConnector::from(Arc::clone(&config))
                        .connect(name, tcp)
                        .await?;
                    paced(s, rate, secs).await
                } else {
                    paced(tcp, rate, secs).await
                }
            })?;
            let _ = child.kill();
            let _ = child.wait();
            println!(
                "{}, {rate:.0} lines/s for {secs} s, one connection: {} echoes, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
                if tls { "TLS (rustls)" } else { "plain TCP" },
                times.len(),
                quantile(&times, 0.5),
                quantile(&times, 0.99),
                quantile(&times, 0.999),
                times.last().copied().unwrap_or(f64::NAN),
            );
        }
    }
    Ok(())
}
