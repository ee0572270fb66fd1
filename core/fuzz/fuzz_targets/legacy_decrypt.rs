//! The legacy line decrypt: any input is either rejected or decrypts to what encrypts back to
//! the same line.
#![no_main]

use std::sync::OnceLock;

use iris_rpc::protocol::Keys;
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys::new("secret"))
}

fuzz_target!(|data: &[u8]| {
    let mut buf = Vec::new();
    if let Ok(plain) = keys().cipher().decrypt_hex(data, &mut buf) {
        let plain = plain.to_vec();
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        keys().cipher().encrypt_hex(&plain, &mut scratch, &mut out);
        assert!(out.eq_ignore_ascii_case(data));
    }
});
