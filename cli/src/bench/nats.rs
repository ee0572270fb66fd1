//! The NATS reference pairing (`nats-nats`): the same workloads through a local `nats-server`
//! with the `async-nats` client, TLS on, so the table shows what a user would get from the
//! system they might pick instead.
//!
//! - `bench nats-serve` takes the server side's arguments (`--port`, `--auth`, `--key`,
//!   `--cert`), starts `nats-server` with TLS from that key and certificate and the shared
//!   secret as its token, connects to it, and serves the contract's subjects on one
//!   subscription to `bench.>` (so they are handled in arrival order): `bench.start` (its
//!   reply subject gets the acknowledgements), `bench.ev` (counted; every K-th is acknowledged
//!   with `bench.ack`), `bench.end` (answered with `bench.done`) and `bench.echo` requests
//!   (answered with `{"ok":true}`). Its ready line gives `nats-server`'s port and pid.
//! - `bench nats-client` takes the client side's arguments and runs the same `events`,
//!   `requests` and `openloop` workloads with the same measurement code as the Rust client:
//!   events are plain publications with the same credit window, requests are NATS
//!   request/reply (a reply subject per request on the client's shared inbox).
//!
//! NATS has no second cipher layer (`--no-cipher` changes nothing) and no idle workload here.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::ConnectOptions;
use futures_util::StreamExt;
use iris_rpc::Error;
use serde_json::{json, Value};

use super::{
    bench_error, closed_loop, event_window, find_program, paced, padded_body, print_line,
    send_events, stdin_closed, ClientArgs, Flow, ServeArgs, SideCommon, Workload,
};

/// Kills `nats-server` when the side ends, however it ends.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats_error(what: &str, e: impl std::fmt::Display) -> Error {
    bench_error(format!("NATS {what}: {e}"))
}

/// Connects to the broker at `host:port` over TLS, trusting the bench's certificate, with the
/// shared secret as the token.
async fn connect(common: &SideCommon, address: &str) -> Result<async_nats::Client, Error> {
    let cert = common
        .cert
        .clone()
        .ok_or_else(|| bench_error("the NATS sides need --key and --cert (TLS is always on)"))?;
    ConnectOptions::new()
        .token(common.auth.clone())
        .add_root_certificates(cert)
        .require_tls(true)
        // The server side takes up to a whole credit window of events at once.
        .subscription_capacity(1 << 18)
        .connection_timeout(Duration::from_secs(5))
        .connect(format!("tls://{address}"))
        .await
        .map_err(|e| nats_error("connect", e))
}

/// `bench nats-serve`.
pub(super) async fn serve(a: ServeArgs) -> Result<(), Error> {
    if a.via_router {
        return Err(bench_error("nats-serve has no --via-router"));
    }
    let program = find_program("nats-server").ok_or_else(|| {
        bench_error("nats-server is not installed (tests/cluster/nats-server.sh installs it)")
    })?;
    let (Some(key), Some(cert)) = (a.common.key.clone(), a.common.cert.clone()) else {
        return Err(bench_error(
            "nats-serve needs --key and --cert (TLS is always on)",
        ));
    };
    let (host, port) = a
        .port
        .rsplit_once(':')
        .ok_or_else(|| bench_error(format!("--port {}: want host:port", a.port)))?;
    let mut port: u16 = port
        .parse()
        .map_err(|e| bench_error(format!("--port {}: {e}", a.port)))?;
    if port == 0 {
        // nats-server does not print the port it picked where we can read it: take a free one.
        port = std::net::TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| bench_error(format!("cannot find a free port on {host}: {e}")))?
            .port();
    }
    let child = Command::new(&program)
        .args(["-a", host, "-p", &port.to_string()])
        .arg("--tls")
        .arg("--tlscert")
        .arg(&cert)
        .arg("--tlskey")
        .arg(&key)
        .args(["--auth", &a.common.auth])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| bench_error(format!("cannot start {}: {e}", program.display())))?;
    let broker = Broker(child);
    let address = format!("{host}:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let nc = loop {
        match connect(&a.common, &address).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let sub = nc
        .subscribe("bench.>")
        .await
        .map_err(|e| nats_error("subscribe", e))?;
    nc.flush().await.map_err(|e| nats_error("flush", e))?;
    print_line(&json!({"ready": true, "port": port, "pid": broker.0.id()}));
    tokio::select! {
        _ = stdin_closed() => Ok(()),
        r = answer(nc, sub) => r,
    }
}

