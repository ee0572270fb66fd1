//! The v2 record opener fed arbitrary lines: errors, never panics, and never accepts a record
//! it did not see sealed (the fuzzer cannot forge a Poly1305 tag). Lines sealed by the matching
//! sealer, interleaved, must open in order.
#![no_main]

use iris_rpc::protocol::v2::RecordKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, iv) = ([5u8; 32], [6u8; 12]);
    let mut sealer = RecordKey::new(&key, &iv);
    let mut opener = RecordKey::new(&key, &iv);
    let (mut scratch, mut buf) = (Vec::new(), Vec::new());
    for line in data.split(|b| *b == b'\n') {
        // A line starting with '+' is sealed honestly first: it must open to itself.
        if let Some(plain) = line.strip_prefix(b"+") {
            let mut wire = Vec::new();
            if sealer.seal(plain, &mut scratch, &mut wire).is_err() {
                return;
            }
            match opener.open(&wire, &mut buf) {
                Ok(p) => assert_eq!(p, plain),
                Err(e) => panic!("an honest record failed: {e}"),
            }
        } else if opener.open(line, &mut buf).is_ok() {
            panic!("a forged record opened");
        } else {
            return;
        }
    }
});
