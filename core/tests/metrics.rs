//! `iris_rpc::metrics::text()` from Rust: what one server and client in this process do shows
//! in the counters. One test in this binary, so no other test adds to the process's counters
//! meanwhile.

use std::time::Duration;

use iris_rpc::{Certificates, Client, Error, Message, Options, Server};
use serde_json::json;

const SECRET: &str = "metrics-test-secret-0123456789abcdef0123456789abcdef";

/// The value of the series `name` (with its labels, as written), 0 when absent.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn requests_handshakes_and_limits_are_counted() {
    let before = iris_rpc::metrics::text();
    let server = Server::bind(
        Options::new(SECRET)
            .port("127.0.0.1:0")
            .certificates(Certificates::self_signed().unwrap()),
    )
    .await
    .unwrap();
    server.handle("add", |req| async move {
        let v = req.msg.value();
        Ok(json!(v["a"].as_i64().unwrap_or(0) + 1))
    });
    server.handle("fail", |_| async { Err(json!("no")) });
    server.handle("hang", |_| std::future::pending());
    let address = server.local_addr().to_string();
    let client = Client::connect(Options::new(SECRET).address(address.clone())).unwrap();
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();

    for a in 0..3 {
        client.request(json!({"op": "add", "a": a})).await.unwrap();
    }
    assert!(matches!(
        client.request(json!({"op": "fail"})).await,
        Err(Error::Remote(_))
    ));
    let hang = Message::new(&json!({"op": "hang"})).unwrap();
    let r = client
        .request_raw_timeout(None, &hang, Duration::from_millis(100))
        .await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");

    // A wrong secret: the server counts a failed handshake (auth).
    let wrong = Client::connect(Options::new("not the secret").address(address)).unwrap();
    assert!(wrong.wait_connected(Duration::from_secs(10)).await.is_err());
    wrong.close().await;

    let after = iris_rpc::metrics::text();
    let delta = |name: &str| series(&after, name) - series(&before, name);
    assert_eq!(
        delta("iris_rpc_requests_total{outcome=\"answered\"}"),
        3.0,
        "{after}"
    );
    assert_eq!(
        delta("iris_rpc_requests_total{outcome=\"remote_error\"}"),
        1.0
    );
    assert_eq!(delta("iris_rpc_requests_total{outcome=\"timeout\"}"), 1.0);
    assert_eq!(delta("iris_rpc_request_duration_seconds_count"), 5.0);
    assert_eq!(
        delta(
            "iris_rpc_handshakes_total{side=\"server\",outcome=\"ok\",mode=\"v2\",reason=\"none\"}"
        ),
        1.0
    );
    assert!(
        delta("iris_rpc_handshakes_total{side=\"server\",outcome=\"failed\",mode=\"unknown\",reason=\"auth\"}")
            >= 1.0,
        "{after}"
    );
    // 5 requests and 4 answers (the timed-out one gets none); pings may add.
    assert!(delta("iris_rpc_messages_sent_total") >= 9.0, "{after}");
    assert!(delta("iris_rpc_messages_received_total") >= 9.0, "{after}");
    assert!(delta("iris_rpc_received_bytes_total") > 0.0);
    // Gauges sum over the live instances: both ends of the one stream.
    assert_eq!(series(&after, "iris_rpc_streams"), 2.0, "{after}");
    assert_eq!(series(&after, "iris_rpc_pending_requests"), 0.0, "{after}");

    client.close().await;
    server.close().await;
    drop((client, server));
    let closed = iris_rpc::metrics::text();
    assert_eq!(series(&closed, "iris_rpc_streams"), 0.0, "{closed}");
    assert_eq!(series(&closed, "iris_rpc_connections"), 0.0, "{closed}");
}
