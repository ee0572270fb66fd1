//! The legacy line cipher: AES-256-CBC with PKCS#7 padding under the static EVP key and IV,
//! written as lowercase hex. Weak by design (static IV, no authentication) and kept only to talk
//! to legacy peers.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit};

use super::hex;

/// The only cipher name legacy peers can use successfully.
pub const LEGACY_CIPHER_NAME: &str = "aes-256-cbc";

/// Why a line could not be decrypted. Deliberately coarse: a peer learns nothing from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecryptError;

impl std::fmt::Display for DecryptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("line could not be decrypted")
    }
}

impl std::error::Error for DecryptError {}

/// Pre-expanded AES key schedules for the legacy key, and the IV, all zeroed on drop. Each line
/// is a CBC chain of its own from the IV; the chains borrow the schedules (copying them per line
/// cost more than the AES rounds of a short line).
#[derive(Clone)]
pub struct LegacyCipher {
    enc: aes::Aes256Enc,
    dec: aes::Aes256Dec,
    iv: [u8; 16],
}

impl Drop for LegacyCipher {
    fn drop(&mut self) {
        // The key schedules zero themselves (the `aes` crate's `zeroize` feature).
        zeroize::Zeroize::zeroize(&mut self.iv);
    }
}

impl LegacyCipher {
    /// A cipher for `key` and `iv` (from [`super::keys::evp_bytes_to_key`]).
    pub fn new(key: &[u8; 32], iv: &[u8; 16]) -> Self {
        LegacyCipher {
            enc: aes::Aes256Enc::new(key.into()),
            dec: aes::Aes256Dec::new(key.into()),
            iv: *iv,
        }
    }

    /// Appends the hex ciphertext of `plain` to `out`. `scratch` is reused between calls.
    pub fn encrypt_hex(&self, plain: &[u8], scratch: &mut Vec<u8>, out: &mut Vec<u8>) {
        let padded = (plain.len() / 16 + 1) * 16;
        scratch.clear();
        scratch.resize(padded, 0);
        match cbc::Encryptor::inner_iv_init(&self.enc, (&self.iv).into())
            .encrypt_padded_b2b_mut::<Pkcs7>(plain, scratch)
        {
            Ok(ct) => hex::append(ct, out),
            // The buffer is sized for the padding, so this cannot happen.
            Err(_) => unreachable!("ciphertext buffer sized for PKCS#7"),
        }
    }

    /// The hex ciphertext of `plain` as a string.
    pub fn encrypt_to_string(&self, plain: &[u8]) -> String {
        let mut scratch = Vec::new();
        let mut out = Vec::with_capacity((plain.len() / 16 + 1) * 32);
        self.encrypt_hex(plain, &mut scratch, &mut out);
        // Hex is ASCII.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Decrypts a hex line into `buf` and returns the plaintext slice of it.
    pub fn decrypt_hex<'b>(
        &self,
        line: &[u8],
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], DecryptError> {
        hex::decode_into(line, buf).ok_or(DecryptError)?;
        if buf.is_empty() || buf.len() % 16 != 0 {
            return Err(DecryptError);
        }
        cbc::Decryptor::inner_iv_init(&self.dec, (&self.iv).into())
            .decrypt_padded_mut::<Pkcs7>(buf)
            .map_err(|_| DecryptError)
    }

    /// Decrypts a hex string into UTF-8 text.
    pub fn decrypt_to_string(&self, line: &str) -> Result<String, DecryptError> {
        let mut buf = Vec::new();
        let plain = self.decrypt_hex(line.as_bytes(), &mut buf)?;
        std::str::from_utf8(plain)
            .map(str::to_owned)
            .map_err(|_| DecryptError)
    }
}
