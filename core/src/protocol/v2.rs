//! The v2 session mode (docs/PROTOCOL-V2.md): the transcript, the key schedule, the proofs and
//! the ChaCha20-Poly1305 record layer. Everything here is deterministic given its inputs; the
//! handshake state machines in [`super::handshake`] drive it.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::hex;

/// The only v2 mode defined so far, as offered and chosen on the wire.
pub const MODE_V2: &str = "v2";
/// The label the transcript starts with.
pub const TRANSCRIPT_LABEL: &str = "iris-rpc v2 transcript";
/// The RFC 9266 `tls-exporter` channel binding: label, empty context, 32 bytes.
pub const EXPORTER_LABEL: &str = "EXPORTER-Channel-Binding";
/// Length of the channel binding, of the nonces and of every derived secret.
pub const LEN: usize = 32;
/// Length of the ChaCha20-Poly1305 tag appended to every record.
pub const TAG_LEN: usize = 16;
/// The downgrade marker: the last 16 characters of every legacy challenge vector that a server
/// speaking v2 sends (the hex of ASCII `irisv2dg`), as TLS 1.3 marks `ServerHello.random` (RFC
/// 8446 section 4.1.3). Legacy clients HMAC the vector as an opaque string and never notice; a
/// client that offered v2 and receives a marked legacy challenge knows its offer was removed in
/// transit, or that the challenge is a replay, and aborts (docs/PROTOCOL-V2.md section 9.1).
pub const DOWNGRADE_MARKER: &str = "6972697376326467";

/// Whether a legacy challenge vector carries [`DOWNGRADE_MARKER`].
pub fn is_marked(vector: &str) -> bool {
    vector.len() > DOWNGRADE_MARKER.len()
        && vector.as_bytes().ends_with(DOWNGRADE_MARKER.as_bytes())
}

/// Puts [`DOWNGRADE_MARKER`] over the last 16 characters of a vector (legacy vectors are 128
/// hex characters; a shorter one gets it appended).
pub fn mark(vector: &mut String) {
    if is_marked(vector) {
        return;
    }
    let keep = vector.len().saturating_sub(DOWNGRADE_MARKER.len());
    if keep <= DOWNGRADE_MARKER.len() || !vector.is_char_boundary(keep) {
        vector.push_str(DOWNGRADE_MARKER);
    } else {
        vector.truncate(keep);
        vector.push_str(DOWNGRADE_MARKER);
    }
}

/// Which session modes a peer speaks (option `security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Security {
    /// Behave exactly as the legacy 0.2.20 package: never offer or accept v2.
    Legacy,
    /// Offer and accept v2; fall back to the legacy protocol with legacy peers (default).
    #[default]
    PreferV2,
    /// Speak only v2: refuse legacy peers.
    RequireV2,
}

impl Security {
    /// The option value (`"legacy"`, `"prefer-v2"`, `"require-v2"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Legacy => "legacy",
            Security::PreferV2 => "prefer-v2",
            Security::RequireV2 => "require-v2",
        }
    }

    /// Whether this policy offers (client) or accepts (server) v2.
    pub fn speaks_v2(self) -> bool {
        self != Security::Legacy
    }
}

impl std::fmt::Display for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Security {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "legacy" => Ok(Security::Legacy),
            "prefer-v2" => Ok(Security::PreferV2),
            "require-v2" => Ok(Security::RequireV2),
            other => Err(format!(
                "unknown security {other:?} (expected legacy, prefer-v2 or require-v2)"
            )),
        }
    }
}

/// The session mode a handshake ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The legacy 0.2.20 protocol (static-key cipher, counter signatures).
    Legacy,
    /// v2: mutual, channel-bound authentication and (with the cipher on) AEAD records.
    V2,
}

