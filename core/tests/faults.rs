//! Faults: a peer that stops reading, TLS cut without close_notify, a server going away with
//! requests in flight, and a client vanishing: everything settles once and is freed.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use iris_rpc::{Client, Error, Event, Limits, Options, Server};
use serde_json::json;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_disconnected_and_its_requests_settle() {
    let mut opts = server_options();
    opts.limits = Limits {
        max_queue_bytes: 1 << 20,
        ..Limits::default()
    };
    let server = Arc::new(server(opts).await);
    let mut events = server.events();
    let good = Good::start(&server).await;
    let raw = raw_handshake(&server, SECRET, true, "sleeper")
        .await
        .unwrap();
    next_matching(
        &mut events,
        |e| matches!(e, Event::Connect { peer } if peer.uuid() == "sleeper"),
    )
    .await;
    let s = server.clone();
    let pending =
        tokio::spawn(async move { s.request_to("sleeper", json!({"op": "never"})).await });
    let body = "x".repeat(1024);
    let mut refused = None;
    for _ in 0..100_000 {
        if let Err(e) = server.dispatch_to("sleeper", json!({"op": "spam", "body": body})) {
            refused = Some(e);
            break;
        }
        tokio::task::yield_now().await;
    }
    let refused = refused.expect("the queue never filled");
    assert!(
        matches!(refused, Error::LimitExceeded(_) | Error::NoSuchStream(_)),
        "{refused:?}"
    );
    let Event::Disconnect { reason, .. } = next_matching(
        &mut events,
        |e| matches!(e, Event::Disconnect { peer, .. } if peer.uuid() == "sleeper"),
    )
    .await
    else {
        unreachable!()
    };
    assert!(reason.contains("not reading"), "{reason}");
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    drop(raw);
    assert!(good.stop().await > 0);
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cut_without_close_notify_ends_the_stream_cleanly() {
    let server = Arc::new(server(server_options()).await);
    let mut events = server.events();
    let raw = raw_handshake(&server, SECRET, true, "cut").await.unwrap();
    next_matching(&mut events, |e| matches!(e, Event::Connect { .. })).await;
    let s = server.clone();
    let pending = tokio::spawn(async move { s.request_to("cut", json!({"op": "never"})).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Drop TCP under TLS: FIN without close_notify.
    let (tcp, _) = raw.io.into_inner();
    drop(tcp);
    let Event::Disconnect { reason, .. } =
        next_matching(&mut events, |e| matches!(e, Event::Disconnect { .. })).await
    else {
        unreachable!()
    };
    assert!(!reason.is_empty());
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    assert!(server.peers().is_empty());
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_gone_mid_traffic_settles_everything_once_and_client_reconnects() {
    let server = server(server_options()).await;
    let addr = server.local_addr().to_string();
    server.handle("slow", |req| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(req.msg.value())
    });
    let seen = Arc::new(Mutex::new(Vec::<u64>::new()));
    let s = seen.clone();
    server.on("seq", move |m, _, _| {
        s.lock().unwrap().push(m.value()["n"].as_u64().unwrap())
    });
    let mut o = Options::new(SECRET).address(addr.clone()).uuid("c");
    o.reconnect_initial = Duration::from_millis(100);
    let client = Arc::new(Client::connect(o).unwrap());
    let mut cev = client.events();
    client.wait_connected(WAIT).await.unwrap();

    let settled = Arc::new(AtomicUsize::new(0));
    let mut requests = Vec::new();
    for i in 0..200 {
        let c = client.clone();
        let settled = settled.clone();
        requests.push(tokio::spawn(async move {
            let r = c.request(json!({"op": "slow", "i": i})).await;
            settled.fetch_add(1, Ordering::SeqCst);
            r
        }));
    }
    let mut sent_ok = HashSet::new();
    for n in 0..1000u64 {
        if client.dispatch(json!({"op": "seq", "n": n})).is_ok() {
            sent_ok.insert(n);
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.close().await;
    let mut disconnected = 0;
    for r in requests {
        match r.await.unwrap() {
            Ok(_) => {}
            Err(Error::Disconnected { .. }) => disconnected += 1,
            Err(e) => panic!("unexpected settlement {e:?}"),
        }
    }
    assert_eq!(
        settled.load(Ordering::SeqCst),
        200,
        "every request settles exactly once"
    );
    assert!(disconnected > 0);
    next_matching(&mut cev, |e| matches!(e, Event::Disconnect { .. })).await;

    // While down, sending fails loudly.
    let err = client
        .dispatch(json!({"op": "seq", "n": 5000}))
        .unwrap_err();
    assert!(matches!(err, Error::NotConnected { .. }), "{err:?}");
    let err = client.request(json!({"op": "slow"})).await.unwrap_err();
    assert!(matches!(err, Error::NotConnected { .. }), "{err:?}");

    let server2 = Server::bind(server_options().port(addr.as_str()))
        .await
        .unwrap();
    let seen2 = seen.clone();
    server2.on("seq", move |m, _, _| {
        seen2.lock().unwrap().push(m.value()["n"].as_u64().unwrap())
    });
    next_matching(&mut cev, |e| matches!(e, Event::Connect { .. })).await;
    client.dispatch(json!({"op": "seq", "n": 6000})).unwrap();
    tokio::time::timeout(WAIT, async {
        while !seen.lock().unwrap().contains(&6000) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    let unique: HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "an event was delivered twice");
    assert!(unique.iter().all(|n| sent_ok.contains(n) || *n == 6000));
    client.close().await;
    server2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_leaves_nothing_behind() {
    let server = Arc::new(server(server_options()).await);
    let mut events = server.events();
    // Warm up once so lazily created runtime resources are in the baseline.
    let warm = raw_handshake(&server, SECRET, true, "warm").await.unwrap();
    next_matching(&mut events, |e| matches!(e, Event::Connect { .. })).await;
    drop(warm);
    next_matching(&mut events, |e| matches!(e, Event::Disconnect { .. })).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fds = open_fds();
    let tasks = server.stats().tasks;

    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(
            raw_handshake(&server, SECRET, true, &format!("v{i}"))
                .await
                .unwrap(),
        );
    }
    let mut pending = Vec::new();
    for i in 0..20 {
        next_matching(&mut events, |e| matches!(e, Event::Connect { .. })).await;
        let s = server.clone();
        pending.push(tokio::spawn(async move {
            s.request_to(&format!("v{i}"), json!({"op": "never"})).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.stats().pending, 20);
    // Half send a request of their own first, then all vanish abruptly.
    for (i, c) in clients.iter_mut().enumerate() {
        if i % 2 == 0 {
            let mut out = Vec::new();
            c.est
                .sealer
                .seal(r#"{"_req":"r1","req":{"op":"echo"}}"#, &mut out)
                .unwrap();
            let _ = c.io.write_all(&out).await;
        }
    }
    for c in clients {
        let (tcp, _) = c.io.into_inner();
        drop(tcp);
    }
    for p in pending {
        assert!(matches!(p.await.unwrap(), Err(Error::Disconnected { .. })));
    }
    tokio::time::timeout(WAIT, async {
        loop {
            let s = server.stats();
            if s.streams == 0
                && s.connections == 0
                && s.pending == 0
                && s.tasks == tasks
                && open_fds() <= fds
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "not freed: {:?}, fds {} > {fds}",
            server.stats(),
            open_fds()
        )
    });
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_detection_drops_a_silent_stream() {
    let opts = server_options()
        .ping_freq(Duration::from_millis(100))
        .dead_peer_detection(true);
    let server = server(opts).await;
    let mut events = server.events();
    // A pinging client stays; a silent raw one is dropped.
    let pinging = Client::connect(
        Options::new(SECRET)
            .address(server.local_addr().to_string())
            .uuid("pinging")
            .ping_freq(Duration::from_millis(100)),
    )
    .unwrap();
    pinging.wait_connected(WAIT).await.unwrap();
    let _silent = raw_handshake(&server, SECRET, true, "silent")
        .await
        .unwrap();
    let Event::Disconnect { peer, reason } =
        next_matching(&mut events, |e| matches!(e, Event::Disconnect { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(peer.uuid(), "silent");
    assert!(reason.contains("dead peer"), "{reason}");
    assert!(server.peers().iter().any(|p| p.uuid() == "pinging"));
    pinging.close().await;
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_answered_with_an_error_and_the_stream_goes_on() {
    let srv = server(server_options()).await;
    // Panics on its first poll (run inline on the stream's reader) ...
    srv.handle("boom", |_req| async move {
        panic!("handler bug");
    });
    // ... after waiting (run in a task of its own) ...
    srv.handle("late-boom", |_req| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        panic!("handler bug after a wait");
    });
    let mut o = Options::new(SECRET).address(srv.local_addr().to_string());
    o.reconnect_initial = Duration::from_millis(50);
    let cli = Client::connect(o).unwrap();
    cli.wait_connected(WAIT).await.unwrap();
    for op in ["boom", "late-boom"] {
        match cli.request(json!({"op": op})).await {
            Err(Error::Remote(e)) => assert!(e.contains("panicked"), "{op}: {e}"),
            other => panic!("{op}: {other:?}"),
        }
    }
    // ... and the same stream still answers.
    let peer = srv.peers()[0].clone();
    assert_eq!(
        cli.request(json!({"op": "echo", "n": 1})).await.unwrap(),
        json!({"op": "echo", "n": 1})
    );
    assert!(srv.peers()[0].same_stream(&peer));
    cli.close().await;
    srv.close().await;
}
