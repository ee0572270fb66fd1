//! Router: clients through a router to a server, chained routers, both backend modes,
//! restarts on either side, route hijack refused, and 200 clients through one router.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use iris_rpc::{Backend, Client, Event, Events, Options, Router, RouterEvent, Server, Side};
use serde_json::{json, Value};

fn client_opts(addr: &str, uuid: &str) -> Options {
    let mut o = Options::new(SECRET)
        .address(addr)
        .uuid(uuid)
        .designation("user");
    o.reconnect_initial = Duration::from_millis(100);
    o.reconnect_max = Duration::from_millis(300);
    o
}

async fn router_to(backend_addr: &str, port: &str) -> Router {
    let mut b = Options::new(SECRET).address(backend_addr).uuid("router");
    b.reconnect_initial = Duration::from_millis(100);
    b.reconnect_max = Duration::from_millis(300);
    Router::start(
        server_options().port(port).uuid("router-front"),
        Backend::Client(b),
    )
    .await
    .unwrap()
}

async fn next_message(events: &mut Events) -> (Value, String) {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.next().await {
                Some(Event::Message { msg, uuid, .. }) => return (msg.value(), uuid),
                Some(_) => {}
                None => panic!("events closed"),
            }
        }
    })
    .await
    .expect("no message in time")
}

