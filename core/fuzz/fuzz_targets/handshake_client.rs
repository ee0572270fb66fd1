//! The client handshake fed arbitrary lines: errors, never panics, never completes against a
//! server that does not know the secret.
#![no_main]

use std::sync::{Arc, OnceLock};

use iris_rpc::protocol::{ClientConfig, ClientHandshake, Identity, Keys, Security, Step};
use libfuzzer_sys::fuzz_target;

fn keys() -> Arc<Keys> {
    static K: OnceLock<Arc<Keys>> = OnceLock::new();
    K.get_or_init(|| Arc::new(Keys::new("secret"))).clone()
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the cipher and the policy.
    let cipher = data.first().is_some_and(|b| b & 1 == 1);
    let security = match data.first().map(|b| (b >> 1) % 3) {
        Some(0) => Security::Legacy,
        Some(1) => Security::PreferV2,
        _ => Security::RequireV2,
    };
    let mut hs = ClientHandshake::new(
        keys(),
        ClientConfig {
            identity: Identity { uuid: "c".into(), designation: String::new(), mac: None },
            cipher,
            signatures: true,
            routes: vec![],
            security,
        },
    )
    .with_nonce([3; 32])
    .with_channel_binding([9; 32]);
    for line in data.split(|b| *b == b'\n').skip(1) {
        match hs.on_line(line) {
            Ok(Step::Send(_)) => {}
            Ok(Step::Done { .. }) => panic!("accepted a server that did not prove the secret"),
            Ok(Step::Refuse { .. }) | Err(_) => return,
        }
    }
});
