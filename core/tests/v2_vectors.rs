//! Known-answer vectors of the v2 session mode (docs/PROTOCOL-V2.md): the handshake state
//! machines run with fixed nonces and a fixed channel binding must produce exactly the lines and
//! values in `tests/vectors/protocol-v2.json`. `IRIS_BLESS=1` rewrites the file (review the diff:
//! a change means the wire format changed). `tests/interop/v2-vectors.js` checks the same file
//! with Node's own crypto, written from the spec alone.

use std::sync::Arc;

use iris_rpc::protocol::v2::{
    SessionKeys, Transcript, TranscriptIdentity, DOWNGRADE_MARKER, MODE_V2,
};
use iris_rpc::protocol::{
    hex, ClientConfig, ClientHandshake, Identity, Keys, Mode, Security, ServerConfig,
    ServerHandshake, Step,
};
use serde_json::{json, Value};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/protocol-v2.json"
);

const SECRET: &str = "correct horse battery staple";

fn bytes32(seed: u8) -> [u8; 32] {
    std::array::from_fn(|i| seed.wrapping_add(i as u8))
}

fn line(v: &[u8]) -> String {
    String::from_utf8(v.to_vec()).unwrap().trim_end().to_owned()
}

/// Runs both roles against each other and records every line, plus a few records each way.
fn session(cipher: bool) -> Value {
    let keys = Arc::new(Keys::new(SECRET));
    let (client_nonce, server_nonce, cb) = (bytes32(0x10), bytes32(0xa0), bytes32(0x40));
    let client_id = Identity {
        uuid: "9f1c2c4e-client".into(),
        designation: "worker".into(),
        mac: Some("02:00:00:00:00:01".into()),
    };
    let server_id = Identity {
        uuid: "5b7e0d1a-server".into(),
        designation: "hub".into(),
        mac: None,
    };
    let mut c = ClientHandshake::new(
        keys.clone(),
        ClientConfig {
            identity: client_id.clone(),
            cipher,
            signatures: true,
            routes: vec![],
            security: Security::PreferV2,
        },
    )
    .with_nonce(client_nonce)
    .with_channel_binding(cb);
    let mut s = ServerHandshake::new(
        keys,
        ServerConfig {
            identity: server_id.clone(),
            require_cipher: false,
            signatures: true,
            routes: vec!["a-uuid-behind-the-server".into()],
            security: Security::PreferV2,
        },
    )
    .with_nonce(server_nonce)
    .with_channel_binding(cb);

    let hello = c.hello();
    let Step::Send(challenge) = s.on_line(hello.trim_ascii_end()).unwrap() else {
        panic!("no challenge")
    };
    let Step::Send(response) = c.on_line(challenge.trim_ascii_end()).unwrap() else {
        panic!("no response")
    };
    let Step::Send(server_init) = s.on_line(response.trim_ascii_end()).unwrap() else {
        panic!("no server init")
    };
    let Step::Done {
        send: Some(client_init),
        established: mut ce,
    } = c.on_line(server_init.trim_ascii_end()).unwrap()
    else {
        panic!("client not done")
    };
    let Step::Done {
        established: mut se,
        ..
    } = s.on_line(client_init.trim_ascii_end()).unwrap()
    else {
        panic!("server not done")
    };
    assert_eq!((ce.mode, se.mode), (Mode::V2, Mode::V2));

    let transcript = Transcript {
        offered: vec![MODE_V2.into()],
        client_nonce,
        chosen: MODE_V2.into(),
        server_nonce,
        client: TranscriptIdentity {
            uuid: client_id.uuid.clone(),
            designation: client_id.designation.clone(),
            mac: client_id.mac.clone().unwrap_or_default(),
        },
        cipher,
        channel_binding: cb,
    };
    let k = SessionKeys::derive(SECRET.as_bytes(), &transcript);
    let server_tid = TranscriptIdentity {
        uuid: server_id.uuid.clone(),
        designation: server_id.designation.clone(),
        mac: String::new(),
    };

    // Records after the handshake: record 0 each way was rpc::init.
    let mut records = Vec::new();
    let mut buf = Vec::new();
    for (from, text) in [
        ("client", r#"{"op":"hello","text":"héllo"}"#),
        (
            "client",
            r#"{"_req":"1b4e28ba-2fa1-11d2-883f-0016d3cca427","req":{"op":"add","a":2,"b":3}}"#,
        ),
        (
            "server",
            r#"{"_resp":"1b4e28ba-2fa1-11d2-883f-0016d3cca427","err":null,"resp":{"sum":5}}"#,
        ),
    ] {
        let (sealer, opener) = if from == "client" {
            (&mut ce.sealer, &mut se.opener)
        } else {
            (&mut se.sealer, &mut ce.opener)
        };
        let wire = sealer.seal_to_vec(text).unwrap();
        let opened = opener.open(wire.trim_ascii_end(), &mut buf).unwrap();
        assert_eq!(opened.text, text);
        records.push(json!({"from": from, "plain": text, "line": line(&wire)}));
    }

    json!({
        "cipher": cipher,
        "transcript_hex": hex::encode(&transcript.encode()),
        "transcript_hash_hex": hex::encode(&k.transcript_hash()),
        "client_proof_hex": k.client_proof(),
        "server_proof_hex": k.server_proof(&server_tid),
        "c2s_key_hex": hex::encode(&k.c2s.0),
        "c2s_iv_hex": hex::encode(&k.c2s.1),
        "s2c_key_hex": hex::encode(&k.s2c.0),
        "s2c_iv_hex": hex::encode(&k.s2c.1),
        "lines": [
            {"from": "client", "what": "auth request with the v2 offer", "line": line(&hello)},
            {"from": "server", "what": "v2 challenge", "line": line(&challenge)},
            {"from": "client", "what": "v2 auth response with the client proof", "line": line(&response)},
            {"from": "server", "what": "rpc::init with identity and server proof (record 0 s2c)", "line": line(&server_init)},
            {"from": "client", "what": "rpc::init (record 0 c2s)", "line": line(&client_init)},
        ],
        "records": records,
    })
}

/// The downgrade marker (section 9.1): what a v2 server sends a client whose offer was
/// stripped, what a legacy client answers, and which challenges a client that offered v2 refuses.
fn downgrade() -> Value {
    let keys = Arc::new(Keys::new(SECRET));
    let fresh: String = hex::encode(&std::array::from_fn::<u8, 64, _>(|i| 0x60 + i as u8));
    let identity = Identity {
        uuid: "9f1c2c4e-client".into(),
        designation: "worker".into(),
        mac: Some("02:00:00:00:00:01".into()),
    };
    let challenge_from = |security| {
        let mut s = ServerHandshake::new(
            keys.clone(),
            ServerConfig {
                identity: Identity {
                    uuid: "5b7e0d1a-server".into(),
                    designation: "hub".into(),
                    mac: None,
                },
                require_cipher: false,
                signatures: true,
                routes: vec![],
                security,
            },
        )
        .with_vector(fresh.clone());
        // The offer was stripped: the server sees the bare legacy request.
        let Step::Send(challenge) = s.on_line(br#"{"op":"rpc::auth::request"}"#).unwrap() else {
            panic!("no challenge")
        };
        line(&challenge)
    };
    let client = |security| {
        ClientHandshake::new(
            keys.clone(),
            ClientConfig {
                identity: identity.clone(),
                cipher: false,
                signatures: true,
                routes: vec![],
                security,
            },
        )
        .with_channel_binding(bytes32(0x40))
    };
    let marked = challenge_from(Security::PreferV2);
    let unmarked = challenge_from(Security::Legacy);
    // A legacy client (ours under `legacy`, byte for byte 0.2.20) answers the marked challenge.
    let Step::Send(response) = client(Security::Legacy).on_line(marked.as_bytes()).unwrap() else {
        panic!("the legacy client refused the marked challenge")
    };
    let seen: Vec<Value> = [&marked, &unmarked]
        .into_iter()
        .map(|challenge| {
            let refused = client(Security::PreferV2).on_line(challenge.as_bytes());
            json!({
                "challenge": challenge,
                "refused": refused.is_err(),
                "error": refused.err().map(|e| e.to_string()),
            })
        })
        .collect();
    json!({
        "marker_hex": DOWNGRADE_MARKER,
        "fresh_vector": fresh,
        "challenge_from_prefer_v2_server": marked,
        "challenge_from_legacy_server": unmarked,
        "legacy_client_response_cipher_off": line(&response),
        "prefer_v2_client_that_offered_v2": seen,
    })
}

fn generate() -> Value {
    json!({
        "comment": "Known-answer vectors of iris-rpc v2 (docs/PROTOCOL-V2.md). Byte strings are lowercase hex. Produced by core/tests/v2_vectors.rs; checked by it and, independently, by tests/interop/v2-vectors.js with Node's crypto.",
        "inputs": {
            "secret": SECRET,
            "client_nonce_hex": hex::encode(&bytes32(0x10)),
            "server_nonce_hex": hex::encode(&bytes32(0xa0)),
            "channel_binding_hex": hex::encode(&bytes32(0x40)),
            "client": {"uuid": "9f1c2c4e-client", "designation": "worker", "mac": "02:00:00:00:00:01", "routes": []},
            "server": {"uuid": "5b7e0d1a-server", "designation": "hub", "routes": ["a-uuid-behind-the-server"]},
        },
        "sessions": [session(true), session(false)],
        "downgrade": downgrade(),
    })
}

#[test]
fn v2_known_answer_vectors() {
    let generated = serde_json::to_string_pretty(&generate()).unwrap() + "\n";
    if std::env::var_os("IRIS_BLESS").is_some() {
        std::fs::write(PATH, &generated).unwrap();
    }
    let stored = std::fs::read_to_string(PATH)
        .expect("tests/vectors/protocol-v2.json (IRIS_BLESS=1 creates it)");
    assert!(
        stored == generated,
        "the v2 wire output differs from tests/vectors/protocol-v2.json"
    );
}

#[test]
fn vectors_are_not_trivially_equal() {
    let v = generate();
    let on = &v["sessions"][0];
    let off = &v["sessions"][1];
    // The cipher flag is in the transcript, so every derived value differs.
    for k in ["transcript_hash_hex", "client_proof_hex", "c2s_key_hex"] {
        assert_ne!(on[k], off[k], "{k}");
    }
    // With the cipher on, records are hex; with it off, the JSON itself without `_sig`.
    let rec = on["records"][0]["line"].as_str().unwrap();
    assert!(rec.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        off["records"][0]["line"].as_str().unwrap(),
        r#"{"op":"hello","text":"héllo"}"#
    );
}
