use std::time::Duration;

use iris_rpc::{Certificates, Client, Event, Options, Server};
use serde_json::json;

#[tokio::main]
async fn main() -> iris_rpc::Result<()> {
    // A server with a self-signed certificate; legacy peers accept it by default.
    let server = Server::bind(
        Options::new("shared secret")
            .port("127.0.0.1:0")
            .certificates(Certificates::self_signed()?),
    )
    .await?;
    server.on("hello", |msg, uuid, _peer| {
        println!("server got {msg} from {uuid}")
    });
    server.handle("add", |req| async move {
        let v = req.msg.value();
        Ok(json!({ "sum": v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0) }))
    });

    // A client: connects in the background and reconnects by itself.
    let client =
        Client::connect(Options::new("shared secret").address(server.local_addr().to_string()))?;
    let mut events = client.events();
    client.wait_connected(Duration::from_secs(5)).await?;

    client.dispatch(json!({ "op": "hello", "text": "hi" }))?;
    let sum = client
        .request(json!({ "op": "add", "a": 2, "b": 3 }))
        .await?;
    assert_eq!(sum, json!({ "sum": 5 }));

    server.dispatch(json!({ "op": "news", "n": 1 }))?;
    while let Some(event) = events.next().await {
        if let Event::Message { msg, .. } = event {
            println!("client got {msg}");
            break;
        }
    }
    client.close().await;
    server.close().await;
    Ok(())
}
