//! The session's promises under races and misbehaving users: requests settle exactly once and
//! on time whatever the event consumer does, user code that panics costs one call, every
//! `Connect` has its `Disconnect`, and one sender's messages leave in call order.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use iris_rpc::{Client, ErrorKind, Event, Options, Server};
use serde_json::json;

fn client_options(server: &Server) -> Options {
    Options::new(SECRET).address(server.local_addr().to_string())
}

/// Defect: request deadlines were a branch of the reader's `select!`, which waited while the
/// event queue was full, so a consumer that stopped draining froze every timeout.
#[tokio::test]
async fn a_request_times_out_while_the_event_consumer_is_stalled() {
    let server = server(server_options()).await;
    let mut opts = client_options(&server);
    opts.limits.event_queue = 2;
    let (client, _stalled) = Client::connect_with_events(opts).unwrap();
    client.wait_connected(WAIT).await.unwrap();
    // The client is up once it has sent its `rpc::init`; the server only once it has read it.
    until("the server side of the stream", || server.is_connected()).await;
    // Fill the client's event queue (nobody drains `_stalled`), so its reader waits for room.
    for n in 0..64 {
        server.dispatch(json!({"op": "flood", "n": n})).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The answer cannot be read while the reader waits, so only the deadline can settle it.
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        WAIT,
        client.request(json!({"op": "echo", "op_timeout": 300})),
    )
    .await
    .expect("the request never settled: its deadline did not fire");
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Timeout);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // And `peer.end()` still ends the stream although the reader is stuck in delivery.
    for p in client.peers() {
        p.end();
    }
    until("the stalled stream to end", || !client.is_connected()).await;
    client.close().await;
    server.close().await;
}

/// Defect: a listener, digest or filter that panicked killed its connection task: the stream
/// stayed registered, its requests hung.
#[tokio::test]
async fn panicking_listeners_digests_and_filters_cost_one_call() {
    let (server, mut sev) = Server::bind_with_events(server_options()).await.unwrap();
    server.handle("echo", |req| async move { Ok(req.msg.value()) });
    server.on("boom", |_, _, _| panic!("listener boom"));
    server.digest(|m, _, _| {
        if m.op() == Some("dboom") {
            panic!("digest boom")
        }
    });
    server.filter(|m, _| {
        if m.op() == Some("fboom") {
            panic!("filter boom")
        }
        Ok(())
    });
    let client = Client::connect(client_options(&server)).unwrap();
    client.wait_connected(WAIT).await.unwrap();
    for op in ["boom", "dboom", "fboom"] {
        client.dispatch(json!({ "op": op })).unwrap();
        let ev = next_matching(&mut sev, |e| matches!(e, Event::Error { .. })).await;
        let Event::Error { error, .. } = ev else {
            unreachable!()
        };
        assert_eq!(error.kind(), ErrorKind::Handler, "{error}");
    }
    // A request refused by a panicking filter gets an error answer, not silence.
    let refused = client.request(json!({"op": "fboom"})).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Remote, "{refused}");
    // The stream lives on and still answers.
    let v = client.request(json!({"op": "echo", "x": 1})).await.unwrap();
    assert_eq!(v["x"], 1);
    assert_eq!(server.stats().streams, 1);
    assert_eq!(server.stats().pending, 0);
    client.close().await;
    server.close().await;
}

/// Defect: `Client::close()` raced the stream's serving against shutdown and could drop it
/// without a `Disconnect`, leaving `is_connected()`/`peers()` wrong.
#[tokio::test]
async fn every_connect_has_exactly_one_disconnect_through_close() {
    let server = server(server_options()).await;
    for round in 0..30 {
        let (client, mut events) = Client::connect_with_events(client_options(&server)).unwrap();
        client.wait_connected(WAIT).await.unwrap();
        if round % 2 == 0 {
            // Sometimes with a request in flight.
            let _ = client.request(json!({"op": "echo"})).await;
        }
        client.close().await;
        assert!(!client.is_connected(), "round {round}: still connected");
        assert!(client.peers().is_empty(), "round {round}: peers left");
        let (mut connects, mut disconnects) = (0, 0);
        while let Some(ev) = events.next().await {
            match ev {
                Event::Connect { .. } => connects += 1,
                Event::Disconnect { .. } => disconnects += 1,
                _ => {}
            }
        }
        assert_eq!((connects, disconnects), (1, 1), "round {round}");
    }
    server.close().await;
}

