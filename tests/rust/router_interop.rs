//! Our Router between legacy peers (npm iris-rpc 0.2.20) and our own: legacy clients through
//! our router to a legacy server and to our server, our clients through our router to a legacy
//! server; targeted delivery, requests both ways, and restarts on either side.

use std::time::Duration;

use iris_rpc::{Backend, Certificates, Client, Event, Options, Router, Server, Side};
use iris_rpc_tests::{free_port, LegacyPeer, WAIT};
use serde_json::{json, Value};

fn certs() -> Certificates {
    Certificates::self_signed().unwrap()
}

async fn router(port: u16, backend: &str) -> Router {
    router_with(port, backend, true).await
}

/// A router; with `require_cipher` false its frontend also accepts clients without the cipher.
async fn router_with(port: u16, backend: &str, require_cipher: bool) -> Router {
    let mut b = Options::new("secret")
        .address(backend)
        .uuid("router")
        .certificates(certs());
    b.reconnect_initial = Duration::from_millis(100);
    b.reconnect_max = Duration::from_millis(400);
    let r = Router::start(
        Options::new("secret")
            .port(format!("127.0.0.1:{port}"))
            .uuid("router-front")
            .cipher(require_cipher)
            .certificates(certs()),
        Backend::Client(b),
    )
    .await
    .unwrap();
    // Events from clients are relayed only while the backend is up.
    until("the router's backend", || {
        !r.peers(Side::Backend).is_empty()
    })
    .await;
    r
}

