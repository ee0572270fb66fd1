//! Our Client with our Server on loopback, cipher on and off: the legacy semantics end to end.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{next_matching, WAIT};
use iris_rpc::{error_object, Certificates, Client, Error, Event, Events, Options, Server};
use serde_json::json;

async fn server(secret: &str, cipher: bool) -> Server {
    Server::bind(
        Options::new(secret)
            .port("127.0.0.1:0")
            .uuid("srv-uuid")
            .designation("srv")
            .cipher(cipher)
            .certificates(Certificates::self_signed().unwrap()),
    )
    .await
    .unwrap()
}

fn client_opts(secret: &str, server: &Server, cipher: bool) -> Options {
    let mut o = Options::new(secret)
        .address(server.local_addr().to_string())
        .uuid("cli-uuid")
        .designation("cli")
        .cipher(cipher);
    o.reconnect_initial = Duration::from_millis(50);
    o
}

async fn pair(cipher: bool) -> (Server, Events, Client, Events) {
    let srv = server("secret", cipher).await;
    let mut sev = srv.events();
    let cli = Client::connect(client_opts("secret", &srv, cipher)).unwrap();
    let mut cev = cli.events();
    let ev = next_matching(&mut sev, |e| matches!(e, Event::Connect { .. })).await;
    if let Event::Connect { peer } = ev {
        assert_eq!(peer.uuid(), "cli-uuid");
        assert_eq!(peer.designation(), Some("cli"));
        assert_eq!(peer.cipher(), cipher);
    }
    let ev = next_matching(&mut cev, |e| matches!(e, Event::Connect { .. })).await;
    if let Event::Connect { peer } = ev {
        assert_eq!(peer.uuid(), "srv-uuid");
        assert_eq!(peer.designation(), Some("srv"));
    }
    (srv, sev, cli, cev)
}