impl Mode {
    /// `"legacy"` or `"v2"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Legacy => "legacy",
            Mode::V2 => "v2",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// 32 fresh random bytes from the operating system.
pub fn new_nonce() -> [u8; LEN] {
    let mut n = [0u8; LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

/// One identity as the transcript sees it: absent and empty strings are the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TranscriptIdentity {
    /// The uuid.
    pub uuid: String,
    /// The designation (`""` when absent).
    pub designation: String,
    /// The MAC (`""` when absent).
    pub mac: String,
}

impl TranscriptIdentity {
    /// Appends uuid, designation and MAC as three length-prefixed fields.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        field(out, self.uuid.as_bytes());
        field(out, self.designation.as_bytes());
        field(out, self.mac.as_bytes());
    }
}

/// Everything both sides must agree on before the client proves the secret; any difference makes the proofs fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// The modes the client offered, in its order.
    pub offered: Vec<String>,
    /// The client's nonce.
    pub client_nonce: [u8; LEN],
    /// The mode the server chose.
    pub chosen: String,
    /// The server's nonce.
    pub server_nonce: [u8; LEN],
    /// The client's identity, as sent in its response.
    pub client: TranscriptIdentity,
    /// Whether the client asked for the cipher (AEAD records).
    pub cipher: bool,
    /// The TLS exporter value of this connection (RFC 9266).
    pub channel_binding: [u8; LEN],
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Fields are bounded by the line limit, far below 4 GiB.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A list as one field: each item length-prefixed inside it, so `["a,b"]` and `["a","b"]` (or
/// `["ab"]` and `["a","b"]`) encode differently.
fn list_field(out: &mut Vec<u8>, items: &[String]) {
    let mut inner = Vec::with_capacity(items.iter().map(|m| m.len() + 4).sum());
    for item in items {
        field(&mut inner, item.as_bytes());
    }
    field(out, &inner);
}

impl Transcript {
    /// The encoding that is hashed: each field as a 4-byte big-endian length and its bytes; the
    /// offered modes as one field holding each mode length-prefixed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        field(&mut out, TRANSCRIPT_LABEL.as_bytes());
        list_field(&mut out, &self.offered);
        field(&mut out, &self.client_nonce);
        field(&mut out, self.chosen.as_bytes());
        field(&mut out, &self.server_nonce);
        self.client.encode_into(&mut out);
        field(&mut out, if self.cipher { b"1" } else { b"0" });
        field(&mut out, &self.channel_binding);
        out
    }

    /// `TH = SHA-256(encode())`.
    pub fn hash(&self) -> [u8; LEN] {
        Sha256::digest(self.encode()).into()
    }
}

/// The secrets of one session, derived by HKDF-SHA256 from the shared secret and the transcript.
/// Every key and IV is overwritten with zeros when this is dropped.
pub struct SessionKeys {
    th: [u8; LEN],
    client_proof_key: [u8; LEN],
    server_proof_key: [u8; LEN],
    /// Client-to-server record key and IV.
    pub c2s: ([u8; LEN], [u8; 12]),
    /// Server-to-client record key and IV.
    pub s2c: ([u8; LEN], [u8; 12]),
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys { .. }")
    }
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.client_proof_key.zeroize();
        self.server_proof_key.zeroize();
        self.c2s.0.zeroize();
        self.c2s.1.zeroize();
        self.s2c.0.zeroize();
        self.s2c.1.zeroize();
    }
}

fn expand<const N: usize>(prk: &Hkdf<Sha256>, label: &str) -> [u8; N] {
    let mut out = [0u8; N];
    // N is at most 32 here, far below HKDF-SHA256's 8160-byte ceiling.
    let _ = prk.expand(label.as_bytes(), &mut out);
    out
}

fn hmac(key: &[u8; LEN], data: &[u8]) -> [u8; LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl SessionKeys {
    /// `PRK = HKDF-Extract(salt = TH, IKM = secret)`, then one HKDF-Expand per label.
    pub fn derive(secret: &[u8], transcript: &Transcript) -> Self {
        let th = transcript.hash();
        // The PRK lives inside the HMAC state of `prk` (the hkdf crate does not zeroize it); the
        // copy `extract` hands back is overwritten here.
        let (mut prk_bytes, prk) = Hkdf::<Sha256>::extract(Some(&th), secret);
        prk_bytes.as_mut_slice().zeroize();
        SessionKeys {
            th,
            client_proof_key: expand(&prk, "iris-rpc v2 client proof"),
            server_proof_key: expand(&prk, "iris-rpc v2 server proof"),
            c2s: (
                expand(&prk, "iris-rpc v2 c2s key"),
                expand(&prk, "iris-rpc v2 c2s iv"),
            ),
            s2c: (
                expand(&prk, "iris-rpc v2 s2c key"),
                expand(&prk, "iris-rpc v2 s2c iv"),
            ),
        }
    }

    /// The transcript hash.
    pub fn transcript_hash(&self) -> [u8; LEN] {
        self.th
    }

    /// `HMAC-SHA256(client proof key, TH)`, as lowercase hex.
    pub fn client_proof(&self) -> String {
        hex::encode(&hmac(&self.client_proof_key, &self.th))
    }

    /// `HMAC-SHA256(server proof key, TH || server identity fields)`, as lowercase hex: the
    /// server's identity travels only after the client proved the secret, and this binds it.
    pub fn server_proof(&self, server: &TranscriptIdentity) -> String {
        let mut data = Zeroizing::new(self.th.to_vec());
        server.encode_into(&mut data);
        hex::encode(&hmac(&self.server_proof_key, &data))
    }

    /// Checks a proof received as hex, in constant time.
    pub fn check(expected_hex: &str, got: &str) -> bool {
        bool::from(expected_hex.as_bytes().ct_eq(got.as_bytes()))
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Not hex, too short, or the tag did not verify: tampered, replayed, reordered, truncated
    /// or sealed with another key.
    Invalid,
    /// 2^64 - 1 records went one way: the session must end before the nonce could repeat.
    Exhausted,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Invalid => f.write_str(
                "record failed authentication (tampered, replayed, reordered, truncated or wrong key)",
            ),
            RecordError::Exhausted => f.write_str("record sequence exhausted: the session must end"),
        }
    }
}

