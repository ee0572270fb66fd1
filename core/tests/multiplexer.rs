//! Multiplexer: links from a legacy-style config, fan-out and lookup by uuid.

mod common;

use std::time::Duration;

use common::*;
use iris_rpc::{Client, Error, Multiplexer, Options};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_from_config_fan_out_and_find_uuids() {
    let upstream = server(server_options().uuid("upstream")).await;
    upstream.handle("where", |_| async { Ok(json!("upstream")) });
    let (key, cert) = iris_rpc::tls::self_signed_pem(&["localhost"]).unwrap();
    let common = json!({"auth": SECRET, "uuid": "mux", "certificates": {"key": key, "cert": cert}});
    let config = json!({
        "hub": {"port": "127.0.0.1:0"},
        "up": {"address": upstream.local_addr().to_string()},
    });
    let mux = Multiplexer::from_config(&common, &config, None)
        .await
        .unwrap();
    assert_eq!(mux.links().count(), 2);
    mux.handle("where", |req| async move { Ok(json!({"mux": req.uuid})) });
    let hub_addr = match mux.link("hub").unwrap() {
        iris_rpc::Link::Server(s) => s.local_addr().to_string(),
        _ => panic!("hub is a server"),
    };
    let c = Client::connect(Options::new(SECRET).address(hub_addr).uuid("downstream")).unwrap();
    c.wait_connected(WAIT).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while mux.active().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let mut active = mux.active();
    active.sort();
    assert_eq!(
        active,
        vec![
            ("downstream".to_owned(), "hub".to_owned()),
            ("upstream".to_owned(), "up".to_owned())
        ]
    );
    // Requests by uuid go to the link that holds the peer.
    assert_eq!(
        mux.request_to("upstream", json!({"op": "where"}))
            .await
            .unwrap(),
        json!("upstream")
    );
    assert_eq!(
        c.request(json!({"op": "where"})).await.unwrap(),
        json!({"mux": "downstream"})
    );
    assert_eq!(mux.dispatch(json!({"op": "all"})).unwrap(), 2);
    assert!(matches!(
        mux.dispatch_to("nobody", json!({"op": "x"})),
        Err(Error::NoSuchStream(_))
    ));
    c.close().await;
    mux.close().await;
    upstream.close().await;
}

#[tokio::test]
async fn bad_configs_are_clear_errors() {
    let common = json!({"auth": SECRET});
    let both = json!({"x": {"port": 1, "address": "a:1"}});
    let err = Multiplexer::from_config(&common, &both, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("both port and address"), "{err}");
    let neither = json!({"x": {"designation": "d"}});
    let err = Multiplexer::from_config(&common, &neither, None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("port or address required"),
        "{err}"
    );
}
