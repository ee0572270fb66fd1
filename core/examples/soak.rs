//! Soak: many clients exchange events and requests with one server for a long time, and the
//! process reports memory, file descriptors and pending requests over time.
//!
//! ```sh
//! cargo run --release -p iris-rpc --example soak -- [CONNECTIONS] [SECONDS] [REPORT_EVERY_S]
//! ```
//! Defaults: 2,000 connections, 600 s, a report every 30 s. Not part of the test suite.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iris_rpc::{Certificates, Client, Options, Server};
use serde_json::json;

fn status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> iris_rpc::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let connections = args.first().copied().unwrap_or(2000) as usize;
    let seconds = args.get(1).copied().unwrap_or(600);
    let every = args.get(2).copied().unwrap_or(30);

    let server = Server::bind(
        Options::new("soak")
            .port("127.0.0.1:0")
            .certificates(Certificates::self_signed()?),
    )
    .await?;
    let events = Arc::new(AtomicU64::new(0));
    let e = events.clone();
    server.on("tick", move |_, _, _| {
        e.fetch_add(1, Ordering::Relaxed);
    });
    server.handle("echo", |req| async move { Ok(req.msg.value()) });
    let addr = server.local_addr().to_string();

    let mut clients = Vec::with_capacity(connections);
    for i in 0..connections {
        let c = Client::connect(
            Options::new("soak")
                .address(addr.clone())
                .uuid(format!("c{i}")),
        )?;
        clients.push(Arc::new(c));
    }
    for c in &clients {
        c.wait_connected(Duration::from_secs(60)).await?;
    }
    println!("{connections} clients connected; running {seconds} s");
    println!("t_s,rss_kib,fds,streams,pending,queued_bytes,events,requests,errors");

    let answered = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, a, err) = (c.clone(), answered.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            // Spread the load: each client acts once a second, offset by its index.
            tokio::time::sleep(Duration::from_millis(
                (i as u64 * 1000) / connections as u64,
            ))
            .await;
            let mut n = 0u64;
            while Instant::now() < stop {
                n += 1;
                if c.dispatch(json!({"op": "tick", "n": n})).is_err() {
                    err.fetch_add(1, Ordering::Relaxed);
                }
                match c.request(json!({"op": "echo", "n": n})).await {
                    Ok(_) => a.fetch_add(1, Ordering::Relaxed),
                    Err(_) => err.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    let start = Instant::now();
    loop {
        let s = server.stats();
        println!(
            "{},{},{},{},{},{},{},{},{}",
            start.elapsed().as_secs(),
            status("VmRSS:"),
            fds(),
            s.streams,
            s.pending,
            s.queued_bytes,
            events.load(Ordering::Relaxed),
            answered.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed)
        );
        if Instant::now() >= stop {
            break;
        }
        tokio::time::sleep(Duration::from_secs(every).min(stop - Instant::now())).await;
    }
    for w in workers {
        let _ = w.await;
    }
    for c in &clients {
        c.close().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = server.stats();
    println!(
        "after close: rss {} KiB, fds {}, streams {}, pending {}, peak rss {} KiB",
        status("VmRSS:"),
        fds(),
        s.streams,
        s.pending,
        status("VmHWM:")
    );
    server.close().await;
    Ok(())
}