async fn until<F: Fn() -> bool>(what: &str, f: F) {
    tokio::time::timeout(WAIT, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn routed(r: &Router, uuid: &str) -> bool {
    r.peers(Side::Frontend).iter().any(|p| p.uuid() == uuid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_clients_through_our_router_to_a_legacy_server() {
    let sport = free_port();
    let mut server = LegacyPeer::server(sport, "secret", true, json!({"uuid": "legacy-srv"})).await;
    let rport = free_port();
    let router = router(rport, &format!("127.0.0.1:{sport}")).await;
    server.expect("connect", |v| v["uuid"] == "router").await;
    let addr = format!("127.0.0.1:{rport}");
    let mut c1 = LegacyPeer::client(&addr, "secret", true, json!({"uuid": "lc1"})).await;
    let mut c2 = LegacyPeer::client(&addr, "secret", true, json!({"uuid": "lc2"})).await;
    c1.expect("connect", |v| v["uuid"] == "router-front").await;
    c2.expect("connect", |v| v["uuid"] == "router-front").await;
    until("both clients at the router", || {
        routed(&router, "lc1") && routed(&router, "lc2")
    })
    .await;

    // A client's event reaches the legacy server with the client as sender.
    c1.send(json!({"cmd": "dispatch", "msg": {"op": "note", "n": 1}}))
        .await;
    let m = server.expect("message", |v| v["msg"]["op"] == "note").await;
    assert_eq!(m["uuid"], "lc1");
    assert_eq!(m["msg"]["_r"]["uuid"], "lc1");

    // The legacy server addresses one routed client with `_uuid`; a broadcast reaches both.
    server
        .send(json!({"cmd": "dispatch", "msg": {"op": "only-lc2", "_uuid": "lc2"}}))
        .await;
    let m = c2.expect("message", |v| v["msg"]["op"] == "only-lc2").await;
    assert_eq!(m["msg"], json!({"op": "only-lc2"}));
    server
        .send(json!({"cmd": "dispatch", "msg": {"op": "everyone"}}))
        .await;
    c1.expect("message", |v| v["msg"]["op"] == "everyone").await;
    c2.expect("message", |v| v["msg"]["op"] == "everyone").await;
    assert!(c1
        .collect_for("message", Duration::from_millis(200))
        .await
        .iter()
        .all(|v| v["msg"]["op"] != "only-lc2"));

    // Requests both ways through the router.
    let r = c1
        .request(1, None, json!({"op": "add", "a": 2, "b": 40}))
        .await;
    assert_eq!(r["resp"], json!({"sum": 42}));
    let r = c1.request(2, None, json!({"op": "fail"})).await;
    assert_eq!(r["err"]["name"], "TypeError");
    let r = server
        .request(
            3,
            None,
            json!({"op": "add", "a": 1, "b": 2, "_uuid": "lc2"}),
        )
        .await;
    assert_eq!(r["resp"], json!({"sum": 3}));

    // Router restart: the legacy clients reconnect (after legacy's 1 s) and routes come back.
    router.close().await;
    c1.expect("disconnect", |_| true).await;
    let router = self::router(rport, &format!("127.0.0.1:{sport}")).await;
    until("clients back", || {
        routed(&router, "lc1") && routed(&router, "lc2")
    })
    .await;
    c2.send(json!({"cmd": "dispatch", "msg": {"op": "back", "n": 2}}))
        .await;
    let m = server.expect("message", |v| v["msg"]["op"] == "back").await;
    assert_eq!(m["uuid"], "lc2");
    router.close().await;
    c1.kill().await;
    c2.kill().await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_clients_through_our_router_to_our_server() {
    let sport = free_port();
    let server = Server::bind(
        Options::new("secret")
            .port(format!("127.0.0.1:{sport}"))
            .uuid("our-srv")
            .certificates(certs()),
    )
    .await
    .unwrap();
    server.handle("whoami", |req| async move { Ok(json!(req.uuid)) });
    let rport = free_port();
    let router = router_with(rport, &format!("127.0.0.1:{sport}"), false).await;
    let addr = format!("127.0.0.1:{rport}");
    let mut c1 = LegacyPeer::client(&addr, "secret", true, json!({"uuid": "lc1"})).await;
    let mut c2 = LegacyPeer::client(&addr, "secret", false, json!({"uuid": "lc2"})).await;
    let has = |u: &str| server.routes().iter().any(|(x, _)| x == u);
    until("routes at our server", || has("lc1") && has("lc2")).await;

    server.dispatch_to("lc1", json!({"op": "for-lc1"})).unwrap();
    let m = c1.expect("message", |v| v["msg"]["op"] == "for-lc1").await;
    assert_eq!(m["msg"], json!({"op": "for-lc1"}));
    let r = server
        .request_to("lc2", json!({"op": "add", "a": 5, "b": 6}))
        .await
        .unwrap();
    assert_eq!(r, json!({"sum": 11}));
    let r = c2.request(1, None, json!({"op": "whoami"})).await;
    assert_eq!(r["resp"], json!("lc2"));
    let mut events = server.events();
    c1.send(json!({"cmd": "dispatch", "msg": {"op": "hi"}}))
        .await;
    let uuid = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Event::Message { uuid, .. }) = events.next().await {
                return uuid;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(uuid, "lc1");
    drop(events);

    // Backend restart: the router reconnects and the server relearns the routes.
    server.close().await;
    let server = Server::bind(
        Options::new("secret")
            .port(format!("127.0.0.1:{sport}"))
            .uuid("our-srv")
            .certificates(certs()),
    )
    .await
    .unwrap();
    let has = |u: &str| server.routes().iter().any(|(x, _)| x == u);
    until("routes after backend restart", || has("lc1") && has("lc2")).await;
    server.dispatch_to("lc2", json!({"op": "again"})).unwrap();
    c2.expect("message", |v| v["msg"]["op"] == "again").await;
    router.close().await;
    server.close().await;
    c1.kill().await;
    c2.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_clients_through_our_router_to_a_legacy_server() {
    let sport = free_port();
    let mut server = LegacyPeer::server(sport, "secret", true, json!({"uuid": "legacy-srv"})).await;
    let rport = free_port();
    let router = router(rport, &format!("127.0.0.1:{sport}")).await;
    let addr = format!("127.0.0.1:{rport}");
    let a = Client::connect(Options::new("secret").address(addr.as_str()).uuid("A")).unwrap();
    a.handle("mul", |req| async move {
        let v = req.msg.value();
        Ok(json!(
            v["a"].as_i64().unwrap_or(0) * v["b"].as_i64().unwrap_or(0)
        ))
    });
    let mut aev = a.events();
    a.wait_connected(WAIT).await.unwrap();
    until("A at the router", || routed(&router, "A")).await;
    a.dispatch(json!({"op": "from-a"})).unwrap();
    let m = server
        .expect("message", |v| v["msg"]["op"] == "from-a")
        .await;
    assert_eq!(m["uuid"], "A");
    assert_eq!(
        a.request(json!({"op": "add", "a": 1, "b": 1}))
            .await
            .unwrap(),
        json!({"sum": 2})
    );
    server
        .send(json!({"cmd": "dispatch", "msg": {"op": "to-a", "_uuid": "A"}}))
        .await;
    let got = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Event::Message { msg, .. }) = aev.next().await {
                return msg.value();
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, json!({"op": "to-a"}));
    drop(aev);
    let r = server
        .request(1, None, json!({"op": "mul", "a": 6, "b": 7, "_uuid": "A"}))
        .await;
    assert_eq!(r["resp"], Value::from(42));
    a.close().await;
    router.close().await;
    server.kill().await;
}

/// Issue 14, item 7: our router sent `rpc::offline` to a legacy server when a frontend client
/// left; legacy's handler throws (it reads an undefined variable) and ends the stream, so the
/// router's backend link dropped and requests in flight failed. Nor may a relayed event make
/// legacy's `self.iface[msg.op]` lookup find a control handler (an `op` of `["rpc::offline"]`
/// is looked up as `"rpc::offline"`) or an `Object.prototype` member (`"__proto__"` throws).
/// A router in front of the real legacy server: 50 clients come and go and a frontend peer
/// sends such events while a steady client makes a request every 20 ms: none fails and the
/// backend link never drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_clients_and_hostile_ops_never_break_a_legacy_backend() {
    let sport = free_port();
    let mut server = LegacyPeer::server(sport, "secret", true, json!({"uuid": "legacy-srv"})).await;
    let rport = free_port();
    let router = router(rport, &format!("127.0.0.1:{sport}")).await;
    let mut revents = router.events().unwrap();
    server.expect("connect", |v| v["uuid"] == "router").await;
    let addr = format!("127.0.0.1:{rport}");

    let steady = std::sync::Arc::new(
        Client::connect(Options::new("secret").address(addr.as_str()).uuid("steady")).unwrap(),
    );
    steady.wait_connected(WAIT).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (c, stop) = (steady.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                match c.request(json!({"op": "add", "a": n, "b": 1})).await {
                    Ok(r) if r == json!({"sum": n + 1}) => ok += 1,
                    Ok(r) => failed.push(format!("wrong answer {r}")),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        })
    };

    // 50 clients come and go, five at a time.
    for round in 0..10 {
        let mut batch = Vec::new();
        for i in 0..5 {
            let uuid = format!("churn-{round}-{i}");
            batch.push(
                Client::connect(Options::new("secret").address(addr.as_str()).uuid(uuid)).unwrap(),
            );
        }
        for c in &batch {
            c.wait_connected(WAIT).await.unwrap();
        }
        for c in batch {
            c.close().await;
        }
    }
    // A frontend peer sends events legacy would dispatch to a handler or a prototype member.
    let hostile = Client::connect(
        Options::new("secret")
            .address(addr.as_str())
            .uuid("hostile"),
    )
    .unwrap();
    hostile.wait_connected(WAIT).await.unwrap();
    for op in [
        json!(["rpc::offline"]),
        json!([["rpc::init"]]),
        json!(["rpc::auth::challenge"]),
        json!("__proto__"),
        json!("__defineGetter__"),
        json!("toString"),
    ] {
        hostile
            .dispatch(json!({"op": op, "uuid": "x", "vector": "v", "data": {"uuid": "hijack"}}))
            .unwrap();
    }
    hostile.dispatch(json!({"op": "after-hostile"})).unwrap();
    let m = server
        .expect("message", |v| v["msg"]["op"] == "after-hostile")
        .await;
    assert_eq!(m["uuid"], "hostile");
    // Give the steady client time for more requests after the last offence.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = worker.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 20, "only {ok} requests answered");
    let disconnects = server
        .collect_for("disconnect", Duration::from_millis(100))
        .await;
    assert!(
        disconnects.is_empty(),
        "the legacy server lost streams: {disconnects:?}"
    );
    while let Ok(ev) = revents.try_recv() {
        if let iris_rpc::RouterEvent::Disconnect {
            side: Side::Backend,
            reason,
            ..
        } = ev
        {
            panic!("the router's backend link dropped: {reason}");
        }
    }
    eprintln!("steady client: {ok} requests answered, 0 failed, while 50 clients came and went");
    hostile.close().await;
    steady.close().await;
    router.close().await;
    server.kill().await;
}

/// Issue 14, item 7, the other roles: legacy clients on both sides of a router whose backend is
/// a server (clients meet in the middle) never get `rpc::offline` either, as our clients come
/// and go on the other side, and stay connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_clients_on_either_side_survive_peers_leaving_the_other() {
    let (fport, bport) = (free_port(), free_port());
    let router = Router::start(
        Options::new("secret")
            .port(format!("127.0.0.1:{fport}"))
            .uuid("front")
            .certificates(certs()),
        Backend::Server(
            Options::new("secret")
                .port(format!("127.0.0.1:{bport}"))
                .uuid("back")
                .certificates(certs()),
        ),
    )
    .await
    .unwrap();
    let (front, back) = (format!("127.0.0.1:{fport}"), format!("127.0.0.1:{bport}"));
    let mut lf = LegacyPeer::client(&front, "secret", true, json!({"uuid": "legacy-front"})).await;
    let mut lb = LegacyPeer::client(&back, "secret", true, json!({"uuid": "legacy-back"})).await;
    lf.expect("connect", |_| true).await;
    lb.expect("connect", |_| true).await;
    for round in 0..5 {
        let mut batch = Vec::new();
        for i in 0..5 {
            let side = if i % 2 == 0 { &front } else { &back };
            let uuid = format!("churn-{round}-{i}");
            batch.push(
                Client::connect(Options::new("secret").address(side.as_str()).uuid(uuid)).unwrap(),
            );
        }
        for c in &batch {
            c.wait_connected(WAIT).await.unwrap();
        }
        for c in batch {
            c.close().await;
        }
    }
    // Still connected, and still reachable across the router.
    lf.send(json!({"cmd": "dispatch", "msg": {"op": "across", "n": 1}}))
        .await;
    let m = lb.expect("message", |v| v["msg"]["op"] == "across").await;
    assert_eq!(m["uuid"], "legacy-front");
    for p in [&mut lf, &mut lb] {
        let d = p
            .collect_for("disconnect", Duration::from_millis(100))
            .await;
        assert!(d.is_empty(), "a legacy client lost its stream: {d:?}");
    }
    router.close().await;
    lf.kill().await;
    lb.kill().await;
}
