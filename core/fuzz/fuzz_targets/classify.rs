//! Message classification and `_sig` stripping on arbitrary text.
#![no_main]

use iris_rpc::protocol::message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(parsed) = message::parse(text) {
        if parsed.sig.is_some() {
            let stripped = message::strip_sig(text);
            let v: serde_json::Value = serde_json::from_str(&stripped).unwrap();
            assert!(v.get("_sig").is_none());
        }
    }
});
