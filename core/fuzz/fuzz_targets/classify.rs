//! Message classification and `_sig` stripping on arbitrary text.
#![no_main]

use iris_rpc::protocol::message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(parsed) = message::parse(text) {
        if parsed.sig.is_some() {
            // Whenever _sig was removed, the rest is valid JSON without it. Classification
            // skips values it does not need, so a number out of f64 range (JavaScript reads
            // it as Infinity) is accepted and delivered as text: the check reads the members'
            // values as `IgnoredAny`, which validates the syntax without converting numbers.
            let stripped = message::strip_sig(text);
            if stripped != text {
                let members: std::collections::HashMap<String, serde::de::IgnoredAny> =
                    serde_json::from_str(&stripped).unwrap();
                assert!(!members.contains_key("_sig"));
            }
        }
    }
});
