//! Known-answer vectors and recorded sessions produced by the legacy package itself.

use std::sync::Arc;

use iris_rpc::protocol::{
    self, keys, ClientConfig, ClientHandshake, Identity, Keys, ServerConfig, ServerHandshake, Step,
};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/legacy-0.2.20.json"
    );
    let text = std::fs::read_to_string(path).expect("vectors file");
    serde_json::from_str(&text).expect("vectors JSON")
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn evp_bytes_to_key() {
    let v = &vectors()["primitives"]["evp_bytes_to_key_secret"];
    assert_eq!(keys::pk(s(v, "secret")), s(v, "pk"));
    let (key, iv) = keys::evp_bytes_to_key(s(v, "pk").as_bytes());
    assert_eq!(protocol::hex::encode(&key), s(v, "key_hex"));
    assert_eq!(protocol::hex::encode(&iv), s(v, "iv_hex"));
}

#[test]
fn every_aes_256_cbc_vector_encrypts_and_decrypts() {
    let all = vectors();
    let mut n = 0;
    for v in all["encrypt"].as_array().unwrap() {
        if s(v, "cipher") != "aes-256-cbc" {
            continue;
        }
        let k = Keys::new(s(v, "secret"));
        assert_eq!(k.pk(), s(v, "pk"));
        let ct = k.cipher().encrypt_to_string(s(v, "plaintext").as_bytes());
        assert_eq!(ct, s(v, "ciphertext_hex"), "secret {:?}", s(v, "secret"));
        assert_eq!(
            k.cipher().decrypt_to_string(&ct).unwrap(),
            s(v, "plaintext")
        );
        n += 1;
    }
    assert!(n >= 20, "only {n} aes-256-cbc vectors");
}

#[test]
fn signatures() {
    let all = vectors();
    let list = all["signatures"].as_array().unwrap();
    assert_eq!(list.len(), 24);
    for v in list {
        let k = Keys::new(s(v, "secret"));
        let seq: u64 = s(v, "sequence").parse().unwrap();
        assert_eq!(std::str::from_utf8(&k.signature(seq)).unwrap(), s(v, "sig"));
    }
}

#[test]
fn auth_and_sequence_seeds() {
    let all = vectors();
    for v in all["auth"].as_array().unwrap() {
        let k = Keys::new(s(v, "secret"));
        assert_eq!(k.pk(), s(v, "pk"));
        let vector = s(v, "vector");
        assert_eq!(k.auth(vector), s(v, "auth"));
        let (a, b) = k.sequence_seeds(vector);
        assert_eq!(a, v["client_sequence_tx"].as_u64().unwrap());
        assert_eq!(b, v["client_sequence_rx"].as_u64().unwrap());
        assert_eq!(a, v["server_sequence_rx"].as_u64().unwrap());
        assert_eq!(b, v["server_sequence_tx"].as_u64().unwrap());
    }
}

struct Recorded {
    cipher: bool,
    secret: String,
    server_uuid: String,
    client_uuid: String,
    lines: Vec<(String, String)>,
}

fn sessions() -> Vec<Recorded> {
    vectors()["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| Recorded {
            cipher: v["cipher"] != Value::Bool(false),
            secret: s(v, "secret").to_owned(),
            server_uuid: s(v, "server_uuid").to_owned(),
            client_uuid: s(v, "client_uuid").to_owned(),
            lines: v["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| (s(l, "from").to_owned(), s(l, "line").to_owned()))
                .collect(),
        })
        .collect()
}

fn line(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes)
        .unwrap()
        .strip_suffix('\n')
        .unwrap()
}

fn challenge_vector(rec: &Recorded) -> String {
    let v: Value = serde_json::from_str(&rec.lines[1].1).unwrap();
    s(&v, "vector").to_owned()
}

/// Replays the recorded session with our server in the server role: every line we produce must
/// equal the recorded one, every client line must be accepted.
#[test]
fn recorded_sessions_replay_as_server() {
    for rec in sessions() {
        let keys = Arc::new(Keys::new(&rec.secret));
        let mut hs = ServerHandshake::new(
            keys,
            ServerConfig {
                identity: Identity {
                    uuid: rec.server_uuid.clone(),
                    designation: "srv".into(),
                    mac: Some("aabbccddeeff".into()),
                },
                require_cipher: rec.cipher,
                signatures: true,
                routes: vec![],
                security: iris_rpc::Security::Legacy,
            },
        )
        .with_vector(challenge_vector(&rec));
        let l = &rec.lines;
        match hs.on_line(l[0].1.as_bytes()).unwrap() {
            Step::Send(out) => assert_eq!(line(&out), l[1].1),
            other => panic!("{other:?}"),
        }
        match hs.on_line(l[2].1.as_bytes()).unwrap() {
            Step::Send(out) => assert_eq!(line(&out), l[3].1, "server rpc::init"),
            other => panic!("{other:?}"),
        }
        let est = match hs.on_line(l[4].1.as_bytes()).unwrap() {
            Step::Done {
                send: None,
                established,
            } => established,
            other => panic!("{other:?}"),
        };
        assert_eq!(est.peer.uuid, rec.client_uuid);
        assert_eq!(est.peer.designation.as_deref(), Some("cli"));
        assert_eq!(est.cipher, rec.cipher);
        replay_data_phase(&rec, "server", *est);
    }
}

