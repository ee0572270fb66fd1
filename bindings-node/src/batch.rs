//! The batch format: everything that happened on one native object since the last call into
//! JavaScript, written as one JSON array text that `index.js` parses with a single `JSON.parse`.
//! Message bodies are already JSON text and are copied in verbatim, never rebuilt value by value.
//!
//! Each entry is an array whose first element says what it is (`index.js` reads the same
//! numbers):
//!
//! | entry | meaning |
//! | --- | --- |
//! | `[0, null, "host:port"]` / `[0, ERR]` | server listening / bind failed |
//! | `[1, SID, "uuid", "address", designation, mac, cipher, "mode"]` | stream connected (`cipher` a boolean, `mode` `"v2"` or `"legacy"`) |
//! | `[2, SID, "reason"]` | stream disconnected |
//! | `[3, SID, "uuid", MSG]` | event message (uuid is `_r.uuid` when routed) |
//! | `[4, SID, RID, "uuid", MSG]` | incoming request, answer with `respond(RID, ..)` |
//! | `[5, ERR]` | a connection failed or was refused |
//! | `[6, CID, 1, {"err":E,"resp":R}]` / `[6, CID, 0, ERR]` | outgoing request answered (`err` and `resp` as the peer sent them, each left out when it was absent) / failed here |
//! | `[7]` | the object is closed; nothing follows |
//!
//! `ERR` is `{"code":..,"message":..,"legacy":..}`: the stable core error kind, its text, and
//! the value the legacy package would hand to a callback (for a remote error, the peer's own
//! error value).

use iris_rpc::Error;

pub(crate) const LISTEN: u8 = 0;
pub(crate) const CONNECT: u8 = 1;
pub(crate) const DISCONNECT: u8 = 2;
pub(crate) const MESSAGE: u8 = 3;
pub(crate) const REQUEST: u8 = 4;
pub(crate) const CONN_ERROR: u8 = 5;
pub(crate) const SETTLED: u8 = 6;
pub(crate) const CLOSED: u8 = 7;

/// Builds one batch text.
pub(crate) struct Batch {
    text: String,
    entries: usize,
}

impl Batch {
    pub(crate) fn new() -> Self {
        Batch {
            text: String::with_capacity(4096),
            entries: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The finished text; the batch starts over empty.
    pub(crate) fn take(&mut self) -> String {
        self.text.push(']');
        self.entries = 0;
        std::mem::replace(&mut self.text, String::with_capacity(4096))
    }

    /// Opens an entry of kind `kind`; the caller appends its fields with the `field_*`
    /// methods and closes it with [`Batch::end`].
    pub(crate) fn begin(&mut self, kind: u8) -> &mut Self {
        self.text.push(if self.entries == 0 { '[' } else { ',' });
        self.entries += 1;
        self.text.push('[');
        self.push_u64(u64::from(kind));
        self
    }

    pub(crate) fn end(&mut self) {
        self.text.push(']');
    }

    pub(crate) fn num(&mut self, n: u64) -> &mut Self {
        self.text.push(',');
        self.push_u64(n);
        self
    }

    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.text.push(',');
        push_json_str(&mut self.text, s);
        self
    }

    pub(crate) fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.str(s),
            None => self.raw("null"),
        }
    }

    /// A field that is already JSON text.
    pub(crate) fn raw(&mut self, json: &str) -> &mut Self {
        self.text.push(',');
        self.text.push_str(json);
        self
    }

    pub(crate) fn error(&mut self, e: &Error) -> &mut Self {
        self.text.push_str(",{\"code\":");
        push_json_str(&mut self.text, e.kind().as_str());
        self.text.push_str(",\"message\":");
        push_json_str(&mut self.text, &e.to_string());
        self.text.push_str(",\"legacy\":");
        match e {
            // The peer's own error value, as received (already validated JSON).
            Error::Remote(text) => self.text.push_str(text),
            other => self.text.push_str(&other.to_legacy_value().to_string()),
        }
        self.text.push('}');
        self
    }

    /// An answer's `err` and `resp` (JSON texts, as sent) as one object; an absent one is left
    /// out, so that JavaScript reads it as `undefined`.
    pub(crate) fn answer(&mut self, err: Option<&str>, resp: Option<&str>) -> &mut Self {
        self.text.push_str(",{");
        if let Some(e) = err {
            self.text.push_str("\"err\":");
            self.text.push_str(e);
        }
        if let Some(r) = resp {
            if err.is_some() {
                self.text.push(',');
            }
            self.text.push_str("\"resp\":");
            self.text.push_str(r);
        }
        self.text.push('}');
        self
    }

    fn push_u64(&mut self, n: u64) {
        use std::fmt::Write;
        let _ = write!(self.text, "{n}");
    }
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            use std::fmt::Write;
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}
