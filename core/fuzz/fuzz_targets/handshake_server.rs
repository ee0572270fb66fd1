//! The server handshake fed arbitrary lines: errors, never panics; never completes without
//! the secret (the fuzzer cannot forge an HMAC).
#![no_main]

use std::sync::{Arc, OnceLock};

use iris_rpc::protocol::{Identity, Keys, ServerConfig, ServerHandshake, Step};
use libfuzzer_sys::fuzz_target;

fn keys() -> Arc<Keys> {
    static K: OnceLock<Arc<Keys>> = OnceLock::new();
    K.get_or_init(|| Arc::new(Keys::new("secret"))).clone()
}

fuzz_target!(|data: &[u8]| {
    let mut hs = ServerHandshake::new(
        keys(),
        ServerConfig {
            identity: Identity { uuid: "s".into(), designation: String::new(), mac: None },
            require_cipher: false,
            signatures: true,
            routes: vec![],
        },
    )
    .with_vector("00");
    for line in data.split(|b| *b == b'\n') {
        match hs.on_line(line) {
            Ok(Step::Send(_)) => {}
            Ok(Step::Done { .. }) => panic!("authenticated without the secret"),
            Err(_) => return,
        }
    }
});
