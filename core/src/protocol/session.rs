//! The data phase of a session: [`Sealer`] signs and (optionally) encrypts outgoing messages,
//! [`Opener`] decrypts, parses and checks incoming lines. They are separate so a connection's
//! writer and reader each own one. Each works in the mode the handshake chose: legacy (static
//! key cipher and counter signatures), v2 with AEAD records, or v2 plain lines.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::keys::Keys;
use super::message::{self, BadMessage, Parsed};
use super::v2::{RecordError, RecordKey};

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
    /// A v2 record failed authentication or the sequence ran out.
    Record(RecordError),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Decrypt => f.write_str("line could not be decrypted"),
            OpenError::Utf8 => f.write_str("line is not valid UTF-8"),
            OpenError::Message(m) => write!(f, "{m}"),
            OpenError::BadSignature => f.write_str("message signature mismatch"),
            OpenError::MissingSignature => f.write_str("message without signature"),
            OpenError::Record(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpenError {}

enum SealMode {
    Legacy {
        keys: Arc<Keys>,
        cipher: bool,
        /// Next sequence number to sign with, or `None` when not signing.
        seq: Option<u64>,
    },
    V2Plain,
    V2Records(Box<RecordKey>),
}

/// Signs and encrypts outgoing messages of one session.
pub struct Sealer {
    mode: SealMode,
    plain: Vec<u8>,
    scratch: Vec<u8>,
}

impl Sealer {
    pub(crate) fn new(keys: Arc<Keys>, cipher: bool, seq: Option<u64>) -> Self {
        Sealer::with_mode(SealMode::Legacy { keys, cipher, seq })
    }

    /// A v2 sealer: AEAD records with `key`, or plain lines when `None`.
    pub(crate) fn v2(key: Option<RecordKey>) -> Self {
        Sealer::with_mode(key.map_or(SealMode::V2Plain, |k| SealMode::V2Records(Box::new(k))))
    }

    fn with_mode(mode: SealMode) -> Self {
        Sealer {
            mode,
            plain: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Whether lines are encrypted.
    pub fn cipher(&self) -> bool {
        match &self.mode {
            SealMode::Legacy { cipher, .. } => *cipher,
            SealMode::V2Plain => false,
            SealMode::V2Records(_) => true,
        }
    }

    /// Moves the v2 record sequence number: tests of the wrap limit only. Not public API
    /// (feature `__test-hooks`).
    #[cfg(any(test, feature = "__test-hooks"))]
    #[doc(hidden)]
    pub fn set_record_sequence(&mut self, seq: u64) {
        if let SealMode::V2Records(k) = &mut self.mode {
            k.set_sequence(seq);
        }
    }

    /// Appends the wire line (with its `\n`) for a message text: a JSON object without a
    /// top-level `_sig`. Fails only when the v2 record sequence is exhausted; `out` is then
    /// unchanged and the session must end.
    pub fn seal(&mut self, text: &str, out: &mut Vec<u8>) -> Result<(), RecordError> {
        match &mut self.mode {
            SealMode::Legacy { keys, cipher, seq } => {
                let sig = seq.as_mut().map(|seq| {
                    let s = *seq;
                    *seq = s.wrapping_add(1);
                    keys.signature(s)
                });
                if *cipher {
                    self.plain.clear();
                    message::append_signed(text, sig.as_ref(), &mut self.plain);
                    keys.cipher()
                        .encrypt_hex(&self.plain, &mut self.scratch, out);
                } else {
                    message::append_signed(text, sig.as_ref(), out);
                }
            }
            SealMode::V2Plain => out.extend_from_slice(text.as_bytes()),
            SealMode::V2Records(key) => key.seal(text.as_bytes(), &mut self.scratch, out)?,
        }
        out.push(b'\n');
        Ok(())
    }

    /// [`Sealer::seal`] into a new buffer.
    pub fn seal_to_vec(&mut self, text: &str) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::with_capacity(text.len() * 2 + 64);
        self.seal(text, &mut out)?;
        Ok(out)
    }
}

enum OpenMode {
    Legacy {
        keys: Arc<Keys>,
        cipher: bool,
        seq: u64,
        require_sig: bool,
    },
    V2Plain,
    V2Records(Box<RecordKey>),
}

/// Decrypts, parses and verifies incoming lines of one session.
pub struct Opener {
    mode: OpenMode,
}

impl Opener {
    pub(crate) fn new(keys: Arc<Keys>, cipher: bool, seq: u64, require_sig: bool) -> Self {
        Opener {
            mode: OpenMode::Legacy {
                keys,
                cipher,
                seq,
                require_sig,
            },
        }
    }

    /// A v2 opener: AEAD records with `key`, or plain lines when `None`.
    pub(crate) fn v2(key: Option<RecordKey>) -> Self {
        Opener {
            mode: key.map_or(OpenMode::V2Plain, |k| OpenMode::V2Records(Box::new(k))),
        }
    }

    /// Opens one line (without its newline). `buf` holds the plaintext when the cipher is on.
    /// In v2, `_sig` is neither needed nor checked: records are authenticated as a whole.
    pub fn open<'b>(
        &mut self,
        line: &'b [u8],
        buf: &'b mut Vec<u8>,
    ) -> Result<Parsed<'b>, OpenError> {
        let (keys, seq, require_sig, bytes): (_, _, _, &'b [u8]) = match &mut self.mode {
            OpenMode::Legacy {
                keys,
                cipher,
                seq,
                require_sig,
            } => {
                let bytes = if *cipher {
                    keys.cipher()
                        .decrypt_hex(line, buf)
                        .map_err(|_| OpenError::Decrypt)?
                } else {
                    line
                };
                (Some(keys), Some(seq), *require_sig, bytes)
            }
            OpenMode::V2Plain => (None, None, false, line),
            OpenMode::V2Records(key) => (
                None,
                None,
                false,
                key.open(line, buf).map_err(OpenError::Record)?,
            ),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| OpenError::Utf8)?;
        let parsed = message::parse(text).map_err(OpenError::Message)?;
        let (Some(keys), Some(seq)) = (keys, seq) else {
            return Ok(parsed);
        };
        match &parsed.sig {
            Some(Ok(sig)) => {
                let expected = keys.signature(*seq);
                if !bool::from(sig.as_bytes().ct_eq(&expected[..])) {
                    return Err(OpenError::BadSignature);
                }
                *seq = seq.wrapping_add(1);
            }
            Some(Err(())) => return Err(OpenError::BadSignature),
            None if require_sig => return Err(OpenError::MissingSignature),
            None => {}
        }
        Ok(parsed)
    }
}
