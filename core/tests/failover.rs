//! `Options::failover`: one stream over several addresses, which moves to the next when the
//! one it is on fails or ends, beside `address` (a stream per address, legacy's meaning).

use std::time::Duration;

use iris_rpc::{Certificates, Client, Options, Server};

async fn server(port: u16, uuid: &str) -> Server {
    Server::bind(
        Options::new("secret")
            .port(format!("127.0.0.1:{port}"))
            .uuid(uuid)
            .certificates(Certificates::self_signed().unwrap()),
    )
    .await
    .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

async fn until(what: &str, f: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(15), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn on(c: &Client) -> Vec<String> {
    c.peers().iter().map(|p| p.uuid().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_moves_to_the_next_address() {
    let (dead, p1, p2) = (free_port(), free_port(), free_port());
    let s1 = server(p1, "s1").await;
    let s2 = server(p2, "s2").await;
    let mut o = Options::new("secret")
        .failover(format!("127.0.0.1:{dead}"))
        .failover(format!("127.0.0.1:{p1}"))
        .failover(format!("127.0.0.1:{p2}"));
    o.reconnect_initial = Duration::from_millis(50);
    o.reconnect_max = Duration::from_millis(50);
    let c = Client::connect(o).unwrap();
    // The first address refuses: the stream goes on to the next, and only one is up.
    until("the stream on s1", || on(&c) == ["s1"]).await;
    assert!(s2.peers().is_empty(), "one stream, not one per address");
    // Its server goes: it comes back on the next one that is up.
    s1.close().await;
    until("the stream on s2", || on(&c) == ["s2"]).await;
    c.close().await;
    s2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_keeps_a_stream_per_address_beside_failover() {
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let (s1, s2, s3) = (
        server(p1, "s1").await,
        server(p2, "s2").await,
        server(p3, "s3").await,
    );
    let c = Client::connect(
        Options::new("secret")
            .address(format!("127.0.0.1:{p1}"))
            .address(format!("127.0.0.1:{p2}"))
            .failover(format!("127.0.0.1:{p3}")),
    )
    .unwrap();
    until("three streams", || {
        let mut u = on(&c);
        u.sort();
        u == ["s1", "s2", "s3"]
    })
    .await;
    c.close().await;
    for s in [s1, s2, s3] {
        s.close().await;
    }
}
