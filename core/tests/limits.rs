//! Each configurable limit, crossed: the clear error it gives and what keeps working.

mod common;

use std::time::Duration;

use common::*;
use iris_rpc::{Client, Error, Event, Limits, Options};
use serde_json::json;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn max_pending_refuses_the_request_over_the_limit() {
    let server = server(server_options()).await;
    server.handle("hold", |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(json!(null))
    });
    let mut o = Options::new(SECRET).address(server.local_addr().to_string());
    o.limits.max_pending = 3;
    let client = std::sync::Arc::new(Client::connect(o).unwrap());
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let c = client.clone();
        held.push(tokio::spawn(async move {
            c.request(json!({"op": "hold"})).await
        }));
    }
    while client.stats().pending < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = client.request(json!({"op": "echo"})).await.unwrap_err();
    assert!(
        matches!(err, Error::LimitExceeded(ref m) if m.contains("3 requests")),
        "{err:?}"
    );
    client.close().await;
    for h in held {
        assert!(matches!(h.await.unwrap(), Err(Error::Closed)));
    }
    server.close().await;
}

#[tokio::test]
async fn max_connections_refuses_the_extra_connection() {
    let mut opts = server_options();
    opts.limits.max_connections = Some(1);
    let server = server(opts).await;
    let first = raw_handshake(&server, SECRET, true, "first").await;
    assert!(first.is_ok());
    let second = raw_handshake(&server, SECRET, true, "second").await;
    assert!(second.is_err(), "a second connection got in");
    drop(first);
    // Once the first is gone, a new one is accepted again.
    let mut again = None;
    for _ in 0..100 {
        if let Ok(r) = raw_handshake(&server, SECRET, true, "third").await {
            again = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some());
    server.close().await;
}

#[tokio::test]
async fn max_line_is_configurable_and_closes_the_stream() {
    let mut opts = server_options();
    opts.limits.max_line = 1024;
    let server = server(opts).await;
    let mut events = server.events();
    let mut raw = raw_handshake(&server, SECRET, true, "long")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    raw.io.write_all(&[b'a'; 2048]).await.unwrap();
    let (_, got) = until_closed(&mut raw.io, Duration::from_secs(10)).await;
    assert_eq!(got, 0);
    let reason = loop {
        match events.next().await {
            Some(Event::Disconnect { reason, .. }) => break reason,
            Some(_) => {}
            None => panic!("closed"),
        }
    };
    assert!(reason.contains("1024 byte limit"), "{reason}");
    server.close().await;
}

#[tokio::test]
async fn a_full_event_queue_pauses_reading_and_loses_nothing() {
    let mut opts = server_options();
    opts.limits.event_queue = 8;
    let server = server(opts).await;
    let mut events = server.events();
    let client =
        Client::connect(Options::new(SECRET).address(server.local_addr().to_string())).unwrap();
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    for n in 0..500 {
        client.dispatch(json!({"op": "n", "n": n})).unwrap();
    }
    // Nobody reads for a while: the server stops reading instead of buffering.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got = Vec::new();
    while got.len() < 500 {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
            Ok(Some(Event::Message { msg, .. })) => got.push(msg.value()["n"].as_u64().unwrap()),
            Ok(Some(_)) => {}
            other => panic!("events stopped after {}: {other:?}", got.len()),
        }
    }
    assert_eq!(got, (0..500).collect::<Vec<_>>());
    client.close().await;
    server.close().await;
}

#[test]
fn zero_limits_are_configuration_errors() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for f in [
            (|l: &mut Limits| l.max_line = 0) as fn(&mut Limits),
            |l| l.max_pending = 0,
            |l| l.max_queue_bytes = 0,
            |l| l.event_queue = 0,
            |l| l.dead_peer_timeout = Some(Duration::ZERO),
        ] {
            let mut o = server_options();
            f(&mut o.limits);
            let err = iris_rpc::Server::bind(o).await.unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err:?}");
        }
    });
}
