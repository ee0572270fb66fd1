//! Key material derived from the shared secret: `pk`, the legacy EVP key and IV, and the keyed
//! HMAC states every later computation clones instead of re-keying.

use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use zeroize::{Zeroize, Zeroizing};

use super::cipher::LegacyCipher;
use super::hex;

type HmacSha256 = Hmac<Sha256>;
type HmacSha1 = Hmac<Sha1>;

/// `pk = hex(SHA-512(secret))`: the 128 lowercase hex characters every legacy HMAC is keyed with.
pub fn pk(secret: &str) -> String {
    hex::encode(&Sha512::digest(secret.as_bytes()))
}

/// OpenSSL `EVP_BytesToKey(MD5, no salt, 1 iteration)` for AES-256: 32 bytes of key, 16 of IV.
///
/// This is what legacy `crypto.createCipher` does with the password; it is kept only because
/// legacy peers need it.
pub fn evp_bytes_to_key(password: &[u8]) -> ([u8; 32], [u8; 16]) {
    let d1 = Md5::digest(password);
    let mut h = Md5::new();
    h.update(d1);
    h.update(password);
    let d2 = h.finalize();
    let mut h = Md5::new();
    h.update(d2);
    h.update(password);
    let d3 = h.finalize();
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(&d1);
    key[16..].copy_from_slice(&d2);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&d3);
    (key, iv)
}

/// Everything one shared secret determines, computed once per instance and shared by sessions.
/// The secret and `pk` are zeroed on drop, and so are the AES key schedules (the `aes` crate's
/// `zeroize` feature); the keyed HMAC states belong to the `hmac` crate, which does not zeroize.
#[derive(Clone)]
pub struct Keys {
    secret: Zeroizing<Vec<u8>>,
    pk: Zeroizing<String>,
    hmac_sha256: HmacSha256,
    hmac_sha1: HmacSha1,
    cipher: LegacyCipher,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys { .. }")
    }
}

impl Keys {
    /// Derives all key material from the shared secret (the `auth` option).
    pub fn new(secret: &str) -> Self {
        let pk = pk(secret);
        // HMAC accepts keys of any length, so these cannot fail.
        let hmac_sha256 = <HmacSha256 as Mac>::new_from_slice(pk.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        let hmac_sha1 = <HmacSha1 as Mac>::new_from_slice(pk.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        let (mut key, mut iv) = evp_bytes_to_key(pk.as_bytes());
        let cipher = LegacyCipher::new(&key, &iv);
        key.zeroize();
        iv.zeroize();
        Keys {
            secret: Zeroizing::new(secret.as_bytes().to_vec()),
            pk: Zeroizing::new(pk),
            hmac_sha256,
            hmac_sha1,
            cipher,
        }
    }

    /// The shared secret itself: the input keying material of the v2 key schedule.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// The 128-character hex `pk`.
    pub fn pk(&self) -> &str {
        &self.pk
    }

    /// The legacy line cipher keyed from `pk`.
    pub fn cipher(&self) -> &LegacyCipher {
        &self.cipher
    }

    /// `hex(HMAC-SHA256(pk, vector))`: the client's proof of the secret.
    pub fn auth(&self, vector: &str) -> String {
        let mut mac = self.hmac_sha256.clone();
        mac.update(vector.as_bytes());
        hex::encode(&mac.finalize().into_bytes())
    }

    /// The two sequence seeds `(a, b)` from `hex(HMAC-SHA1(pk, vector))`: the client sends from
    /// `a` and receives from `b`; the server the other way round.
    pub fn sequence_seeds(&self, vector: &str) -> (u64, u64) {
        let mut mac = self.hmac_sha1.clone();
        mac.update(vector.as_bytes());
        let d = mac.finalize().into_bytes();
        let a = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let b = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        (u64::from(a), u64::from(b))
    }

    /// `hex(HMAC-SHA256(pk, decimal(sequence)))[0..16]`: the `_sig` of message number `sequence`.
    pub fn signature(&self, sequence: u64) -> [u8; 16] {
        let mut mac = self.hmac_sha256.clone();
        let mut buf = itoa::Buffer::new();
        mac.update(buf.format(sequence).as_bytes());
        let d = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        hex::encode_into(&d[..8], &mut out);
        out
    }
}