/// The same session with our client in the client role.
#[test]
fn recorded_sessions_replay_as_client() {
    for rec in sessions() {
        let keys = Arc::new(Keys::new(&rec.secret));
        let mut hs = ClientHandshake::new(
            keys,
            ClientConfig {
                identity: Identity {
                    uuid: rec.client_uuid.clone(),
                    designation: "cli".into(),
                    mac: None,
                },
                cipher: rec.cipher,
                signatures: true,
                routes: vec![],
                security: iris_rpc::Security::Legacy,
            },
        );
        let l = &rec.lines;
        assert_eq!(line(&hs.hello()), l[0].1);
        match hs.on_line(l[1].1.as_bytes()).unwrap() {
            Step::Send(out) => assert_eq!(line(&out), l[2].1, "auth response"),
            other => panic!("{other:?}"),
        }
        let est = match hs.on_line(l[3].1.as_bytes()).unwrap() {
            Step::Done {
                send: Some(out),
                established,
            } => {
                assert_eq!(line(&out), l[4].1, "client rpc::init");
                established
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(est.peer.uuid, rec.server_uuid);
        assert_eq!(est.peer.mac.as_deref(), Some("aabbccddeeff"));
        replay_data_phase(&rec, "client", *est);
    }
}

/// After the handshake: lines from `role` are re-sealed from their plaintext and must match the
/// recording byte for byte; lines from the other side must open and verify.
fn replay_data_phase(rec: &Recorded, role: &str, mut est: protocol::Established) {
    let all = vectors();
    let raw = all["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| (v["cipher"] != Value::Bool(false)) == rec.cipher)
        .unwrap()["lines"]
        .as_array()
        .unwrap()
        .clone();
    let mut checked = 0;
    for l in &raw[5..] {
        let wire = s(l, "line");
        let plain = l.get("plain").and_then(Value::as_str).unwrap_or(wire);
        if s(l, "from") == role {
            let unsigned = protocol::message::strip_sig(plain);
            let out = est.sealer.seal_to_vec(&unsigned).unwrap();
            assert_eq!(line(&out), wire);
        } else {
            let mut buf = Vec::new();
            let parsed = est.opener.open(wire.as_bytes(), &mut buf).unwrap();
            assert_eq!(parsed.text, plain);
        }
        checked += 1;
    }
    assert_eq!(checked, raw.len() - 5);
}

#[test]
fn wrong_secret_is_refused_by_server() {
    for rec in sessions() {
        let mut hs = ServerHandshake::new(
            Arc::new(Keys::new("not the secret")),
            ServerConfig {
                identity: Identity {
                    uuid: "srv".into(),
                    designation: String::new(),
                    mac: None,
                },
                require_cipher: false,
                signatures: true,
                routes: vec![],
                security: iris_rpc::Security::Legacy,
            },
        )
        .with_vector(challenge_vector(&rec));
        hs.on_line(rec.lines[0].1.as_bytes()).unwrap();
        let err = hs.on_line(rec.lines[2].1.as_bytes()).unwrap_err();
        assert!(matches!(err, protocol::HandshakeError::Auth(_)), "{err:?}");
    }
}

#[test]
fn wrong_secret_is_refused_by_client() {
    for rec in sessions() {
        let mut hs = ClientHandshake::new(
            Arc::new(Keys::new("not the secret")),
            ClientConfig {
                identity: Identity {
                    uuid: "c".into(),
                    designation: String::new(),
                    mac: None,
                },
                cipher: rec.cipher,
                signatures: true,
                routes: vec![],
                security: iris_rpc::Security::Legacy,
            },
        );
        hs.on_line(rec.lines[1].1.as_bytes()).unwrap();
        let err = hs.on_line(rec.lines[3].1.as_bytes()).unwrap_err();
        assert!(matches!(err, protocol::HandshakeError::Auth(_)), "{err:?}");
    }
}

#[test]
fn unsupported_cipher_is_refused_clearly() {
    let k = Arc::new(Keys::new("secret"));
    let mut hs = ServerHandshake::new(
        k.clone(),
        ServerConfig {
            identity: Identity {
                uuid: "srv".into(),
                designation: String::new(),
                mac: None,
            },
            require_cipher: false,
            signatures: true,
            routes: vec![],
            security: iris_rpc::Security::Legacy,
        },
    );
    hs.on_line(b"{\"op\":\"rpc::auth::request\"}").unwrap();
    let name = k.cipher().encrypt_to_string(b"aes-128-cbc");
    let data = k.cipher().encrypt_to_string(b"{}");
    let line = format!(
        "{{\"op\":\"rpc::auth::response\",\"v\":1,\"cipher\":\"{name}\",\"data\":\"{data}\"}}"
    );
    let err = hs.on_line(line.as_bytes()).unwrap_err();
    assert_eq!(
        err,
        protocol::HandshakeError::UnsupportedCipher("aes-128-cbc".into())
    );
    assert!(err.to_string().contains("aes-128-cbc"));
}

#[test]
fn cipher_required_refuses_plain_offer() {
    let rec = sessions().into_iter().find(|r| !r.cipher).unwrap();
    let mut hs = ServerHandshake::new(
        Arc::new(Keys::new(&rec.secret)),
        ServerConfig {
            identity: Identity {
                uuid: "srv".into(),
                designation: String::new(),
                mac: None,
            },
            require_cipher: true,
            signatures: true,
            routes: vec![],
            security: iris_rpc::Security::Legacy,
        },
    )
    .with_vector(challenge_vector(&rec));
    hs.on_line(rec.lines[0].1.as_bytes()).unwrap();
    let err = hs.on_line(rec.lines[2].1.as_bytes()).unwrap_err();
    assert_eq!(err, protocol::HandshakeError::CipherRequired);
}
