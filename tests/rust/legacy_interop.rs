//! Interop with the real legacy package (npm `iris-rpc` 0.2.20 on Node 20), both directions,
//! cipher on and off: handshake, events both ways, requests both ways (answered, `Error`, no
//! handler, timeout), targeted dispatch, disconnect failing pending requests, reconnect after a
//! server restart, and a wrong secret refused on both sides.

use std::time::Duration;

use iris_rpc::{error_object, Certificates, Client, Error, ErrorKind, Event, Options, Server};
use iris_rpc_tests::{free_port, next_matching, LegacyPeer};
use serde_json::{json, Value};

fn our_handlers(rpc: &impl Handlers) {
    rpc.add_handlers();
}
/// Registers the same request handlers on our Client or Server.
trait Handlers {
    fn add_handlers(&self);
}

macro_rules! impl_handlers {
    ($t:ty) => {
        impl Handlers for $t {
            fn add_handlers(&self) {
                self.handle("mul", |req| async move {
                    let v = req.msg.value();
                    Ok(json!({"product": v["a"].as_i64().unwrap_or(0) * v["b"].as_i64().unwrap_or(0)}))
                });
                self.handle("fail", |_| async { Err(error_object("TypeError", "bad input")) });
                self.handle("slow", |_| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(json!(null))
                });
            }
        }
    };
}
impl_handlers!(Client);
impl_handlers!(Server);

fn client_opts(port: u16, secret: &str, cipher: bool) -> Options {
    let mut o = Options::new(secret)
        .address(format!("127.0.0.1:{port}"))
        .uuid("our-cli")
        .designation("our-client")
        .cipher(cipher);
    o.reconnect_initial = Duration::from_millis(200);
    o.reconnect_max = Duration::from_millis(500);
    o
}

async fn our_server(port: u16, secret: &str, cipher: bool) -> Server {
    Server::bind(
        Options::new(secret)
            .port(format!("127.0.0.1:{port}"))
            .uuid("our-srv")
            .designation("our-server")
            .mac("001122334455")
            .cipher(cipher)
            .certificates(Certificates::self_signed().unwrap()),
    )
    .await
    .unwrap()
}

