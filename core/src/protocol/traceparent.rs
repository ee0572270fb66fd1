//! The W3C Trace Context `traceparent` value (Trace Context Level 1, section 3.2) that a
//! request between two v2 peers may carry (docs/PROTOCOL-V2.md section 8.3): parsed strictly,
//! so that anything else reads as absent, and written in version `00`.
//!
//! ```text
//! traceparent = version "-" trace-id "-" parent-id "-" trace-flags
//! version     = 2 lowercase hex digits, not "ff"
//! trace-id    = 32 lowercase hex digits, not all zero
//! parent-id   = 16 lowercase hex digits, not all zero
//! trace-flags = 2 lowercase hex digits (bit 0: sampled)
//! ```
//!
//! Version `00` is exactly 55 characters. A later version may append fields after a `-`; its
//! first four fields are read as version `00`'s, as the specification asks.

/// The length of a version `00` value.
pub const LEN: usize = 55;

/// One parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id: the same on every span of one trace.
    pub trace_id: [u8; 16],
    /// The id of the sender's span: the parent of the receiver's.
    pub parent_id: [u8; 8],
    /// The trace flags (bit 0: the sender sampled this trace).
    pub flags: u8,
}

impl TraceParent {
    /// Reads a value; `None` for anything that is not a valid `traceparent`.
    pub fn parse(text: &str) -> Option<TraceParent> {
        let b = text.as_bytes();
        if b.len() < LEN || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let mut version = [0u8; 1];
        lower_hex(&b[0..2], &mut version)?;
        match version[0] {
            0xff => return None,
            0x00 if b.len() != LEN => return None,
            _ if b.len() > LEN && b[LEN] != b'-' => return None,
            _ => {}
        }
        let mut tp = TraceParent {
            trace_id: [0; 16],
            parent_id: [0; 8],
            flags: 0,
        };
        lower_hex(&b[3..35], &mut tp.trace_id)?;
        lower_hex(&b[36..52], &mut tp.parent_id)?;
        let mut flags = [0u8; 1];
        lower_hex(&b[53..55], &mut flags)?;
        tp.flags = flags[0];
        if tp.trace_id == [0; 16] || tp.parent_id == [0; 8] {
            return None;
        }
        Some(tp)
    }

    /// The version `00` text of this value.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(LEN);
        out.push_str("00-");
        out.push_str(&super::hex::encode(&self.trace_id));
        out.push('-');
        out.push_str(&super::hex::encode(&self.parent_id));
        out.push('-');
        out.push_str(&super::hex::encode(&[self.flags]));
        out
    }
}

/// Decodes lowercase hex into `out` (exactly twice its length); `None` for any other byte.
fn lower_hex(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_reads_and_writes_back() {
        let tp = TraceParent::parse(GOOD).unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.parent_id[7], 0xb7);
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.encode(), GOOD);
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(TraceParent::parse(later), TraceParent::parse(GOOD));
        assert_eq!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            TraceParent::parse(GOOD)
        );
    }

    #[test]
    fn anything_else_reads_as_absent() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\u{e9}",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }
}
