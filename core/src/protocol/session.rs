//! The data phase of a legacy session: [`Sealer`] signs and (optionally) encrypts outgoing
//! messages, [`Opener`] decrypts, parses and checks the signature of incoming lines. They are
//! separate so a connection's writer and reader each own one.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::keys::Keys;
use super::message::{self, BadMessage, Parsed};

/// Why an incoming line was refused. The connection is closed on any of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Not hex, bad padding, or wrong key.
    Decrypt,
    /// Not UTF-8.
    Utf8,
    /// Not a valid iris-rpc message.
    Message(BadMessage),
    /// `_sig` did not match the expected sequence number.
    BadSignature,
    /// Signatures are on and the message had no `_sig`.
    MissingSignature,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Decrypt => f.write_str("line could not be decrypted"),
            OpenError::Utf8 => f.write_str("line is not valid UTF-8"),
            OpenError::Message(m) => write!(f, "{m}"),
            OpenError::BadSignature => f.write_str("message signature mismatch"),
            OpenError::MissingSignature => f.write_str("message without signature"),
        }
    }
}

impl std::error::Error for OpenError {}

/// Signs and encrypts outgoing messages of one session.
pub struct Sealer {
    keys: Arc<Keys>,
    cipher: bool,
    /// Next sequence number to sign with, or `None` when not signing.
    seq: Option<u64>,
    plain: Vec<u8>,
    scratch: Vec<u8>,
}

impl Sealer {
    pub(crate) fn new(keys: Arc<Keys>, cipher: bool, seq: Option<u64>) -> Self {
        Sealer {
            keys,
            cipher,
            seq,
            plain: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Whether lines are encrypted.
    pub fn cipher(&self) -> bool {
        self.cipher
    }

    /// Appends the wire line (with its `\n`) for a message text: a JSON object without a
    /// top-level `_sig`.
    pub fn seal(&mut self, text: &str, out: &mut Vec<u8>) {
        let sig = self.seq.map(|seq| {
            self.seq = Some(seq.wrapping_add(1));
            self.keys.signature(seq)
        });
        if self.cipher {
            self.plain.clear();
            message::append_signed(text, sig.as_ref(), &mut self.plain);
            self.keys
                .cipher()
                .encrypt_hex(&self.plain, &mut self.scratch, out);
        } else {
            message::append_signed(text, sig.as_ref(), out);
        }
        out.push(b'\n');
    }

    /// [`Sealer::seal`] into a new buffer.
    pub fn seal_to_vec(&mut self, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() * 2 + 64);
        self.seal(text, &mut out);
        out
    }
}

/// Decrypts, parses and verifies incoming lines of one session.
pub struct Opener {
    keys: Arc<Keys>,
    cipher: bool,
    seq: u64,
    require_sig: bool,
}

impl Opener {
    pub(crate) fn new(keys: Arc<Keys>, cipher: bool, seq: u64, require_sig: bool) -> Self {
        Opener {
            keys,
            cipher,
            seq,
            require_sig,
        }
    }

    /// Opens one line (without its newline). `buf` holds the plaintext when the cipher is on.
    pub fn open<'b>(
        &mut self,
        line: &'b [u8],
        buf: &'b mut Vec<u8>,
    ) -> Result<Parsed<'b>, OpenError> {
        let bytes: &'b [u8] = if self.cipher {
            self.keys
                .cipher()
                .decrypt_hex(line, buf)
                .map_err(|_| OpenError::Decrypt)?
        } else {
            line
        };
        let text = std::str::from_utf8(bytes).map_err(|_| OpenError::Utf8)?;
        let parsed = message::parse(text).map_err(OpenError::Message)?;
        match &parsed.sig {
            Some(Ok(sig)) => {
                let expected = self.keys.signature(self.seq);
                if !bool::from(sig.as_bytes().ct_eq(&expected[..])) {
                    return Err(OpenError::BadSignature);
                }
                self.seq = self.seq.wrapping_add(1);
            }
            Some(Err(())) => return Err(OpenError::BadSignature),
            None if self.require_sig => return Err(OpenError::MissingSignature),
            None => {}
        }
        Ok(parsed)
    }
}
