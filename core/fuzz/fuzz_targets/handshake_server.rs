//! The server handshake fed arbitrary lines: errors, never panics; never completes without
//! the secret (the fuzzer cannot forge an HMAC), in legacy or v2 mode.
#![no_main]

use std::sync::{Arc, OnceLock};

use iris_rpc::protocol::{Identity, Keys, Security, ServerConfig, ServerHandshake, Step};
use libfuzzer_sys::fuzz_target;

fn keys() -> Arc<Keys> {
    static K: OnceLock<Arc<Keys>> = OnceLock::new();
    K.get_or_init(|| Arc::new(Keys::new("secret"))).clone()
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the policy, so the legacy and the v2 paths are both explored.
    let security = match data.first().map(|b| b % 3) {
        Some(0) => Security::Legacy,
        Some(1) => Security::PreferV2,
        _ => Security::RequireV2,
    };
    let mut hs = ServerHandshake::new(
        keys(),
        ServerConfig {
            identity: Identity { uuid: "s".into(), designation: String::new(), mac: None },
            require_cipher: false,
            signatures: true,
            routes: vec![],
            security,
        },
    )
    .with_vector("00")
    .with_nonce([7; 32])
    .with_channel_binding([9; 32]);
    for line in data.get(1..).unwrap_or_default().split(|b| *b == b'\n') {
        match hs.on_line(line) {
            Ok(Step::Send(_)) => {}
            Ok(Step::Done { .. }) => panic!("authenticated without the secret"),
            Ok(Step::Refuse { .. }) | Err(_) => return,
        }
    }
});