/// The server side's one subscription, handled in arrival order.
async fn answer(nc: async_nats::Client, mut sub: async_nats::Subscriber) -> Result<(), Error> {
    let (mut n, mut every, mut ack_to) = (0u64, u64::MAX, None);
    while let Some(m) = sub.next().await {
        let answer = match m.subject.as_str() {
            "bench.ev" => {
                n += 1;
                match &ack_to {
                    Some(to) if n % every == 0 => Some((to, json!({"op": "bench.ack", "n": n}))),
                    _ => None,
                }
            }
            "bench.start" => {
                let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                every = v["ack"].as_u64().unwrap_or(u64::MAX).max(1);
                n = 0;
                ack_to = m.reply.clone();
                None
            }
            "bench.end" => m
                .reply
                .as_ref()
                .map(|to| (to, json!({"op": "bench.done", "n": n}))),
            "bench.echo" => m.reply.as_ref().map(|to| (to, json!({"ok": true}))),
            _ => None,
        };
        if let Some((to, v)) = answer {
            nc.publish(to.clone(), v.to_string().into())
                .await
                .map_err(|e| nats_error("publish", e))?;
        }
    }
    Err(bench_error("the NATS subscription ended"))
}

/// `bench nats-client`.
pub(super) async fn client(a: ClientArgs) -> Result<(), Error> {
    let nc = connect(&a.common, &a.address).await?;
    let duration = Duration::from_secs_f64(a.duration.clamp(0.01, 600.0));
    let request = || {
        let (nc, body) = (nc.clone(), padded_body("bench.echo", 64, None));
        move || {
            let (nc, body) = (nc.clone(), body.clone());
            async move { nc.request("bench.echo", body.into()).await }
        }
    };
    let result = match a.workload {
        Workload::Events => events(&nc, a.size.max(16), duration).await?,
        Workload::Requests => closed_loop(a.inflight.max(1), duration, request()).await?,
        Workload::Openloop => paced(a.rate.max(1.0), duration, request()).await?,
        Workload::Idle => return Err(bench_error("the NATS sides have no idle workload")),
    };
    nc.flush().await.map_err(|e| nats_error("flush", e))?;
    print_line(&json!({ "result": result }));
    Ok(())
}

async fn events(nc: &async_nats::Client, size: usize, duration: Duration) -> Result<Value, Error> {
    let window = event_window(size);
    let flow = Arc::new(Flow::default());
    let inbox = nc.new_inbox();
    let mut sub = nc
        .subscribe(inbox.clone())
        .await
        .map_err(|e| nats_error("subscribe", e))?;
    let f = flow.clone();
    let listener = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            let n = v["n"].as_u64().unwrap_or(0);
            match v["op"].as_str() {
                Some("bench.ack") => f.acked(n),
                Some("bench.done") => f.done(n),
                _ => {}
            }
        }
    });
    let start = json!({"op": "bench.start", "ack": (window / 4).max(1)}).to_string();
    nc.publish_with_reply("bench.start", inbox.clone(), start.into())
        .await
        .map_err(|e| nats_error("publish", e))?;
    let body: bytes::Bytes = padded_body("bench.ev", size, None).into();
    let r = send_events(
        &flow,
        window,
        size,
        duration,
        || {
            let body = body.clone();
            async move {
                nc.publish("bench.ev", body)
                    .await
                    .map_err(|e| nats_error("publish", e))
            }
        },
        |sent| {
            let end = json!({"op": "bench.end", "sent": sent}).to_string();
            let inbox = inbox.clone();
            async move {
                nc.publish_with_reply("bench.end", inbox, end.into())
                    .await
                    .map_err(|e| nats_error("publish", e))
            }
        },
    )
    .await;
    listener.abort();
    r
}

/// Where a program named `name` is: on `PATH`, else in the system directories that are often
/// left out of a user's `PATH` (Debian puts `nats-server` in `/usr/sbin`).
pub(super) fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