/// Legacy server, our client.
async fn legacy_server_our_client(cipher: bool) {
    let port = free_port();
    let mut legacy = LegacyPeer::server(port, "secret", cipher, json!({"timeout": 1000})).await;
    let client = Client::connect(client_opts(port, "secret", cipher)).unwrap();
    our_handlers(&client);
    let mut ev = client.events();

    // Handshake: both sides see the other's identity.
    let Event::Connect { peer } =
        next_matching(&mut ev, |e| matches!(e, Event::Connect { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(peer.uuid(), "legacy-srv");
    assert_eq!(peer.designation(), Some("legacy-server"));
    assert_eq!(peer.mac(), Some("aabbccddeeff"));
    assert_eq!(peer.cipher(), cipher);
    let c = legacy.expect("connect", |_| true).await;
    assert_eq!(c["uuid"], "our-cli");
    assert_eq!(c["designation"], "our-client");

    // Events both ways: `hello` is answered by the legacy peer with `world`.
    client
        .dispatch(json!({"op": "hello", "text": "hi ✓"}))
        .unwrap();
    let m = legacy
        .expect("message", |v| v["msg"]["op"] == "hello")
        .await;
    assert_eq!(m["msg"], json!({"op": "hello", "text": "hi ✓"}));
    assert_eq!(m["uuid"], "our-cli");
    let Event::Message { msg, uuid, .. } =
        next_matching(&mut ev, |e| matches!(e, Event::Message { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(msg.value(), json!({"op": "world", "echo": "hi ✓"}));
    assert_eq!(uuid, "legacy-srv");

    // Server-initiated dispatch to one uuid.
    legacy
        .send(json!({"cmd": "dispatch", "uuid": "our-cli", "msg": {"op": "direct", "n": 1}}))
        .await;
    let Event::Message { msg, .. } = next_matching(
        &mut ev,
        |e| matches!(e, Event::Message { msg, .. } if msg.op() == Some("direct")),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(msg.value(), json!({"op": "direct", "n": 1}));

    // Our requests to legacy: answered, Error, no handler, timeout.
    assert_eq!(
        client
            .request(json!({"op": "add", "a": 2, "b": 3}))
            .await
            .unwrap(),
        json!({"sum": 5})
    );
    let err = client.request(json!({"op": "fail"})).await.unwrap_err();
    let v = err.to_legacy_value();
    assert_eq!(
        (v["_Error"].clone(), v["name"].clone(), v["message"].clone()),
        (json!(true), json!("TypeError"), json!("bad input"))
    );
    let err = client.request(json!({"op": "nosuch"})).await.unwrap_err();
    assert_eq!(
        err.to_legacy_value(),
        json!({"error": "No such handler 'nosuch'"})
    );
    let err = client
        .request(json!({"op": "slow", "op_timeout": 300}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);

    // Legacy requests to us: answered, Error, no handler, timeout (legacy's own 1 s timer).
    let r = legacy
        .request(1, Some("our-cli"), json!({"op": "mul", "a": 6, "b": 7}))
        .await;
    assert_eq!(r["err"], Value::Null);
    assert_eq!(r["resp"], json!({"product": 42}));
    let r = legacy
        .request(2, Some("our-cli"), json!({"op": "fail"}))
        .await;
    assert_eq!(
        r["err"],
        json!({"_Error": true, "name": "TypeError", "message": "bad input"})
    );
    drop(ev); // without an event receiver, unhandled requests get the legacy answer
    let r = legacy
        .request(3, Some("our-cli"), json!({"op": "nosuch"}))
        .await;
    assert_eq!(r["err"], json!({"error": "No such handler 'nosuch'"}));
    let r = legacy
        .request(4, Some("our-cli"), json!({"op": "slow"}))
        .await;
    assert_eq!(r["err"]["error"], "Connection Timed Out");
    let mut ev = client.events();

    // Disconnect fails our pending request; the client reconnects to a restarted server.
    let client = std::sync::Arc::new(client);
    let c = client.clone();
    let pending = tokio::spawn(async move { c.request(json!({"op": "slow"})).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    legacy.kill().await;
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    next_matching(&mut ev, |e| matches!(e, Event::Disconnect { .. })).await;
    assert!(client.dispatch(json!({"op": "lost"})).is_err());
    let mut legacy = LegacyPeer::server(port, "secret", cipher, json!({})).await;
    next_matching(&mut ev, |e| matches!(e, Event::Connect { .. })).await;
    legacy.expect("connect", |v| v["uuid"] == "our-cli").await;
    assert_eq!(
        client
            .request(json!({"op": "add", "a": 1, "b": 1}))
            .await
            .unwrap(),
        json!({"sum": 2})
    );
    client.close().await;
    legacy.kill().await;
}

/// Our server, legacy client.
async fn our_server_legacy_client(cipher: bool) {
    let port = free_port();
    let server = our_server(port, "secret", cipher).await;
    our_handlers(&server);
    let mut ev = server.events();
    let mut legacy = LegacyPeer::client(
        &format!("127.0.0.1:{port}"),
        "secret",
        cipher,
        json!({"timeout": 1000}),
    )
    .await;

    let Event::Connect { peer } =
        next_matching(&mut ev, |e| matches!(e, Event::Connect { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(peer.uuid(), "legacy-cli");
    assert_eq!(peer.designation(), Some("legacy-client"));
    assert_eq!(peer.cipher(), cipher);
    let c = legacy.expect("connect", |_| true).await;
    assert_eq!(c["uuid"], "our-srv");
    assert_eq!(c["designation"], "our-server");
    assert_eq!(c["mac"], "001122334455");

    // Events both ways, and dispatch to one uuid from our server.
    legacy
        .send(json!({"cmd": "dispatch", "msg": {"op": "ping-ish", "text": "ünïcødé"}}))
        .await;
    let Event::Message { msg, uuid, .. } =
        next_matching(&mut ev, |e| matches!(e, Event::Message { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(msg.value(), json!({"op": "ping-ish", "text": "ünïcødé"}));
    assert_eq!(uuid, "legacy-cli");
    server
        .dispatch_to("legacy-cli", json!({"op": "hello", "text": "from us"}))
        .unwrap();
    let m = legacy
        .expect("message", |v| v["msg"]["op"] == "hello")
        .await;
    assert_eq!(m["uuid"], "our-srv");
    // The legacy client answers `hello` with `world`.
    next_matching(
        &mut ev,
        |e| matches!(e, Event::Message { msg, .. } if msg.op() == Some("world")),
    )
    .await;

    // Legacy requests to us.
    let r = legacy
        .request(1, None, json!({"op": "mul", "a": 3, "b": 4}))
        .await;
    assert_eq!(r["resp"], json!({"product": 12}));
    assert_eq!(r["err"], Value::Null);
    let r = legacy.request(2, None, json!({"op": "fail"})).await;
    assert_eq!(
        r["err"],
        json!({"_Error": true, "name": "TypeError", "message": "bad input"})
    );
    let r = legacy.request(4, None, json!({"op": "slow"})).await;
    assert_eq!(r["err"]["error"], "Connection Timed Out");
    drop(ev);
    let r = legacy.request(3, None, json!({"op": "nosuch"})).await;
    assert_eq!(r["err"], json!({"error": "No such handler 'nosuch'"}));

    // Our requests to legacy.
    assert_eq!(
        server
            .request_to("legacy-cli", json!({"op": "add", "a": 20, "b": 22}))
            .await
            .unwrap(),
        json!({"sum": 42})
    );
    let err = server
        .request_to("legacy-cli", json!({"op": "fail"}))
        .await
        .unwrap_err();
    assert_eq!(err.to_legacy_value()["name"], "TypeError");
    let err = server
        .request_to("legacy-cli", json!({"op": "nosuch"}))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_legacy_value(),
        json!({"error": "No such handler 'nosuch'"})
    );
    let err = server
        .request_to("legacy-cli", json!({"op": "slow", "op_timeout": 300}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);

    // Disconnect fails the legacy client's pending request; it reconnects after a restart.
    legacy
        .send(json!({"cmd": "request", "id": 9, "msg": {"op": "slow"}}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.close().await;
    let r = legacy.expect("response", |v| v["id"] == 9).await;
    assert_eq!(r["err"]["error"], "Connection Terminated");
    assert_eq!(r["err"]["disconnected"], true);
    legacy.expect("disconnect", |_| true).await;
    let server = our_server(port, "secret", cipher).await;
    let mut ev = server.events();
    next_matching(&mut ev, |e| matches!(e, Event::Connect { .. })).await;
    legacy.expect("connect", |_| true).await;
    let r = legacy.request(10, None, json!({"op": "nosuch"})).await;
    assert!(r["err"].is_object());
    server.close().await;
    legacy.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_server_our_client_cipher_on() {
    legacy_server_our_client(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_server_our_client_cipher_off() {
    legacy_server_our_client(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_legacy_client_cipher_on() {
    our_server_legacy_client(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_legacy_client_cipher_off() {
    our_server_legacy_client(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_refused_by_legacy_server() {
    for cipher in [true, false] {
        let port = free_port();
        let mut legacy = LegacyPeer::server(port, "right", cipher, json!({})).await;
        let client = Client::connect(client_opts(port, "wrong", cipher)).unwrap();
        let mut ev = client.events();
        let Event::Error { error, .. } =
            next_matching(&mut ev, |e| matches!(e, Event::Error { .. })).await
        else {
            unreachable!()
        };
        assert_eq!(error.kind(), ErrorKind::Auth, "{error}");
        assert!(!client.is_connected());
        assert!(legacy
            .collect_for("connect", Duration::from_millis(300))
            .await
            .is_empty());
        client.close().await;
        legacy.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_refused_by_our_server() {
    for cipher in [true, false] {
        let port = free_port();
        let server = our_server(port, "right", cipher).await;
        let mut ev = server.events();
        let mut legacy =
            LegacyPeer::client(&format!("127.0.0.1:{port}"), "wrong", cipher, json!({})).await;
        let Event::Error { error, .. } =
            next_matching(&mut ev, |e| matches!(e, Event::Error { .. })).await
        else {
            unreachable!()
        };
        assert_eq!(error.kind(), ErrorKind::Auth, "{error}");
        assert!(server.peers().is_empty());
        assert!(legacy
            .collect_for("connect", Duration::from_millis(300))
            .await
            .is_empty());
        server.close().await;
        legacy.kill().await;
    }
}