async fn events_and_requests(cipher: bool) {
    let (srv, mut sev, cli, mut cev) = pair(cipher).await;

    // Events both ways, by op, with digest and listeners.
    let heard = Arc::new(AtomicUsize::new(0));
    let h = heard.clone();
    srv.on("hello", move |msg, uuid, peer| {
        assert_eq!(msg.op(), Some("hello"));
        assert_eq!(uuid, "cli-uuid");
        assert_eq!(peer.uuid(), "cli-uuid");
        h.fetch_add(1, Ordering::SeqCst);
    });
    let digested = Arc::new(AtomicUsize::new(0));
    let d = digested.clone();
    srv.digest(move |_, _, _| {
        d.fetch_add(1, Ordering::SeqCst);
    });
    cli.dispatch(json!({"op": "hello", "text": "hi ✓"}))
        .unwrap();
    let ev = next_matching(&mut sev, |e| matches!(e, Event::Message { .. })).await;
    let Event::Message { msg, uuid, .. } = ev else {
        unreachable!()
    };
    assert_eq!(msg.as_str(), r#"{"op":"hello","text":"hi ✓"}"#);
    assert_eq!(uuid, "cli-uuid");
    assert_eq!(heard.load(Ordering::SeqCst), 1);
    assert_eq!(digested.load(Ordering::SeqCst), 1);

    srv.dispatch_to("cli-uuid", json!({"op": "world"})).unwrap();
    let ev = next_matching(&mut cev, |e| matches!(e, Event::Message { .. })).await;
    let Event::Message { msg, uuid, .. } = ev else {
        unreachable!()
    };
    assert_eq!(msg.op(), Some("world"));
    assert_eq!(uuid, "srv-uuid");

    // Requests: answered, error object, no handler, too many handlers, timeout.
    srv.handle("add", |req| async move {
        let v = req.msg.value();
        Ok(json!({"sum": v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0)}))
    });
    srv.handle("fail", |_| async {
        Err(error_object("TypeError", "bad input"))
    });
    srv.handle("twice", |_| async { Ok(json!(1)) });
    srv.handle("twice", |_| async { Ok(json!(2)) });
    srv.handle("slow", |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(json!(null))
    });
    drop(sev); // no event sink: unhandled requests get the legacy error
    let sum = cli
        .request(json!({"op": "add", "a": 2, "b": 3}))
        .await
        .unwrap();
    assert_eq!(sum, json!({"sum": 5}));
    let err = cli.request(json!({"op": "fail"})).await.unwrap_err();
    let Error::Remote(text) = &err else {
        panic!("{err:?}")
    };
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(v["_Error"], true);
    assert_eq!(v["name"], "TypeError");
    assert_eq!(v["message"], "bad input");
    let err = cli.request(json!({"op": "nosuch"})).await.unwrap_err();
    assert_eq!(
        err.to_legacy_value(),
        json!({"error": "No such handler 'nosuch'"})
    );
    let err = cli.request(json!({"op": "twice"})).await.unwrap_err();
    assert_eq!(
        err.to_legacy_value(),
        json!({"error": "Too many handlers for 'twice'"})
    );
    let started = std::time::Instant::now();
    let err = cli
        .request(json!({"op": "slow", "op_timeout": 300}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                timeout_ms: 300,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let legacy = err.to_legacy_value();
    assert_eq!(legacy["error"], "Connection Timed Out");
    assert_eq!(legacy["req"]["op"], "slow");

    // Server-initiated request to the client, answered from the client's event receiver.
    let c2 = tokio::spawn(async move {
        let ev = next_matching(&mut cev, |e| matches!(e, Event::Request(_))).await;
        let Event::Request(req) = ev else {
            unreachable!()
        };
        assert_eq!(req.msg.op(), Some("whoami"));
        req.respond(Ok(json!({"uuid": "cli-uuid"})));
        cev
    });
    let who = srv
        .request_to("cli-uuid", json!({"op": "whoami"}))
        .await
        .unwrap();
    assert_eq!(who, json!({"uuid": "cli-uuid"}));
    let mut cev = c2.await.unwrap();

    // Unknown uuid.
    let err = srv.dispatch_to("nobody", json!({"op": "x"})).unwrap_err();
    assert_eq!(
        err.to_legacy_value(),
        json!({"error": "iris-rpc: no such stream present"})
    );

    // Disconnect settles pending requests.
    let cli = Arc::new(cli);
    let c = cli.clone();
    let pending = tokio::spawn(async move { c.request(json!({"op": "slow"})).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    srv.close().await;
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    next_matching(&mut cev, |e| matches!(e, Event::Disconnect { .. })).await;
    cli.close().await;
    assert!(cev.next().await.is_none() || cev.next().await.is_none());
}

#[tokio::test]
async fn events_and_requests_cipher_on() {
    events_and_requests(true).await;
}

#[tokio::test]
async fn events_and_requests_cipher_off() {
    events_and_requests(false).await;
}

#[tokio::test]
async fn wrong_secret_is_refused_both_ways() {
    let srv = server("right", true).await;
    let mut sev = srv.events();
    let cli = Client::connect(client_opts("wrong", &srv, true)).unwrap();
    let mut cev = cli.events();
    let ev = next_matching(&mut cev, |e| matches!(e, Event::Error { .. })).await;
    let Event::Error { error, .. } = ev else {
        unreachable!()
    };
    assert_eq!(error.kind(), iris_rpc::ErrorKind::Auth, "{error}");
    let ev = next_matching(&mut sev, |e| matches!(e, Event::Error { .. })).await;
    let Event::Error { error, .. } = ev else {
        unreachable!()
    };
    assert_eq!(error.kind(), iris_rpc::ErrorKind::Auth, "{error}");
    assert!(!srv.is_connected() && !cli.is_connected());
    cli.close().await;
    srv.close().await;
}

#[tokio::test]
async fn plain_client_refused_by_cipher_server() {
    let srv = server("s", true).await;
    let mut sev = srv.events();
    let cli = Client::connect(client_opts("s", &srv, false)).unwrap();
    let ev = next_matching(&mut sev, |e| matches!(e, Event::Error { .. })).await;
    let Event::Error { error, .. } = ev else {
        unreachable!()
    };
    assert!(error.to_string().contains("requires"), "{error}");
    cli.close().await;
    srv.close().await;
}

#[tokio::test]
async fn cipher_client_accepted_by_plain_server() {
    let srv = server("s", false).await;
    let mut sev = srv.events();
    let cli = Client::connect(client_opts("s", &srv, true)).unwrap();
    let ev = next_matching(&mut sev, |e| matches!(e, Event::Connect { .. })).await;
    let Event::Connect { peer } = ev else {
        unreachable!()
    };
    assert!(peer.cipher());
    cli.close().await;
    srv.close().await;
}

#[tokio::test]
async fn client_reconnects_after_server_restart() {
    let srv = server("s", true).await;
    let addr = srv.local_addr();
    let cli = Client::connect(client_opts("s", &srv, true)).unwrap();
    let mut cev = cli.events();
    cli.wait_connected(WAIT).await.unwrap();
    srv.close().await;
    next_matching(&mut cev, |e| matches!(e, Event::Disconnect { .. })).await;
    let err = cli.dispatch(json!({"op": "lost"})).unwrap_err();
    assert_eq!(err.kind(), iris_rpc::ErrorKind::NotConnected);
    let srv2 = Server::bind(
        Options::new("s")
            .port(addr.to_string())
            .certificates(Certificates::self_signed().unwrap()),
    )
    .await
    .unwrap();
    next_matching(&mut cev, |e| matches!(e, Event::Connect { .. })).await;
    assert!(cli.is_connected());
    cli.close().await;
    srv2.close().await;
}

#[tokio::test]
async fn filters_refuse_events_and_requests() {
    let (srv, mut sev, cli, _cev) = pair(true).await;
    srv.filter(|msg, _| {
        if msg.op() == Some("blocked") {
            Err(json!({"error": "blocked by filter"}))
        } else {
            Ok(())
        }
    });
    cli.dispatch(json!({"op": "blocked"})).unwrap();
    cli.dispatch(json!({"op": "allowed"})).unwrap();
    let ev = next_matching(&mut sev, |e| matches!(e, Event::Message { .. })).await;
    let Event::Message { msg, .. } = ev else {
        unreachable!()
    };
    assert_eq!(msg.op(), Some("allowed"));
    let err = cli.request(json!({"op": "blocked"})).await.unwrap_err();
    assert_eq!(err.to_legacy_value(), json!({"error": "blocked by filter"}));
    cli.close().await;
    srv.close().await;
}

#[tokio::test]
async fn close_settles_pending_with_closed() {
    let (srv, _sev, cli, _cev) = pair(false).await;
    srv.handle("slow", |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(json!(null))
    });
    let cli = Arc::new(cli);
    let c = cli.clone();
    let pending = tokio::spawn(async move { c.request(json!({"op": "slow"})).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    cli.close().await;
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Closed), "{err:?}");
    srv.close().await;
}

#[tokio::test]
async fn request_without_uuid_needs_exactly_one_stream() {
    let srv = server("s", true).await;
    let err = srv.request(json!({"op": "x"})).await.unwrap_err();
    assert_eq!(
        err.to_legacy_value()["error"],
        "RPC stream is not connected"
    );
    let c1 = Client::connect(client_opts("s", &srv, true).uuid("a")).unwrap();
    let c2 = Client::connect(client_opts("s", &srv, true).uuid("b")).unwrap();
    c1.wait_connected(WAIT).await.unwrap();
    c2.wait_connected(WAIT).await.unwrap();
    while srv.peers().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = srv.request(json!({"op": "x"})).await.unwrap_err();
    assert_eq!(
        err.to_legacy_value()["error"],
        "Multiple streams connected (not supported by RPC)"
    );
    assert_eq!(srv.dispatch(json!({"op": "all"})).unwrap(), 2);
    c1.close().await;
    c2.close().await;
    srv.close().await;
}

#[tokio::test]
async fn ping_reaches_listeners() {
    let srv = server("s", true).await;
    let mut o = client_opts("s", &srv, true).ping_freq(Duration::from_millis(50));
    o.ping_data = Some(json!({"iteration": 7}));
    let cli = Client::connect(o).unwrap();
    let mut sev = srv.events();
    let ev = next_matching(
        &mut sev,
        |e| matches!(e, Event::Message { msg, .. } if msg.op() == Some("ping")),
    )
    .await;
    let Event::Message { msg, .. } = ev else {
        unreachable!()
    };
    assert_eq!(msg.value(), json!({"op": "ping", "data": {"iteration": 7}}));
    cli.close().await;
    srv.close().await;
}

#[tokio::test]
async fn with_events_constructors_miss_nothing() {
    let (srv, mut sev) = Server::bind_with_events(
        Options::new("s")
            .port("127.0.0.1:0")
            .certificates(Certificates::self_signed().unwrap()),
    )
    .await
    .unwrap();
    assert!(matches!(sev.next().await, Some(Event::Listen { .. })));
    let (cli, mut cev) = Client::connect_with_events(client_opts("s", &srv, true)).unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, cev.next()).await.unwrap(),
        Some(Event::Connect { .. })
    ));
    // A per-call timeout overrides the default.
    srv.handle("slow", |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(json!(null))
    });
    let msg = iris_rpc::Message::new(&json!({"op": "slow"})).unwrap();
    let err = cli
        .request_raw_timeout(None, &msg, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                timeout_ms: 100,
                ..
            }
        ),
        "{err:?}"
    );
    cli.close().await;
    srv.close().await;
}
