//! The client handshake fed arbitrary lines: errors, never panics, never completes against a
//! server that does not know the secret.
#![no_main]

use std::sync::{Arc, OnceLock};

use iris_rpc::protocol::{ClientConfig, ClientHandshake, Identity, Keys, Step};
use libfuzzer_sys::fuzz_target;

fn keys() -> Arc<Keys> {
    static K: OnceLock<Arc<Keys>> = OnceLock::new();
    K.get_or_init(|| Arc::new(Keys::new("secret"))).clone()
}

fuzz_target!(|data: &[u8]| {
    let cipher = data.first().is_some_and(|b| b & 1 == 1);
    let mut hs = ClientHandshake::new(
        keys(),
        ClientConfig {
            identity: Identity { uuid: "c".into(), designation: String::new(), mac: None },
            cipher,
            signatures: true,
            routes: vec![],
        },
    );
    for line in data.split(|b| *b == b'\n').skip(1) {
        match hs.on_line(line) {
            Ok(Step::Send(_)) => {}
            Ok(Step::Done { .. }) => panic!("accepted a server that did not prove the secret"),
            Err(_) => return,
        }
    }
});
