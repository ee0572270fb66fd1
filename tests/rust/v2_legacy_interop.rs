//! The `security` policies against the real legacy package (npm `iris-rpc` 0.2.20), both
//! directions, cipher on and off: `legacy` and `prefer-v2` talk to it in the legacy protocol,
//! `require-v2` refuses it with a clear error and never connects.

use std::time::Duration;

use iris_rpc::{Certificates, Client, Event, Mode, Options, Security, Server};
use iris_rpc_tests::{free_port, next_matching, LegacyPeer};
use serde_json::json;

fn client_opts(port: u16, cipher: bool, security: Security) -> Options {
    let mut o = Options::new("secret")
        .address(format!("127.0.0.1:{port}"))
        .uuid("our-cli")
        .cipher(cipher)
        .security(security);
    o.reconnect_initial = Duration::from_millis(200);
    o.reconnect_max = Duration::from_millis(500);
    o
}

async fn our_server(port: u16, cipher: bool, security: Security) -> Server {
    let s = Server::bind(
        Options::new("secret")
            .port(format!("127.0.0.1:{port}"))
            .uuid("our-srv")
            .cipher(cipher)
            .security(security)
            .certificates(Certificates::self_signed().unwrap()),
    )
    .await
    .unwrap();
    s.handle("add", |req| async move {
        let v = req.msg.value();
        Ok(json!({"sum": v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0)}))
    });
    s
}

async fn our_client_to_legacy(cipher: bool, security: Security) {
    let what = format!("our client ({security}) to legacy server, cipher {cipher}");
    let port = free_port();
    let mut legacy = LegacyPeer::server(port, "secret", cipher, json!({})).await;
    let client = Client::connect(client_opts(port, cipher, security)).unwrap();
    let mut ev = client.events();
    if security == Security::RequireV2 {
        let Event::Error { error, .. } =
            next_matching(&mut ev, |e| matches!(e, Event::Error { .. })).await
        else {
            unreachable!()
        };
        assert!(error.to_string().contains("require-v2"), "{what}: {error}");
        assert!(
            legacy
                .collect_for("connect", Duration::from_millis(500))
                .await
                .is_empty(),
            "{what}"
        );
        assert!(!client.is_connected(), "{what}");
    } else {
        let Event::Connect { peer } =
            next_matching(&mut ev, |e| matches!(e, Event::Connect { .. })).await
        else {
            unreachable!()
        };
        assert_eq!(peer.mode(), Mode::Legacy, "{what}");
        assert_eq!(peer.cipher(), cipher, "{what}");
        legacy.expect("connect", |v| v["uuid"] == "our-cli").await;
        let r = client.request(json!({"op": "add", "a": 2, "b": 3})).await;
        assert_eq!(r.unwrap(), json!({"sum": 5}), "{what}");
    }
    client.close().await;
    legacy.kill().await;
}

async fn legacy_client_to_us(cipher: bool, security: Security) {
    let what = format!("legacy client to our server ({security}), cipher {cipher}");
    let port = free_port();
    let server = our_server(port, cipher, security).await;
    let mut ev = server.events();
    let mut legacy =
        LegacyPeer::client(&format!("127.0.0.1:{port}"), "secret", cipher, json!({})).await;
    if security == Security::RequireV2 {
        let Event::Error { error, .. } =
            next_matching(&mut ev, |e| matches!(e, Event::Error { .. })).await
        else {
            unreachable!()
        };
        assert!(error.to_string().contains("require-v2"), "{what}: {error}");
        assert!(
            legacy
                .collect_for("connect", Duration::from_millis(500))
                .await
                .is_empty(),
            "{what}"
        );
        assert!(server.peers().is_empty(), "{what}");
    } else {
        let Event::Connect { peer } =
            next_matching(&mut ev, |e| matches!(e, Event::Connect { .. })).await
        else {
            unreachable!()
        };
        assert_eq!(peer.mode(), Mode::Legacy, "{what}");
        legacy.expect("connect", |_| true).await;
        let r = legacy
            .request(1, None, json!({"op": "add", "a": 40, "b": 2}))
            .await;
        assert_eq!(r["resp"], json!({"sum": 42}), "{what}: {r}");
    }
    server.close().await;
    legacy.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_with_a_legacy_server() {
    for cipher in [true, false] {
        for security in [Security::Legacy, Security::PreferV2, Security::RequireV2] {
            our_client_to_legacy(cipher, security).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_with_a_legacy_client() {
    for cipher in [true, false] {
        for security in [Security::Legacy, Security::PreferV2, Security::RequireV2] {
            legacy_client_to_us(cipher, security).await;
        }
    }
}
