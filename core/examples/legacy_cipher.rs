//! The legacy line cipher's cost per line, in one process: AES-256-CBC encryption of a 64-byte
//! JSON line to hex and decryption of it back, the work each side does per message in legacy
//! mode with the cipher on (the `_sig` HMAC and JSON parsing are not included).
//!
//! ```text
//! cargo run --release -p iris-rpc --example legacy_cipher -- [LINES]
//! ```

use iris_rpc::protocol::LegacyCipher;

fn main() {
    let lines: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let cipher = LegacyCipher::new(&[7u8; 32], &[9u8; 16]);
    let plain = br#"{"op":"bench.ev","n":12345,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    let (mut scratch, mut out, mut buf) = (Vec::new(), Vec::new(), Vec::new());
    cipher.encrypt_hex(plain, &mut scratch, &mut out);
    let line = out.clone();
    for round in 1..=5 {
        let start = std::time::Instant::now();
        let mut bytes = 0usize;
        for _ in 0..lines {
            out.clear();
            cipher.encrypt_hex(plain, &mut scratch, &mut out);
            bytes += cipher.decrypt_hex(&line, &mut buf).map_or(0, <[u8]>::len);
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(lines);
        println!(
            "round {round}: {ns:.1} ns per {}-byte line encrypted and decrypted ({bytes} bytes)",
            plain.len()
        );
    }
}
