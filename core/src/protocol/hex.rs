//! Lowercase hex, as legacy writes it, on top of `faster-hex`.

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    faster_hex::hex_string(bytes)
}

/// Writes the lowercase hex of `bytes` into `out`, which must be exactly twice as long.
pub fn encode_into(bytes: &[u8], out: &mut [u8]) {
    // Lengths are fixed by every caller; a mismatch would be a bug here, not bad input.
    let _ = faster_hex::hex_encode(bytes, out);
}

/// Appends the lowercase hex of `bytes` to `out`.
pub fn append(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + bytes.len() * 2, 0);
    encode_into(bytes, &mut out[start..]);
}

/// Decodes hex (either case) into `out`, replacing its contents. `None` if `text` is not hex.
pub fn decode_into(text: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if text.len() % 2 != 0 {
        return None;
    }
    out.clear();
    out.resize(text.len() / 2, 0);
    faster_hex::hex_decode(text, out).ok()
}
