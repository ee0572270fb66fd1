//! Our server against a client written directly on the sans-IO protocol, to control exactly
//! what goes on the wire.

use std::sync::Arc;
use std::time::Duration;

use iris_rpc::protocol::{ClientConfig, ClientHandshake, Identity, Keys, LineBuffer, Step};
use iris_rpc::{Certificates, Event, Options, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

async fn server() -> Server {
    Server::bind(
        Options::new("secret")
            .port("127.0.0.1:0")
            .certificates(Certificates::self_signed().unwrap()),
    )
    .await
    .unwrap()
}

/// Connects and authenticates, returning the TLS stream, the buffer and the established
/// session; the final `rpc::init` line is returned unsent so callers control the last write.
async fn handshake(
    server: &Server,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    Vec<u8>,
    iris_rpc::protocol::Established,
) {
    let tls = iris_rpc::tls::client_config(None, false).unwrap();
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut io = TlsConnector::from(tls)
        .connect(iris_rpc::tls::server_name("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut hs = ClientHandshake::new(
        Arc::new(Keys::new("secret")),
        ClientConfig {
            identity: Identity {
                uuid: "raw".into(),
                designation: String::new(),
                mac: None,
            },
            cipher: true,
            signatures: true,
            routes: vec![],
            security: iris_rpc::Security::Legacy,
        },
    );
    io.write_all(&hs.hello()).await.unwrap();
    let mut lines = LineBuffer::new(1 << 20);
    loop {
        while let Some(line) = lines.next_line().unwrap() {
            match hs.on_line(line).unwrap() {
                Step::Send(out) => io.write_all(&out).await.unwrap(),
                Step::Done { send, established } => {
                    return (io, send.unwrap(), *established);
                }
                Step::Refuse { error, .. } => panic!("refused: {error}"),
            }
        }
        let n = io.read(lines.read_buf(4096)).await.unwrap();
        assert!(n > 0, "server closed during handshake");
        lines.filled(n);
    }
}

#[tokio::test]
async fn messages_in_the_same_segment_as_the_handshake_are_delivered() {
    let server = server().await;
    let mut events = server.events();
    let (mut io, init, mut est) = handshake(&server).await;
    // The last handshake line and two messages in one write.
    let mut out = init;
    est.sealer.seal(r#"{"op":"first"}"#, &mut out).unwrap();
    est.sealer.seal(r#"{"op":"second"}"#, &mut out).unwrap();
    io.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
            Ok(Some(Event::Message { msg, .. })) => got.push(msg.op().unwrap_or("").to_owned()),
            Ok(Some(_)) => {}
            other => panic!("expected messages, got {other:?}"),
        }
    }
    assert_eq!(got, ["first", "second"]);
    server.close().await;
}

#[tokio::test]
async fn a_thousand_pipelined_requests_in_one_write_are_all_answered_in_order() {
    // More lines than one reader pass works through before letting the writer go: the
    // answers leave in several writes, interleaved with the work, and none is lost or reordered.
    let server = server().await;
    server.handle("double", |req| async move {
        let n = req.msg.value()["n"].as_u64().unwrap_or(0);
        Ok(serde_json::json!({ "n": n * 2 }))
    });
    let (mut io, init, mut est) = handshake(&server).await;
    let count = 1000u64;
    let mut out = init;
    for n in 0..count {
        let line = format!(r#"{{"_req":"r{n}","req":{{"op":"double","n":{n}}}}}"#);
        est.sealer.seal(&line, &mut out).unwrap();
    }
    io.write_all(&out).await.unwrap();
    let mut lines = LineBuffer::new(1 << 20);
    let mut plain = Vec::new();
    let mut next = 0u64;
    loop {
        while let Some(line) = lines.next_line().unwrap() {
            let parsed = est.opener.open(line, &mut plain).unwrap();
            let iris_rpc::protocol::Kind::Response { id, err, resp } = parsed.kind else {
                continue;
            };
            assert_eq!(id.as_deref(), Some(format!("r{next}").as_str()));
            assert!(
                err.is_some_and(|e| e.get() == "null"),
                "unexpected error {err:?}"
            );
            let resp: serde_json::Value = serde_json::from_str(resp.unwrap().get()).unwrap();
            assert_eq!(resp["n"], next * 2);
            next += 1;
        }
        if next == count {
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(lines.read_buf(65536)))
            .await
            .unwrap_or_else(|_| panic!("answers stopped coming after {next}"))
            .unwrap();
        assert!(n > 0, "server closed after {next} answers");
        lines.filled(n);
    }
    server.close().await;
}
