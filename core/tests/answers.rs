//! Answers as legacy callbacks see them (issue 14, item 3): a handler's `err` and `resp` go on
//! the wire as legacy's `JSON.stringify` writes them (`cb()` is `{"_resp":ID}`, null kept
//! apart from absent), and `request_answer` hands both back exactly, even when `err` is set;
//! the same through a Router. And `Server::stop_listening` (legacy `tlsServer.close()`).

mod common;

use std::time::{Duration, Instant};

use common::{next_matching, server_options, SECRET};
use iris_rpc::{Backend, Client, Error, Event, Message, Options, Router, Server};
use serde_json::json;

/// `(case, err, resp)`: what the server answers to a request with that `case`.
const CASES: [(&str, Option<&str>, Option<&str>); 5] = [
    ("none", None, None),
    ("false-x", Some("false"), Some("\"x\"")),
    ("null-null", Some("null"), Some("null")),
    (
        "partial",
        Some(r#"{"error":"e"}"#),
        Some(r#"{"partial":1}"#),
    ),
    ("undefined-5", None, Some("5")),
];

/// A server answering each request as its `case` says (requests no handler takes arrive as
/// events).
async fn answering_server() -> Server {
    let (server, mut sev) = Server::bind_with_events(server_options()).await.unwrap();
    tokio::spawn(async move {
        while let Some(ev) = sev.next().await {
            let Event::Request(req) = ev else { continue };
            let case = req.msg.value()["case"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let (_, _, _, responder) = req.into_parts();
            let (_, err, resp) = CASES
                .iter()
                .find(|c| c.0 == case)
                .copied()
                .unwrap_or(CASES[4]);
            responder.respond_exact(err, resp);
        }
    });
    server
}

fn ask(case: &str) -> Message {
    Message::new(&json!({"op": "x", "case": case})).unwrap()
}

#[tokio::test]
async fn answers_through_a_router_are_relayed_as_given() {
    let server = answering_server().await;
    let backend = Options::new(SECRET)
        .address(server.local_addr().to_string())
        .uuid("router");
    let router = Router::start(
        server_options().uuid("router-front"),
        Backend::Client(backend),
    )
    .await
    .unwrap();
    let client = Client::connect(
        Options::new(SECRET)
            .address(router.local_addr().to_string())
            .uuid("cli"),
    )
    .unwrap();
    client
        .wait_connected(Duration::from_secs(15))
        .await
        .unwrap();
    for (case, err, resp) in CASES {
        let since = Instant::now();
        // The router's backend link may still be coming up.
        let a = loop {
            let a = client.request_answer(None, &ask(case)).await.unwrap();
            if !a.sent_err().is_some_and(|e| e.contains("not connected")) {
                break a;
            }
            assert!(since.elapsed() < Duration::from_secs(15), "no backend");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!((a.sent_err(), a.sent_resp()), (err, resp), "{case}");
    }
    client.close().await;
    router.close().await;
    server.close().await;
}

#[tokio::test]
async fn answers_come_back_exactly_as_the_handler_gave_them() {
    let server = answering_server().await;
    let client = Client::connect(
        Options::new(SECRET)
            .address(server.local_addr().to_string())
            .uuid("cli"),
    )
    .unwrap();
    client
        .wait_connected(Duration::from_secs(15))
        .await
        .unwrap();

    for (case, err, resp) in CASES {
        let a = client.request_answer(None, &ask(case)).await.unwrap();
        assert_eq!((a.sent_err(), a.sent_resp()), (err, resp), "{case}");
    }
    // The plain request keeps its rules: a non-null err is Error::Remote, null resp is none.
    let e = client.request_raw(None, &ask("partial")).await.unwrap_err();
    assert!(
        matches!(e, Error::Remote(ref t) if &**t == r#"{"error":"e"}"#),
        "{e:?}"
    );
    let e = client.request_raw(None, &ask("false-x")).await.unwrap_err();
    assert!(
        matches!(e, Error::Remote(ref t) if &**t == "false"),
        "{e:?}"
    );
    let ok = client.request_raw(None, &ask("none")).await.unwrap();
    assert_eq!(ok.raw(), None);
    let ok = client.request_raw(None, &ask("null-null")).await.unwrap();
    assert_eq!(ok.raw(), None);
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn stop_listening_refuses_new_connections_and_keeps_the_streams_up() {
    let server = common::server(server_options()).await;
    let mut sev = server.events();
    let client = Client::connect(
        Options::new(SECRET)
            .address(server.local_addr().to_string())
            .uuid("cli"),
    )
    .unwrap();
    next_matching(&mut sev, |e| matches!(e, Event::Connect { .. })).await;
    server.stop_listening();
    let addr = server.local_addr();
    let since = Instant::now();
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(since.elapsed() < Duration::from_secs(5), "still accepting");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let echoed = client.request(json!({"op": "echo", "n": 1})).await.unwrap();
    assert_eq!(echoed["n"], 1);
    assert!(client.is_connected());
    client.close().await;
    server.close().await;
}