impl std::error::Error for RecordError {}

/// One direction of the record layer: a key, an IV and the next sequence number. The IV is
/// zeroed on drop; the expanded key is ring's `LessSafeKey`, which ring does not zeroize.
pub struct RecordKey {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordKey")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Drop for RecordKey {
    fn drop(&mut self) {
        self.iv.zeroize();
    }
}

impl RecordKey {
    /// A direction keyed with `key` and `iv`, starting at record 0.
    pub fn new(key: &[u8; LEN], iv: &[u8; 12]) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key)
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 takes 32-byte keys"));
        RecordKey {
            key: LessSafeKey::new(unbound),
            iv: *iv,
            seq: 0,
        }
    }

    /// The next sequence number.
    pub fn sequence(&self) -> u64 {
        self.seq
    }

    /// Moves the sequence number: tests of the wrap limit only. Not public API (feature
    /// `__test-hooks`).
    #[cfg(any(test, feature = "__test-hooks"))]
    #[doc(hidden)]
    pub fn set_sequence(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// `IV XOR (0^32 || seq as 64-bit big-endian)`, then counts the record.
    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        if self.seq == u64::MAX {
            return Err(RecordError::Exhausted);
        }
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(n))
    }

    /// Appends the hex of `ChaCha20-Poly1305(plain) || tag` to `out`; `scratch` is reused.
    pub fn seal(
        &mut self,
        plain: &[u8],
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let nonce = self.next_nonce()?;
        scratch.clear();
        scratch.extend_from_slice(plain);
        self.key
            .seal_in_place_append_tag(nonce, Aad::empty(), scratch)
            .map_err(|_| RecordError::Invalid)?;
        hex::append(scratch, out);
        Ok(())
    }

    /// Decodes and opens one record line; the plaintext is left in `buf`.
    pub fn open<'b>(&mut self, line: &[u8], buf: &'b mut Vec<u8>) -> Result<&'b [u8], RecordError> {
        hex::decode_into(line, buf).ok_or(RecordError::Invalid)?;
        if buf.len() < TAG_LEN {
            return Err(RecordError::Invalid);
        }
        let nonce = self.next_nonce()?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), buf)
            .map_err(|_| RecordError::Invalid)?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (RecordKey, RecordKey) {
        let k = [7u8; LEN];
        let iv = [9u8; 12];
        (RecordKey::new(&k, &iv), RecordKey::new(&k, &iv))
    }

    #[test]
    fn records_round_trip_in_order() {
        let (mut tx, mut rx) = keys();
        let (mut s, mut out, mut buf) = (Vec::new(), Vec::new(), Vec::new());
        for text in ["{\"a\":1}", "", "{\"b\":\"ü\"}"] {
            out.clear();
            tx.seal(text.as_bytes(), &mut s, &mut out).unwrap();
            assert_eq!(rx.open(&out, &mut buf).unwrap(), text.as_bytes());
        }
    }

    #[test]
    fn tampered_replayed_reordered_and_truncated_records_fail() {
        let (mut tx, _) = keys();
        let mut s = Vec::new();
        let lines: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                let mut out = Vec::new();
                tx.seal(format!("{{\"n\":{i}}}").as_bytes(), &mut s, &mut out)
                    .unwrap();
                out
            })
            .collect();
        let mut buf = Vec::new();
        // Tampered: one hex digit changed.
        let (_, mut rx) = keys();
        let mut bad = lines[0].clone();
        bad[3] = if bad[3] == b'0' { b'1' } else { b'0' };
        assert_eq!(rx.open(&bad, &mut buf), Err(RecordError::Invalid));
        // Replayed.
        let (_, mut rx) = keys();
        rx.open(&lines[0], &mut buf).unwrap();
        assert_eq!(rx.open(&lines[0], &mut buf), Err(RecordError::Invalid));
        // Reordered (and dropped: record 1 skipped).
        let (_, mut rx) = keys();
        rx.open(&lines[0], &mut buf).unwrap();
        assert_eq!(rx.open(&lines[2], &mut buf), Err(RecordError::Invalid));
        // Truncated record.
        let (_, mut rx) = keys();
        assert_eq!(
            rx.open(&lines[0][..lines[0].len() - 2], &mut buf),
            Err(RecordError::Invalid)
        );
        assert_eq!(rx.open(b"00", &mut buf), Err(RecordError::Invalid));
        assert_eq!(rx.open(b"zz", &mut buf), Err(RecordError::Invalid));
    }

    #[test]
    fn the_sequence_never_wraps() {
        let (mut tx, mut rx) = keys();
        tx.set_sequence(u64::MAX - 1);
        rx.set_sequence(u64::MAX - 1);
        let (mut s, mut out, mut buf) = (Vec::new(), Vec::new(), Vec::new());
        tx.seal(b"{}", &mut s, &mut out).unwrap();
        assert_eq!(rx.open(&out, &mut buf).unwrap(), b"{}");
        assert_eq!(
            tx.seal(b"{}", &mut s, &mut out),
            Err(RecordError::Exhausted)
        );
        assert_eq!(rx.open(&out, &mut buf), Err(RecordError::Exhausted));
    }

    #[test]
    fn every_transcript_field_changes_the_hash() {
        let base = Transcript {
            offered: vec![MODE_V2.into()],
            client_nonce: [1; LEN],
            chosen: MODE_V2.into(),
            server_nonce: [2; LEN],
            client: TranscriptIdentity {
                uuid: "c".into(),
                ..Default::default()
            },
            cipher: true,
            channel_binding: [3; LEN],
        };
        let h = base.hash();
        type Change = Box<dyn Fn(&mut Transcript)>;
        let variants: Vec<Change> = vec![
            Box::new(|t| t.offered.push("v3".into())),
            Box::new(|t| t.client_nonce[0] ^= 1),
            Box::new(|t| t.chosen = "v3".into()),
            Box::new(|t| t.server_nonce[31] ^= 1),
            Box::new(|t| t.client.uuid = "x".into()),
            Box::new(|t| t.client.designation = "x".into()),
            Box::new(|t| t.client.mac = "x".into()),
            Box::new(|t| t.cipher = false),
            Box::new(|t| t.channel_binding[5] ^= 1),
            // A comma inside a mode is not two modes, and two modes are not their join.
            Box::new(|t| t.offered = vec!["v2,v3".into()]),
            // Moving bytes between adjacent fields is not the same transcript either.
            Box::new(|t| {
                t.client.uuid = "".into();
                t.client.designation = "c".into();
            }),
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut t = base.clone();
            change(&mut t);
            assert_ne!(t.hash(), h, "variant {i}");
        }
    }

    #[test]
    fn the_marker_replaces_the_end_of_a_legacy_vector() {
        let original = "ab".repeat(64);
        let mut v = original.clone();
        assert!(!is_marked(&v));
        mark(&mut v);
        assert_eq!(v.len(), 128);
        assert_eq!(&v[..112], &original[..112]);
        assert!(v.ends_with(DOWNGRADE_MARKER) && is_marked(&v));
        assert_eq!(DOWNGRADE_MARKER, hex::encode(b"irisv2dg"));
        let again = v.clone();
        mark(&mut v);
        assert_eq!(v, again, "marking twice changes nothing");
        // A vector too short to overwrite gets the marker appended; the marker alone is no
        // marked vector (a vector is longer than its marker).
        let mut short = "00".to_owned();
        mark(&mut short);
        assert_eq!(short, format!("00{DOWNGRADE_MARKER}"));
        assert!(!is_marked(DOWNGRADE_MARKER));
    }

    #[test]
    fn the_offered_modes_are_length_prefixed_one_by_one() {
        let with = |offered: &[&str]| Transcript {
            offered: offered.iter().map(|m| m.to_string()).collect(),
            client_nonce: [1; LEN],
            chosen: MODE_V2.into(),
            server_nonce: [2; LEN],
            client: TranscriptIdentity::default(),
            cipher: true,
            channel_binding: [3; LEN],
        };
        // Pairs that a join with "," (or any separator, or none) would confuse.
        for (a, b) in [
            (&["v2,v3"][..], &["v2", "v3"][..]),
            (&["v2v3"][..], &["v2", "v3"][..]),
            (&["v2", ""][..], &["v2"][..]),
            (&[][..], &[""][..]),
        ] {
            assert_ne!(with(a).hash(), with(b).hash(), "{a:?} vs {b:?}");
        }
        // The field for ["v2"]: outer length 6, inner length 2, "v2".
        let enc = with(&["v2"]).encode();
        let start = 4 + TRANSCRIPT_LABEL.len();
        assert_eq!(&enc[start..start + 10], b"\0\0\0\x06\0\0\0\x02v2");
    }
}
