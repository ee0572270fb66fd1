//! Call order against the real legacy package: a burst of events and requests from one of our
//! senders reaches a legacy peer in the order of the calls, both ways, cipher on and off.
//! Legacy writes each message in the call that makes it; we used to write requests from the
//! request future's first poll, so every event overtook them.

use std::time::Duration;

use iris_rpc::{Certificates, Client, Endpoint, Options, Reply, Server};
use iris_rpc_tests::{free_port, LegacyPeer};
use serde_json::{json, Value};

const N: u64 = 3000;

/// Sends `N` messages, every third a request (`seq`), the others events; returns the replies.
fn burst(rpc: &Endpoint, to: Option<&str>) -> Vec<Reply> {
    let mut replies = Vec::new();
    for n in 0..N {
        if n % 3 == 0 {
            let msg = json!({"op": "seq", "n": n});
            replies.push(match to {
                Some(u) => rpc.request_to(u, msg),
                None => rpc.request(msg),
            });
        } else {
            let msg = json!({"op": "e", "n": n});
            match to {
                Some(u) => rpc.dispatch_to(u, msg).unwrap(),
                None => {
                    rpc.dispatch(msg).unwrap();
                }
            }
        }
    }
    replies
}

async fn arrival_order(legacy: &mut LegacyPeer) -> Vec<u64> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < N as usize && tokio::time::Instant::now() < deadline {
        for m in legacy
            .collect_for("message", Duration::from_millis(200))
            .await
        {
            if let Some(n) = m["msg"]["n"].as_u64() {
                got.push(n);
            }
        }
    }
    got
}

fn assert_in_order(got: &[u64]) {
    assert_eq!(got.len(), N as usize, "not every message arrived");
    let first = got.iter().enumerate().find(|(i, n)| *i as u64 != **n);
    assert!(
        first.is_none(),
        "out of call order at (index, n) = {first:?}"
    );
}

async fn our_client_to_legacy_server(cipher: bool) {
    let port = free_port();
    let mut legacy = LegacyPeer::server(port, "secret", cipher, json!({})).await;
    let client = Client::connect(
        Options::new("secret")
            .address(format!("127.0.0.1:{port}"))
            .uuid("our-cli")
            .cipher(cipher),
    )
    .unwrap();
    client
        .wait_connected(Duration::from_secs(15))
        .await
        .unwrap();
    legacy.expect("connect", |_| true).await;
    let replies = burst(&client, None);
    let got = arrival_order(&mut legacy).await;
    for r in replies {
        assert_eq!(r.await.unwrap(), Value::Bool(true));
    }
    assert_in_order(&got);
    client.close().await;
    legacy.kill().await;
}

async fn our_server_to_legacy_client(cipher: bool) {
    let port = free_port();
    let server = Server::bind(
        Options::new("secret")
            .port(format!("127.0.0.1:{port}"))
            .uuid("our-srv")
            .cipher(cipher)
            .certificates(Certificates::self_signed().unwrap()),
    )
    .await
    .unwrap();
    let mut legacy =
        LegacyPeer::client(&format!("127.0.0.1:{port}"), "secret", cipher, json!({})).await;
    legacy.expect("connect", |_| true).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while server.peers().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let replies = burst(&server, Some("legacy-cli"));
    let got = arrival_order(&mut legacy).await;
    for r in replies {
        assert_eq!(r.await.unwrap(), Value::Bool(true));
    }
    assert_in_order(&got);
    server.close().await;
    legacy.kill().await;
}

#[tokio::test]
async fn our_client_keeps_call_order_to_a_legacy_server_cipher_on() {
    our_client_to_legacy_server(true).await;
}

#[tokio::test]
async fn our_client_keeps_call_order_to_a_legacy_server_cipher_off() {
    our_client_to_legacy_server(false).await;
}

#[tokio::test]
async fn our_server_keeps_call_order_to_a_legacy_client_cipher_on() {
    our_server_to_legacy_client(true).await;
}

#[tokio::test]
async fn our_server_keeps_call_order_to_a_legacy_client_cipher_off() {
    our_server_to_legacy_client(false).await;
}