/// A receiver installed after streams came up starts with their `Connect`, and a second
/// receiver gets them again, once each.
#[tokio::test]
async fn a_late_receiver_is_told_of_streams_already_up() {
    let server = server(server_options()).await;
    let client = Client::connect(client_options(&server)).unwrap();
    client.wait_connected(WAIT).await.unwrap();
    for _ in 0..2 {
        let mut events = client.events();
        let ev = next_matching(&mut events, |_| true).await;
        assert!(matches!(ev, Event::Connect { .. }), "{ev:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(events.try_next().is_none(), "a second Connect");
    }
    server.close().await;
    let mut events = client.events();
    let first = next_matching(&mut events, |_| true).await;
    assert!(matches!(first, Event::Connect { .. }) || matches!(first, Event::Disconnect { .. }));
    client.close().await;
}

/// Defect (parity): requests were written when their future was first polled, so a burst of
/// `dispatch` and `request` calls reached the peer out of order.
#[tokio::test]
async fn one_senders_events_and_requests_leave_in_call_order() {
    let server = Server::bind(server_options()).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    server.digest(move |m, _, _| s.lock().unwrap().push(m.value()["n"].as_u64().unwrap()));
    let s = seen.clone();
    server.handle("r", move |req| {
        s.lock()
            .unwrap()
            .push(req.msg.value()["n"].as_u64().unwrap());
        async { Ok(json!(true)) }
    });
    let client = Client::connect(client_options(&server)).unwrap();
    client.wait_connected(WAIT).await.unwrap();
    const N: u64 = 5000;
    let mut replies = Vec::new();
    for n in 0..N {
        if n % 3 == 0 {
            replies.push(client.request(json!({"op": "r", "n": n})));
        } else {
            client.dispatch(json!({"op": "e", "n": n})).unwrap();
        }
    }
    for r in replies {
        r.await.unwrap();
    }
    until("every message", || seen.lock().unwrap().len() == N as usize).await;
    let seen = seen.lock().unwrap().clone();
    let first_out_of_order = seen.iter().enumerate().find(|(i, n)| *i as u64 != **n);
    assert!(
        first_out_of_order.is_none(),
        "out of order at {first_out_of_order:?}"
    );
    client.close().await;
    server.close().await;
}

/// Defect: a request made while its stream went away (between the stream's pending table being
/// failed and the writer closing) was inserted after the table was drained and never settled.
/// Here streams end over and over while requests are being made: each settles.
#[tokio::test]
async fn requests_racing_the_end_of_their_stream_all_settle() {
    let server = server(server_options()).await;
    let mut opts = client_options(&server);
    opts.reconnect_initial = Duration::from_millis(10);
    let client = Arc::new(Client::connect(opts).unwrap());
    let mut settled = 0;
    for _ in 0..40 {
        client.wait_connected(WAIT).await.unwrap();
        let c = client.clone();
        let burst = tokio::spawn(async move {
            let replies: Vec<_> = (0..50).map(|_| c.request(json!({"op": "echo"}))).collect();
            let mut n = 0;
            for r in replies {
                // Without the fix an orphaned request never settles: the generous bound
                // catches it.
                tokio::time::timeout(WAIT, r)
                    .await
                    .expect("a request never settled")
                    .ok();
                n += 1;
            }
            n
        });
        tokio::task::yield_now().await;
        for p in server.peers() {
            p.end();
        }
        settled += burst.await.unwrap();
    }
    assert_eq!(settled, 40 * 50);
    assert_eq!(client.stats().pending, 0);
    client.close().await;
    server.close().await;
}
