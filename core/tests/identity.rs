//! Issue 19, attack 4 (identity) and server identity: a uuid held by a v2 stream is never taken
//! over by a legacy-mode stream; `expect_server_uuid` refuses a server that authenticates as
//! another uuid; `client_cert_uuid` binds each client's uuid to its TLS client certificate, so a
//! leaked secret does not let its holder be anyone; `pin_store` records a server's key on first
//! use and refuses another key at that address later.

mod common;

use std::time::Duration;

use common::{next_matching, server_options, SECRET};
use iris_rpc::{Certificates, Client, Event, Events, Mode, Options, Security, Server};
use serde_json::json;

async fn client_as(
    server: &Server,
    uuid: &str,
    security: Security,
    answer: &'static str,
) -> (Client, Events) {
    let (c, ev) = Client::connect_with_events(
        Options::new(SECRET)
            .address(server.local_addr().to_string())
            .uuid(uuid)
            .security(security),
    )
    .unwrap();
    c.handle("who", move |_| async move { Ok(json!(answer)) });
    (c, ev)
}

fn error_text(ev: &Event) -> Option<String> {
    match ev {
        Event::Error { error, .. } => Some(error.to_string()),
        _ => None,
    }
}

#[tokio::test]
async fn a_legacy_mode_stream_never_takes_over_a_uuid_held_by_a_v2_stream() {
    let server = common::server(server_options()).await;
    let mut sev = server.events();
    let (holder, mut holder_ev) = client_as(&server, "twin", Security::PreferV2, "v2").await;
    let up = next_matching(&mut holder_ev, |e| matches!(e, Event::Connect { .. })).await;
    let Event::Connect { peer, .. } = up else {
        unreachable!()
    };
    assert_eq!(peer.mode(), Mode::V2);
    next_matching(&mut sev, |e| matches!(e, Event::Connect { .. })).await;

    // Anyone with the secret, speaking legacy, claims the same uuid.
    let (intruder, _intruder_ev) = client_as(&server, "twin", Security::Legacy, "legacy").await;
    let refused = next_matching(&mut sev, |e| {
        error_text(e).is_some_and(|t| t.contains("\"twin\""))
    })
    .await;
    let text = error_text(&refused).unwrap();
    assert!(
        text.contains("held by a v2 stream")
            && text.contains("legacy-mode")
            && text.contains("may not take over"),
        "{text}"
    );
    // The v2 holder stays the one reached, and connected, through the intruder's retries.
    for _ in 0..3 {
        assert_eq!(
            server
                .request_to("twin", json!({"op": "who"}))
                .await
                .unwrap(),
            json!("v2")
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(holder.is_connected());
    assert_eq!(
        server.stats().streams,
        1,
        "only the v2 holder is registered"
    );
    while let Some(e) = holder_ev.try_next() {
        assert!(
            !matches!(e, Event::Disconnect { .. }),
            "the v2 holder was disconnected"
        );
    }
    intruder.close().await;
    holder.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_legacy_mode_stream_never_takes_over_a_uuid_routed_through_a_v2_stream() {
    let server = common::server(server_options()).await;
    let mut sev = server.events();
    let mut o = Options::new(SECRET)
        .address(server.local_addr().to_string())
        .uuid("router");
    o.routes = vec!["behind".to_owned()];
    let (router, mut rev) = Client::connect_with_events(o).unwrap();
    next_matching(&mut rev, |e| matches!(e, Event::Connect { .. })).await;
    next_matching(&mut sev, |e| matches!(e, Event::Routes { .. })).await;
    let (intruder, _iev) = client_as(&server, "behind", Security::Legacy, "legacy").await;
    let refused = next_matching(&mut sev, |e| {
        error_text(e).is_some_and(|t| t.contains("\"behind\""))
    })
    .await;
    assert!(
        error_text(&refused)
            .unwrap()
            .contains("held by a v2 stream"),
        "{refused:?}"
    );
    assert_eq!(server.stats().streams, 1);
    intruder.close().await;
    router.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_v2_stream_still_takes_a_uuid_over_from_a_legacy_one_as_legacy_does() {
    let server = common::server(server_options()).await;
    let mut sev = server.events();
    let (old, mut old_ev) = client_as(&server, "twin", Security::Legacy, "legacy").await;
    next_matching(&mut old_ev, |e| matches!(e, Event::Connect { .. })).await;
    next_matching(&mut sev, |e| matches!(e, Event::Connect { .. })).await;
    let (new, mut new_ev) = client_as(&server, "twin", Security::PreferV2, "v2").await;
    next_matching(&mut new_ev, |e| matches!(e, Event::Connect { .. })).await;
    next_matching(&mut sev, |e| matches!(e, Event::Connect { .. })).await;
    assert_eq!(
        server
            .request_to("twin", json!({"op": "who"}))
            .await
            .unwrap(),
        json!("v2")
    );
    assert!(old.is_connected() && new.is_connected());
    assert_eq!(server.stats().streams, 2);
    // Two legacy-mode streams with one uuid also both stay, as legacy has them.
    let (third, mut third_ev) = client_as(&server, "pair", Security::Legacy, "a").await;
    next_matching(&mut third_ev, |e| matches!(e, Event::Connect { .. })).await;
    next_matching(&mut sev, |e| matches!(e, Event::Connect { .. })).await;
    let (fourth, mut fourth_ev) = client_as(&server, "pair", Security::Legacy, "b").await;
    next_matching(&mut fourth_ev, |e| matches!(e, Event::Connect { .. })).await;
    next_matching(&mut sev, |e| matches!(e, Event::Connect { .. })).await;
    assert_eq!(
        server
            .request_to("pair", json!({"op": "who"}))
            .await
            .unwrap(),
        json!("b")
    );
    for c in [old, new, third, fourth] {
        c.close().await;
    }
    server.close().await;
}

#[tokio::test]
async fn expect_server_uuid_refuses_a_server_that_authenticates_as_another_uuid() {
    for security in [Security::PreferV2, Security::Legacy] {
        let server = common::server(server_options().uuid("impostor")).await;
        let (c, mut ev) = Client::connect_with_events(
            Options::new(SECRET)
                .address(server.local_addr().to_string())
                .security(security)
                .expect_server_uuid("real-server"),
        )
        .unwrap();
        let e = next_matching(&mut ev, |e| {
            matches!(e, Event::Error { .. } | Event::Connect { .. })
        })
        .await;
        let text = error_text(&e).unwrap_or_else(|| panic!("{security:?}: connected: {e:?}"));
        assert!(
            text.contains("\"impostor\"") && text.contains("expect_server_uuid"),
            "{text}"
        );
        assert!(!c.is_connected());
        c.close().await;
        server.close().await;

        // The expected server (one of several expected uuids) is accepted.
        let server = common::server(server_options().uuid("real-server")).await;
        let (c, mut ev) = Client::connect_with_events(
            Options::new(SECRET)
                .address(server.local_addr().to_string())
                .security(security)
                .expect_server_uuid("other")
                .expect_server_uuid("real-server"),
        )
        .unwrap();
        let e = next_matching(&mut ev, |e| {
            matches!(e, Event::Error { .. } | Event::Connect { .. })
        })
        .await;
        assert!(matches!(e, Event::Connect { .. }), "{security:?}: {e:?}");
        c.close().await;
        server.close().await;
    }
}

#[tokio::test]
async fn expect_server_uuid_reads_from_json_in_either_spelling() {
    let o = Options::from_json(&json!({"auth": SECRET, "expectServerUuid": "a"})).unwrap();
    assert_eq!(o.expect_server_uuid, vec!["a".to_owned()]);
    let o = Options::from_json(&json!({
        "auth": SECRET, "expect_server_uuid": ["a", "b"], "pinStore": "/x/pins",
        "clientCertUuid": true
    }))
    .unwrap();
    assert_eq!(o.expect_server_uuid, vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(
        o.pin_store.as_deref(),
        Some(std::path::Path::new("/x/pins"))
    );
    assert!(o.client_cert_uuid);
}

// ---- client certificates bound to uuids ---------------------------------------------------

struct Pki {
    ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "iris-rpc test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca,
            ca_key,
        }
    }

    /// A client certificate signed by the CA with these DNS names and URIs.
    fn client(&self, dns: &[&str], uris: &[&str]) -> Certificates {
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        for u in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Certificates::new(key.serialize_pem(), cert.pem())
    }
}

async fn bound_server(pki: &Pki) -> (Server, Events) {
    let opts = server_options()
        .certificates(
            Certificates::self_signed()
                .unwrap()
                .with_ca(pki.ca_pem.clone()),
        )
        .reject_unauthorized(true)
        .client_cert_uuid(true);
    let (s, ev) = Server::bind_with_events(opts).await.unwrap();
    s.handle("echo", |req| async move { Ok(req.msg.value()) });
    (s, ev)
}

async fn first_outcome(ev: &mut Events) -> Event {
    next_matching(ev, |e| {
        matches!(e, Event::Error { .. } | Event::Connect { .. })
    })
    .await
}

#[tokio::test]
async fn client_cert_uuid_lets_a_client_be_only_the_uuid_its_certificate_names() {
    let pki = Pki::new();
    let alice = pki.client(&["alice"], &[]);
    let bob = pki.client(&[], &["urn:uuid:6f1c0f36-3f0e-4c2b-9a49-2f7c5a3f5d10"]);
    for security in [Security::PreferV2, Security::Legacy] {
        let (server, mut sev) = bound_server(&pki).await;
        let addr = server.local_addr().to_string();
        let connect = |uuid: &str, certs: Option<Certificates>| {
            let mut o = Options::new(SECRET)
                .address(addr.clone())
                .uuid(uuid)
                .security(security);
            if let Some(c) = certs {
                o = o.certificates(c);
            }
            Client::connect_with_events(o).unwrap()
        };

        // Each certificate holder is accepted as the uuid its certificate names (DNS or URI).
        let (a, mut aev) = connect("alice", Some(alice.clone()));
        assert!(matches!(
            first_outcome(&mut aev).await,
            Event::Connect { .. }
        ));
        let (b, mut bev) = connect("6f1c0f36-3f0e-4c2b-9a49-2f7c5a3f5d10", Some(bob.clone()));
        assert!(matches!(
            first_outcome(&mut bev).await,
            Event::Connect { .. }
        ));
        next_matching(&mut sev, |e| matches!(e, Event::Connect { .. })).await;
        next_matching(&mut sev, |e| matches!(e, Event::Connect { .. })).await;

        // Bob, who knows the secret, claims to be alice with his own certificate: refused.
        let (m, _mev) = connect("alice", Some(bob.clone()));
        let e = next_matching(&mut sev, |e| matches!(e, Event::Error { .. })).await;
        let text = error_text(&e).unwrap();
        assert!(
            text.contains("claimed uuid \"alice\"")
                && text.contains("client_cert_uuid")
                && text.contains("urn:uuid:6f1c0f36"),
            "{security:?}: {text}"
        );
        // Alice is still the one reached as alice.
        assert_eq!(server.stats().streams, 2);
        m.close().await;

        // No certificate at all: the TLS handshake refuses it (a certificate is required).
        let (n, _nev) = connect("alice", None);
        let e = next_matching(&mut sev, |e| matches!(e, Event::Error { .. })).await;
        let text = error_text(&e).unwrap();
        assert!(
            text.contains("TLS") && text.to_lowercase().contains("certificate"),
            "{text}"
        );
        n.close().await;
        a.close().await;
        b.close().await;
        server.close().await;
    }
}

#[tokio::test]
async fn client_cert_uuid_needs_verified_client_certificates() {
    let Err(e) = Server::bind(server_options().client_cert_uuid(true)).await else {
        panic!("bound without reject_unauthorized");
    };
    let text = e.to_string();
    assert!(
        text.contains("client_cert_uuid needs reject_unauthorized"),
        "{text}"
    );
}

// ---- trust on first use -------------------------------------------------------------------

#[tokio::test]
async fn pin_store_records_the_first_key_and_refuses_another_at_that_address() {
    let dir = std::env::temp_dir().join(format!("iris-pin-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("known-servers");
    let real = Certificates::self_signed().unwrap();
    let pin = iris_rpc::tls::spki_pin(&real.cert).unwrap();

    let server = common::server(server_options().certificates(real.clone())).await;
    let addr = server.local_addr();
    let client_opts = || {
        Options::new(SECRET)
            .address(addr.to_string())
            .pin_store(store.clone())
    };
    let (c, mut ev) = Client::connect_with_events(client_opts()).unwrap();
    assert!(matches!(
        first_outcome(&mut ev).await,
        Event::Connect { .. }
    ));
    c.close().await;
    let text = std::fs::read_to_string(&store).unwrap();
    assert!(text.lines().any(|l| l == format!("{addr} {pin}")), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&store).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let recorded = text;
    server.close().await;

    // Another server (another key, the same secret) at that address: refused in TLS, so it
    // gets nothing from the client, not even its first line.
    let (fake, mut fev) = Server::bind_with_events(
        server_options()
            .certificates(Certificates::self_signed().unwrap())
            .port(addr.to_string()),
    )
    .await
    .unwrap();
    let (c, mut ev) = Client::connect_with_events(client_opts()).unwrap();
    let e = first_outcome(&mut ev).await;
    let text = error_text(&e).unwrap_or_else(|| panic!("connected to the fake: {e:?}"));
    assert!(
        text.contains("pin_store") && text.contains(&pin) && text.contains("recorded"),
        "{text}"
    );
    c.close().await;
    let fe = next_matching(&mut fev, |e| matches!(e, Event::Error { .. })).await;
    assert!(
        error_text(&fe).unwrap().contains("TLS"),
        "the fake server got past TLS: {fe:?}"
    );
    fake.close().await;
    // The store still holds the first pin only.
    assert_eq!(std::fs::read_to_string(&store).unwrap(), recorded);

    // The real server back at that address is accepted again.
    let server = common::server(server_options().certificates(real).port(addr.to_string())).await;
    let (c, mut ev) = Client::connect_with_events(client_opts()).unwrap();
    assert!(matches!(
        first_outcome(&mut ev).await,
        Event::Connect { .. }
    ));
    c.close().await;
    let lines = std::fs::read_to_string(&store).unwrap();
    assert_eq!(
        lines.lines().filter(|l| !l.starts_with('#')).count(),
        1,
        "{lines}"
    );

    // A store that cannot be read is a clear error, not an open door.
    std::fs::write(&store, "garbage\n").unwrap();
    let (c, mut ev) = Client::connect_with_events(client_opts()).unwrap();
    let e = first_outcome(&mut ev).await;
    let text = error_text(&e).unwrap();
    assert!(
        text.contains("pin_store") && text.contains("line 1"),
        "{text}"
    );
    c.close().await;
    server.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
