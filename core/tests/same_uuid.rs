//! Two clients with one uuid (issue 14, item 5): legacy's server keeps both connected, keyed by
//! uuid with the newest winning (`streams[uuid] = stream`), so `dispatch(uuid)` and
//! `request(uuid)` reach the newest while the older one goes on working on its own stream. Ours
//! used to close the older one, which reconnected a second later and closed the newer: the two
//! flapped forever.

mod common;

use std::time::Duration;

use common::{next_matching, server_options, SECRET};
use iris_rpc::{Client, Event, Events, Options, Server};
use serde_json::json;

async fn twin(server: &Server, answer: &'static str) -> (Client, Events) {
    let (c, mut ev) = Client::connect_with_events(
        Options::new(SECRET)
            .address(server.local_addr().to_string())
            .uuid("twin"),
    )
    .unwrap();
    c.handle("who", move |_| async move { Ok(json!(answer)) });
    next_matching(&mut ev, |e| matches!(e, Event::Connect { .. })).await;
    (c, ev)
}

fn disconnects(ev: &mut Events) -> usize {
    let mut n = 0;
    while let Some(e) = ev.try_next() {
        if matches!(e, Event::Disconnect { .. }) {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn two_clients_with_one_uuid_both_stay_connected_and_the_newest_is_reached() {
    let server = common::server(server_options()).await;
    server.handle("add", |req| async move {
        let v = req.msg.value();
        Ok(json!(
            v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0)
        ))
    });
    let mut sev = server.events();
    let (older, mut older_ev) = twin(&server, "older").await;
    next_matching(&mut sev, |e| matches!(e, Event::Connect { .. })).await;
    let (newer, mut newer_ev) = twin(&server, "newer").await;
    next_matching(&mut sev, |e| matches!(e, Event::Connect { .. })).await;

    // Long enough for several reconnect rounds (1 s each) had either been closed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        disconnects(&mut older_ev),
        0,
        "the older client was disconnected"
    );
    assert_eq!(
        disconnects(&mut newer_ev),
        0,
        "the newer client was disconnected"
    );
    assert!(older.is_connected() && newer.is_connected());
    assert_eq!(server.stats().streams, 2);

    // dispatch(uuid) and request(uuid) reach the newest stream.
    assert_eq!(
        server
            .request_to("twin", json!({"op": "who"}))
            .await
            .unwrap(),
        json!("newer")
    );
    server.dispatch_to("twin", json!({"op": "note"})).unwrap();
    let ev = next_matching(&mut newer_ev, |e| matches!(e, Event::Message { .. })).await;
    let Event::Message { msg, .. } = ev else {
        unreachable!()
    };
    assert_eq!(msg.op(), Some("note"));
    // The older stream still works both ways. Its answer leaves the server after the note
    // above would have, on the same stream: had the note gone to the older client, it would
    // be in its events now.
    let sum = older
        .request(json!({"op": "add", "a": 2, "b": 3}))
        .await
        .unwrap();
    assert_eq!(sum, json!(5));
    while let Some(e) = older_ev.try_next() {
        assert!(
            !matches!(e, Event::Message { .. }),
            "the older client got {e:?}"
        );
    }

    // When the newest leaves, the older one is reached again (legacy forgot the uuid
    // altogether, leaving a connected peer unreachable).
    newer.close().await;
    next_matching(&mut sev, |e| matches!(e, Event::Disconnect { .. })).await;
    assert_eq!(
        server
            .request_to("twin", json!({"op": "who"}))
            .await
            .unwrap(),
        json!("older")
    );
    assert_eq!(server.stats().streams, 1);
    assert_eq!(disconnects(&mut older_ev), 0);

    older.close().await;
    next_matching(&mut sev, |e| matches!(e, Event::Disconnect { .. })).await;
    assert!(!server.is_connected());
    assert_eq!(server.stats().streams, 0);
    server.close().await;
}
