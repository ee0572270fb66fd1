//! `iris-rpc demo`: a server and a client on loopback, with a generated certificate and
//! secret, showing events, requests, an error and a timeout.

use std::time::{Duration, Instant};

use iris_rpc::{error_object, Certificates, Client, Error, Event, Options, Server};
use rand::RngCore;
use serde_json::json;

/// A random 32-byte secret, as hex.
fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn line(who: &str, text: impl std::fmt::Display) {
    println!("[{who:>6}] {text}");
}

/// Runs the demo; every step is printed as it happens.
pub async fn run() -> Result<(), Error> {
    let started = Instant::now();
    let secret = random_secret();
    println!("iris-rpc demo: a Server and a Client on loopback, self-signed certificate,");
    println!("random secret, cipher on, default security prefer-v2: the two negotiate the v2");
    println!("session mode (a peer of the legacy iris-rpc 0.2.20 would get the legacy protocol).");
    println!();

    let server = Server::bind(
        Options::new(secret.clone())
            .port("127.0.0.1:0")
            .uuid("demo-server")
            .designation("server")
            .certificates(Certificates::self_signed()?),
    )
    .await?;
    let mut sev = server.events();
    line("server", format!("listening on {}", server.local_addr()));

    server.on("hello", |msg, uuid, _| {
        line("server", format!("<- event from {uuid}: {msg}"));
    });
    server.handle("add", |req| async move {
        let v = req.msg.value();
        let sum = match (v["a"].as_i64(), v["b"].as_i64()) {
            (Some(a), Some(b)) => json!(a.saturating_add(b)),
            _ => json!(v["a"].as_f64().unwrap_or(0.0) + v["b"].as_f64().unwrap_or(0.0)),
        };
        line(
            "server",
            format!("<- request add from {}: {}", req.uuid, req.msg),
        );
        Ok(json!({ "sum": sum }))
    });
    server.handle("divide", |req| async move {
        line(
            "server",
            format!("<- request divide from {}: {}", req.uuid, req.msg),
        );
        let v = req.msg.value();
        match (v["a"].as_f64(), v["b"].as_f64()) {
            (Some(a), Some(b)) if b != 0.0 => Ok(json!({ "quotient": a / b })),
            _ => Err(error_object("RangeError", "division by zero")),
        }
    });
    server.handle("slow", |req| async move {
        line(
            "server",
            format!("<- request slow from {}: not answering for 5 s", req.uuid),
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(json!("too late"))
    });

    let client = Client::connect(
        Options::new(secret)
            .address(server.local_addr().to_string())
            .uuid("demo-client")
            .designation("client"),
    )?;
    let mut cev = client.events();

    // Both sides see the other authenticate.
    let deadline = Duration::from_secs(10);
    let peer = tokio::time::timeout(deadline, async {
        loop {
            match sev.next().await {
                Some(Event::Connect { peer }) => return Ok(peer),
                Some(Event::Error { error, .. }) => return Err(error),
                Some(_) => {}
                None => return Err(Error::Closed),
            }
        }
    })
    .await
    .map_err(|_| Error::Config("the demo client did not connect in time".into()))??;
    line(
        "server",
        format!(
            "client {} (designation {:?}) authenticated from {} ({} session, cipher {})",
            peer.uuid(),
            peer.designation().unwrap_or(""),
            peer.address(),
            peer.mode(),
            if peer.cipher() { "on" } else { "off" }
        ),
    );
    client.wait_connected(deadline).await?;
    line(
        "client",
        format!(
            "connected to {}",
            client
                .peers()
                .first()
                .map(|p| p.uuid().to_owned())
                .unwrap_or_default()
        ),
    );

    // An event each way.
    let hello = json!({ "op": "hello", "text": "hi from the client" });
    line("client", format!("-> event {hello}"));
    client.dispatch(&hello)?;
    let world = json!({ "op": "world", "text": "hi from the server" });
    line("server", format!("-> event to demo-client {world}"));
    server.dispatch_to("demo-client", &world)?;
    let got = tokio::time::timeout(deadline, async {
        loop {
            match cev.next().await {
                Some(Event::Message { msg, uuid, .. }) => return Some((msg, uuid)),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| Error::Protocol("the demo client did not receive the event".into()))?;
    line("client", format!("<- event from {}: {}", got.1, got.0));

    // Requests: answered, failing on purpose, timing out.
    let add = json!({ "op": "add", "a": 2, "b": 3 });
    line("client", format!("-> request {add}"));
    let resp = client.request(&add).await?;
    line("client", format!("<- response {resp}"));

    let divide = json!({ "op": "divide", "a": 1, "b": 0 });
    line("client", format!("-> request {divide} (fails on purpose)"));
    match client.request(&divide).await {
        Err(Error::Remote(err)) => line("client", format!("<- error {err}")),
        other => {
            return Err(Error::Protocol(format!(
                "expected a remote error, got {other:?}"
            )))
        }
    }

    let slow = json!({ "op": "slow", "op_timeout": 500 });
    line(
        "client",
        format!("-> request {slow} (times out on purpose)"),
    );
    let t = Instant::now();
    match client.request(&slow).await {
        Err(e @ Error::Timeout { .. }) => line(
            "client",
            format!(
                "<- timed out after {} ms: {}",
                t.elapsed().as_millis(),
                e.to_legacy_value()
            ),
        ),
        other => {
            return Err(Error::Protocol(format!(
                "expected a timeout, got {other:?}"
            )))
        }
    }

    let nosuch = json!({ "op": "nosuch" });
    line("client", format!("-> request {nosuch} (no handler)"));
    drop(sev); // nobody takes unhandled requests: the server answers like legacy
    match client.request(&nosuch).await {
        Err(e @ Error::Remote(_)) => line("client", format!("<- error {}", e.to_legacy_value())),
        other => {
            return Err(Error::Protocol(format!(
                "expected a remote error, got {other:?}"
            )))
        }
    }

    line("client", "closing");
    client.close().await;
    server.close().await;
    println!();
    println!(
        "done in {} ms: 2 events, 4 requests (1 answered, 1 failed on purpose, 1 timed out, 1 without handler)",
        started.elapsed().as_millis()
    );
    Ok(())
}
