//! What one router adds: events per second and request latency, direct and through a router,
//! all on loopback in this process.
//!
//! ```sh
//! cargo run --release -p iris-rpc --example router_cost -- [EVENTS] [REQUESTS]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iris_rpc::{Backend, Certificates, Client, Options, Router, Server, Side};
use serde_json::json;

async fn measure(label: &str, client: &Client, received: &AtomicU64, events: u64, requests: usize) {
    let body = "x".repeat(40);
    let start_count = received.load(Ordering::Relaxed);
    let start = Instant::now();
    for n in 0..events {
        let mut sent = client.dispatch(json!({"op": "ev", "n": n, "b": body}));
        while sent.is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            sent = client.dispatch(json!({"op": "ev", "n": n, "b": body}));
        }
        if n % 4096 == 0 {
            tokio::task::yield_now().await;
        }
    }
    while received.load(Ordering::Relaxed) - start_count < events {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let _ = client.request(json!({"op": "echo"})).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_micros();
    println!(
        "| {label} | {:.0} | {} | {} |",
        events as f64 / secs,
        pct(0.50),
        pct(0.99)
    );
}

#[tokio::main]
async fn main() -> iris_rpc::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let events = args.first().copied().unwrap_or(200_000);
    let requests = args.get(1).copied().unwrap_or(5_000) as usize;
    let server = Server::bind(
        Options::new("s")
            .port("127.0.0.1:0")
            .uuid("server")
            .certificates(Certificates::self_signed()?),
    )
    .await?;
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    server.on("ev", move |_, _, _| {
        r.fetch_add(1, Ordering::Relaxed);
    });
    server.handle("echo", |_| async { Ok(json!("ok")) });
    let router = Router::start(
        Options::new("s")
            .port("127.0.0.1:0")
            .certificates(Certificates::self_signed()?),
        Backend::Client(Options::new("s").address(server.local_addr().to_string())),
    )
    .await?;
    while router.peers(Side::Backend).is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let direct = Client::connect(Options::new("s").address(server.local_addr().to_string()))?;
    let routed = Client::connect(Options::new("s").address(router.local_addr().to_string()))?;
    direct.wait_connected(Duration::from_secs(10)).await?;
    routed.wait_connected(Duration::from_secs(10)).await?;
    println!("| path | events/s (one-way, ~80 B) | request p50 us | request p99 us |");
    println!("|---|---|---|---|");
    measure("direct", &direct, &received, events, requests).await;
    measure("through one router", &routed, &received, events, requests).await;
    direct.close().await;
    routed.close().await;
    router.close().await;
    server.close().await;
    Ok(())
}
