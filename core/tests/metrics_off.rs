//! `iris_rpc::metrics::set_enabled(false)` (what `iris-rpc bench --metrics off` measures
//! against): nothing is counted while it is off, and counting goes on when it is back on. One
//! test in this binary: the switch is process-wide.

mod common;

use iris_rpc::{Client, Options};
use serde_json::json;

/// The value of the series `name` (with its labels, as written), 0 when absent.
fn series(name: &str) -> f64 {
    iris_rpc::metrics::text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

const COUNTED: [&str; 5] = [
    "iris_rpc_requests_total{outcome=\"answered\"}",
    "iris_rpc_request_duration_seconds_count",
    "iris_rpc_messages_sent_total",
    "iris_rpc_messages_received_total",
    "iris_rpc_sent_bytes_total",
];

fn counted() -> Vec<f64> {
    COUNTED.iter().map(|n| series(n)).collect()
}

#[tokio::test]
async fn nothing_is_counted_while_metrics_are_off() {
    assert!(iris_rpc::metrics::enabled(), "on by default");
    let server = common::server(common::server_options()).await;
    let client =
        Client::connect(Options::new(common::SECRET).address(server.local_addr().to_string()))
            .unwrap();
    client
        .wait_connected(std::time::Duration::from_secs(15))
        .await
        .unwrap();
    client.request(json!({"op": "echo"})).await.unwrap();
    assert!(counted().iter().all(|v| *v > 0.0), "{:?}", counted());

    iris_rpc::metrics::set_enabled(false);
    // A writer may still be counting the last answer it wrote: read once that is done.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let on = counted();
    for _ in 0..3 {
        client.request(json!({"op": "echo"})).await.unwrap();
    }
    assert_eq!(counted(), on, "counted while off");

    iris_rpc::metrics::set_enabled(true);
    client.request(json!({"op": "echo"})).await.unwrap();
    let again = counted();
    assert_eq!(again[0], on[0] + 1.0);
    assert_eq!(again[1], on[1] + 1.0);
    assert!(again[2] > on[2] && again[3] > on[3] && again[4] > on[4]);
    client.close().await;
    server.close().await;
}