fn has_route(s: &Server, uuid: &str) -> bool {
    s.routes().iter().any(|(u, _)| u == uuid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_a_server_through_a_router() {
    let server = server(server_options().uuid("backend")).await;
    server.handle("add", |req| async move {
        let v = req.msg.value();
        Ok(json!({"sum": v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0), "from": req.uuid}))
    });
    server.handle("slow", |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(json!(null))
    });
    let mut sev = server.events();
    let router = router_to(&server.local_addr().to_string(), "127.0.0.1:0").await;
    let raddr = router.local_addr().to_string();
    let a = Client::connect(client_opts(&raddr, "A")).unwrap();
    let b = Client::connect(client_opts(&raddr, "B")).unwrap();
    a.handle("whoami", |_| async { Ok(json!("A")) });
    let mut aev = a.events();
    let mut bev = b.events();
    a.wait_connected(WAIT).await.unwrap();
    b.wait_connected(WAIT).await.unwrap();
    until("routes at the server", || {
        has_route(&server, "A") && has_route(&server, "B")
    })
    .await;
    assert!(
        !server.peers().iter().any(|p| p.uuid() == "A"),
        "A is routed, not direct"
    );

    // Event from A reaches the server with A as sender.
    a.dispatch(json!({"op": "hello", "n": 1})).unwrap();
    let (msg, uuid) = next_message(&mut sev).await;
    drop(sev); // unhandled requests now get "No such handler"
    assert_eq!(uuid, "A");
    assert_eq!(msg["_r"]["uuid"], "A");
    assert_eq!(msg["_r"]["designation"], "user");

    // The server targets A only; a broadcast reaches both.
    server.dispatch_to("A", json!({"op": "for-a"})).unwrap();
    let (msg, _) = next_message(&mut aev).await;
    assert_eq!(msg, json!({"op": "for-a"}));
    server.dispatch(json!({"op": "for-all"})).unwrap();
    let (msg, _) = next_message(&mut bev).await;
    assert_eq!(
        msg,
        json!({"op": "for-all"}),
        "B got something meant for A first?"
    );
    let (msg, _) = next_message(&mut aev).await;
    assert_eq!(msg, json!({"op": "for-all"}));

    // Requests both ways, a remote error and a timeout through the router.
    let r = a
        .request(json!({"op": "add", "a": 2, "b": 3}))
        .await
        .unwrap();
    assert_eq!(r, json!({"sum": 5, "from": "A"}));
    let err = a.request(json!({"op": "nosuch"})).await.unwrap_err();
    assert_eq!(
        err.to_legacy_value(),
        json!({"error": "No such handler 'nosuch'"})
    );
    let err = a
        .request(json!({"op": "slow", "op_timeout": 200}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), iris_rpc::ErrorKind::Timeout);
    drop(aev);
    let who = server
        .request_to("A", json!({"op": "whoami"}))
        .await
        .unwrap();
    assert_eq!(who, json!("A"));

    // A leaves: the server forgets its route.
    a.close().await;
    until("A's route removed", || !has_route(&server, "A")).await;
    assert!(server.dispatch_to("A", json!({"op": "x"})).is_err());
    b.close().await;
    router.close().await;
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_chain_and_restarts_rebuild_routes() {
    let server = server(server_options().uuid("backend")).await;
    let saddr = server.local_addr().to_string();
    let r2 = router_to(&saddr, "127.0.0.1:0").await;
    let r2addr = r2.local_addr().to_string();
    let mut b1 = Options::new(SECRET)
        .address(r2addr.as_str())
        .uuid("router1");
    b1.reconnect_initial = Duration::from_millis(100);
    let r1 = Router::start(
        server_options().port("127.0.0.1:0").uuid("r1-front"),
        Backend::Client(b1),
    )
    .await
    .unwrap();
    let r1addr = r1.local_addr().to_string();
    let c = Client::connect(client_opts(&r1addr, "C")).unwrap();
    let mut cev = c.events();
    c.wait_connected(WAIT).await.unwrap();
    until("C routed at the server", || has_route(&server, "C")).await;
    server.handle("echo-from", |req| async move { Ok(json!(req.uuid)) });
    assert_eq!(
        c.request(json!({"op": "echo-from"})).await.unwrap(),
        json!("C")
    );
    server.dispatch_to("C", json!({"op": "deep"})).unwrap();
    assert_eq!(next_message(&mut cev).await.0, json!({"op": "deep"}));

    // Restart the first router on its port: C reconnects and the route comes back.
    r1.close().await;
    until("C's route removed", || !has_route(&server, "C")).await;
    let mut b1 = Options::new(SECRET)
        .address(r2addr.as_str())
        .uuid("router1");
    b1.reconnect_initial = Duration::from_millis(100);
    let r1 = Router::start(
        server_options().port(r1addr.as_str()).uuid("r1-front"),
        Backend::Client(b1),
    )
    .await
    .unwrap();
    until("C routed again", || has_route(&server, "C")).await;

    // Restart the backend server: the chain reconnects and re-announces C.
    server.close().await;
    let server = Server::bind(server_options().port(saddr.as_str()).uuid("backend"))
        .await
        .unwrap();
    until("C routed at the new server", || has_route(&server, "C")).await;
    server
        .dispatch_to("C", json!({"op": "after-restart"}))
        .unwrap();
    loop {
        let (m, _) = next_message(&mut cev).await;
        if m["op"] == "after-restart" {
            break;
        }
    }
    c.close().await;
    r1.close().await;
    r2.close().await;
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_both_sides_meet_in_the_middle() {
    let router = Router::start(
        server_options().port("127.0.0.1:0").uuid("front"),
        Backend::Server(server_options().port("127.0.0.1:0").uuid("back")),
    )
    .await
    .unwrap();
    assert_eq!(
        (router.uuid(Side::Frontend), router.uuid(Side::Backend)),
        ("front", "back")
    );
    let front = router.local_addr().to_string();
    let back = router.backend_addr().unwrap().to_string();
    let x = Client::connect(client_opts(&front, "X")).unwrap();
    let y = Client::connect(client_opts(&back, "Y")).unwrap();
    y.handle("ping-y", |req| async move { Ok(json!({"pong": req.uuid})) });
    let mut xev = x.events();
    let mut yev = y.events();
    x.wait_connected(WAIT).await.unwrap();
    y.wait_connected(WAIT).await.unwrap();
    until("X sees Y", || x.routes().iter().any(|(u, _)| u == "Y")).await;
    until("Y sees X", || y.routes().iter().any(|(u, _)| u == "X")).await;
    x.dispatch(json!({"op": "hi-y"})).unwrap();
    let (m, from) = next_message(&mut yev).await;
    assert_eq!((m["op"].clone(), from.as_str()), (json!("hi-y"), "X"));
    y.dispatch_to("X", json!({"op": "hi-x"})).unwrap();
    // X sees Y, not the router, as the sender.
    let (m, from) = next_message(&mut xev).await;
    assert_eq!((m["op"].clone(), from.as_str()), (json!("hi-x"), "Y"));
    assert_eq!(m["_r"]["uuid"], "Y");
    let r = x.request_to("Y", json!({"op": "ping-y"})).await.unwrap();
    assert_eq!(r, json!({"pong": "X"}));
    x.close().await;
    y.close().await;
    router.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_peer_cannot_take_a_backend_uuid() {
    let server = server(server_options().uuid("backend")).await;
    let router = router_to(&server.local_addr().to_string(), "127.0.0.1:0").await;
    let raddr = router.local_addr().to_string();
    let honest = Client::connect(client_opts(&raddr, "honest")).unwrap();
    honest.wait_connected(WAIT).await.unwrap();
    until("honest routed", || has_route(&server, "honest")).await;
    // Claims the backend's own uuid: refused by the router.
    let mut events = router.events().unwrap();
    let liar = Client::connect(client_opts(&raddr, "backend")).unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(RouterEvent::Refused { peer }) = events.recv().await {
                if peer.uuid() == "backend" {
                    break;
                }
            }
        }
    })
    .await
    .unwrap();
    // A raw peer announcing another's route gets nothing either.
    let mut raw = raw_handshake_to(router.local_addr(), SECRET, true, "mallory")
        .await
        .unwrap();
    let mut out = Vec::new();
    raw.est
        .sealer
        .seal(r#"{"op":"rpc::online","uuid":"honest"}"#, &mut out)
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw.io, &out)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let via: Vec<_> = router
        .routes(Side::Frontend)
        .into_iter()
        .filter(|(u, _)| u == "honest")
        .collect();
    assert!(
        via.is_empty(),
        "honest is a direct peer, not a route: {via:?}"
    );
    server
        .dispatch_to("honest", json!({"op": "still-mine"}))
        .unwrap();
    liar.close().await;
    honest.close().await;
    router.close().await;
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_through_one_router() {
    let server = server(server_options().uuid("backend")).await;
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let s = seen.clone();
    server.on("hello", move |_, uuid, _| {
        s.lock().unwrap().insert(uuid.to_owned());
    });
    let router = router_to(&server.local_addr().to_string(), "127.0.0.1:0").await;
    let raddr = router.local_addr().to_string();
    let mut clients = Vec::new();
    for i in 0..200 {
        clients.push(Client::connect(client_opts(&raddr, &format!("c{i}"))).unwrap());
    }
    for c in &clients {
        c.wait_connected(WAIT).await.unwrap();
    }
    until("200 routes", || server.routes().len() == 200).await;
    for c in &clients {
        c.dispatch(json!({"op": "hello"})).unwrap();
    }
    until("200 senders", || seen.lock().unwrap().len() == 200).await;
    for c in &clients {
        c.close().await;
    }
    until("routes gone", || server.routes().is_empty()).await;
    router.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_failed_start_leaves_nothing_listening() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let front = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let front_addr = front.local_addr().unwrap().to_string();
    drop(front);
    let err = Router::start(
        server_options().port(front_addr.as_str()),
        Backend::Server(server_options().port(taken_addr.as_str())),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The frontend port is free again.
    assert!(std::net::TcpListener::bind(front_addr.as_str()).is_ok());
}

/// Top-level member names of a JSON object text, decoded, in order (duplicates kept).
fn member_names(text: &str) -> Vec<String> {
    struct Names(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Names {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Names;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<Names, A::Error> {
                    let mut out = Vec::new();
                    while let Some(k) = a.next_key::<String>()? {
                        a.next_value::<serde::de::IgnoredAny>()?;
                        out.push(k);
                    }
                    Ok(Names(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Names>(text).unwrap().0
}

/// Issue 13, defect 1: a frontend peer spelling `_r` or `_uuid` with an escape, or repeating a
/// key, used to make the relay append a second `_r` (its fast path looked for the literal
/// `"_r"` only) and the backend's strict parser then dropped the router's backend link, failing
/// every client's requests. Now the relay and every receiver read keys decoded and keep the
/// last of duplicates (as legacy's `JSON.parse` does), and the relay sends exactly one `_r`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_and_duplicate_keys_are_relayed_as_receivers_read_them() {
    let server = server(server_options().uuid("backend")).await;
    let got = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let g = got.clone();
    server.on("spoof", move |msg, uuid, _| {
        g.lock()
            .unwrap()
            .push((msg.as_str().to_owned(), uuid.to_owned()));
    });
    let router = router_to(&server.local_addr().to_string(), "127.0.0.1:0").await;
    let mut rev = router.events().unwrap();
    let raddr = router.local_addr();
    let good = Client::connect(client_opts(&raddr.to_string(), "good")).unwrap();
    good.wait_connected(WAIT).await.unwrap();
    until("good routed", || has_route(&server, "good")).await;

    let cases = [
        r#"{"\u005fr":{"uuid":"x"},"op":"spoof","case":1}"#,
        r#"{"_r":{"uuid":"x"},"op":"spoof","_r":{"uuid":"y"},"case":2}"#,
        r#"{"\u005fuuid":"backend","op":"spoof","case":3}"#,
        r#"{"op":"nothing","\u006fp":"spoof","case":4}"#,
        r#"{"op":"spoof","_r":5,"case":5,"case":6}"#,
    ];
    let mut raw = raw_handshake_to(raddr, SECRET, true, "hostile")
        .await
        .unwrap();
    until("hostile routed", || has_route(&server, "hostile")).await;
    for line in cases {
        let mut out = Vec::new();
        raw.est.sealer.seal(line, &mut out).unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut raw.io, &out)
            .await
            .unwrap();
    }
    // A request whose body spells `_r` escaped is relayed and answered too.
    let mut out = Vec::new();
    raw.est
        .sealer
        .seal(
            r#"{"_req":"r1","req":{"\u005fr":{"uuid":"x"},"op":"echo","n":7}}"#,
            &mut out,
        )
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw.io, &out)
        .await
        .unwrap();
    // A good client keeps being served meanwhile.
    for n in 0..20 {
        let r = good.request(json!({"op": "echo", "n": n})).await.unwrap();
        assert_eq!(r["n"], n);
    }
    until("every case delivered", || {
        got.lock().unwrap().len() == cases.len()
    })
    .await;
    let answer = tokio::time::timeout(WAIT, async {
        let mut plain = Vec::new();
        loop {
            while let Some(line) = raw.lines.next_line().unwrap() {
                let line = line.to_vec();
                let p = raw.est.opener.open(&line, &mut plain).unwrap();
                if p.text.contains("\"_resp\"") {
                    return serde_json::from_str::<Value>(p.text).unwrap();
                }
            }
            let n = tokio::io::AsyncReadExt::read(&mut raw.io, raw.lines.read_buf(4096))
                .await
                .unwrap();
            raw.lines.filled(n);
            assert!(n > 0, "the router closed the hostile peer");
        }
    })
    .await
    .expect("no answer to the escaped request");
    assert_eq!(answer["_resp"], "r1");
    assert_eq!(answer["resp"]["n"], 7);
    assert_eq!(answer["resp"]["_r"]["uuid"], "hostile", "{answer}");

    for (text, uuid) in got.lock().unwrap().iter() {
        let names = member_names(text);
        assert_eq!(uuid, "hostile", "{text}");
        assert_eq!(
            names.iter().filter(|n| *n == "_r").count(),
            1,
            "exactly one _r: {text}"
        );
        assert!(!names.iter().any(|n| n == "_uuid"), "{text}");
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["_r"]["uuid"], "hostile", "{text}");
    }
    let last_case = |c: i64| {
        got.lock()
            .unwrap()
            .iter()
            .any(|(t, _)| serde_json::from_str::<Value>(t).unwrap()["case"] == c)
    };
    assert!(last_case(6) && !last_case(5), "the last duplicate wins");
    // The backend link never dropped.
    while let Ok(ev) = rev.try_recv() {
        if let RouterEvent::Disconnect { side, peer, reason } = ev {
            assert!(
                side != Side::Backend,
                "the router's backend link dropped: {} {reason}",
                peer.uuid()
            );
        }
    }
    good.close().await;
    router.close().await;
    server.close().await;
}

/// Issue 13: the router's event queue was unbounded, so a router whose events nobody read
/// grew with every connect, disconnect and error. Now it holds `router_event_queue` events;
/// past that, new ones are dropped and counted, and relaying never waits for the reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_event_queue_is_bounded_and_never_stalls_the_relay() {
    let server = server(server_options().uuid("backend")).await;
    let mut b = Options::new(SECRET)
        .address(server.local_addr().to_string())
        .uuid("router");
    b.reconnect_initial = Duration::from_millis(100);
    let mut front = server_options().port("127.0.0.1:0").uuid("router-front");
    front.limits.router_event_queue = 4;
    let router = Router::start(front, Backend::Client(b)).await.unwrap();
    let raddr = router.local_addr().to_string();
    // Nobody reads: 10 clients come and go (20 events on the frontend, 1 on the backend).
    for i in 0..10 {
        let c = Client::connect(client_opts(&raddr, &format!("c{i}"))).unwrap();
        c.wait_connected(WAIT).await.unwrap();
        c.close().await;
    }
    until("the drops counted", || router.dropped_events() >= 21 - 4).await;
    let mut events = router.events().unwrap();
    let mut queued = 0;
    while events.try_recv().is_ok() {
        queued += 1;
    }
    assert_eq!(queued, 4);
    // Relaying went on throughout, and goes on.
    let c = Client::connect(client_opts(&raddr, "last")).unwrap();
    c.wait_connected(WAIT).await.unwrap();
    until("last routed", || has_route(&server, "last")).await;
    let r = c.request(json!({"op": "echo", "n": 1})).await.unwrap();
    assert_eq!(r["n"], 1);
    let ev = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ev, RouterEvent::Connect { .. }), "{ev:?}");
    c.close().await;
    router.close().await;
    server.close().await;
}

/// Defect: the router kept its event queue's sender for its own lifetime, so the events never
/// ended after `close()`, and the C adapter, which forwards them until they end, hung in
/// `iris_router_free`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_events_end_when_it_closes() {
    let server = server(server_options().uuid("backend")).await;
    let router = router_to(&server.local_addr().to_string(), "127.0.0.1:0").await;
    let mut events = router.events().unwrap();
    router.close().await;
    let ended = tokio::time::timeout(WAIT, async { while events.recv().await.is_some() {} }).await;
    assert!(
        ended.is_ok(),
        "the router's events did not end after close()"
    );
    server.close().await;
}
