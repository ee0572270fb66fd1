//! Line framing: `\n`-terminated lines with a maximum length enforced while reading, so a peer
//! can never make us buffer more than the limit.

/// The line was longer than the configured maximum (the newline not yet seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong {
    /// The configured maximum, in bytes, without the newline.
    pub max: usize,
}

impl std::fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line longer than the {} byte limit", self.max)
    }
}

impl std::error::Error for LineTooLong {}

/// Accumulates bytes and yields complete lines without copying them.
///
/// Feed it with [`LineBuffer::spare`] + [`LineBuffer::commit`] (read straight into it) or
/// [`LineBuffer::extend`], then drain lines with [`LineBuffer::next_line`].
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte.
    start: usize,
    /// Bytes before this offset (from `start`) are known to hold no newline.
    scanned: usize,
    /// Where an outstanding `read_buf` began (its tail is not data until `filled`).
    read_from: Option<usize>,
    max: usize,
}

impl LineBuffer {
    /// A buffer that refuses lines longer than `max` bytes (excluding the newline).
    pub fn new(max: usize) -> Self {
        LineBuffer {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            read_from: None,
            max,
        }
    }

    /// The maximum line length.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Changes the maximum line length from the next [`LineBuffer::next_line`] on (the
    /// handshake reads with a small one, the authenticated stream with its own).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Bytes allocated, buffered or not: what this buffer costs in memory.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends bytes read from the peer.
    pub fn extend(&mut self, data: &[u8]) {
        self.discard_unfilled();
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// A writable tail to read into, followed by [`LineBuffer::filled`]. It holds at least
    /// `room` bytes unless the limit needs fewer, so the buffer never grows much past one
    /// maximal line.
    pub fn read_buf(&mut self, room: usize) -> &mut [u8] {
        self.discard_unfilled();
        self.compact();
        let len = self.buf.len();
        let want = room
            .min(self.max.saturating_add(1).saturating_sub(len))
            .max(1);
        self.buf.resize(len + want, 0);
        self.read_from = Some(len);
        &mut self.buf[len..]
    }

    /// Keeps `n` bytes of the last [`LineBuffer::read_buf`]; the rest is discarded.
    pub fn filled(&mut self, n: usize) {
        if let Some(from) = self.read_from.take() {
            self.buf.truncate(from + n);
        }
    }

    /// Drops the tail of a `read_buf` that was never filled (a cancelled read).
    fn discard_unfilled(&mut self) {
        if let Some(from) = self.read_from.take() {
            self.buf.truncate(from);
        }
    }

    /// Gives memory back after a burst: when nothing is buffered and more than twice `keep`
    /// bytes are allocated, the allocation is dropped (the next read allocates what it needs).
    pub fn shrink(&mut self, keep: usize) {
        if self.is_empty() && self.read_from.is_none() && self.buf.capacity() > keep * 2 {
            self.buf = Vec::new();
            self.start = 0;
            self.scanned = 0;
        }
    }

    /// True when no bytes are buffered.
    pub fn is_empty(&self) -> bool {
        self.read_from.unwrap_or(self.buf.len()) == self.start
    }

    /// Bytes held that do not yet form a complete line.
    pub fn pending(&self) -> usize {
        self.read_from.unwrap_or(self.buf.len()) - self.start
    }

    /// The next complete line without its `\n` (and without a `\r` before it), `Ok(None)` if
    /// no complete line is buffered, or an error once the unterminated tail exceeds the limit.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, LineTooLong> {
        self.discard_unfilled();
        let from = self.start + self.scanned;
        match memchr::memchr(b'\n', &self.buf[from..]) {
            Some(i) => {
                let end = from + i;
                if end - self.start > self.max {
                    return Err(LineTooLong { max: self.max });
                }
                let line_start = self.start;
                self.start = end + 1;
                self.scanned = 0;
                let mut line = &self.buf[line_start..end];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                Ok(Some(line))
            }
            None => {
                self.scanned = self.buf.len() - self.start;
                if self.scanned > self.max {
                    Err(LineTooLong { max: self.max })
                } else {
                    Ok(None)
                }
            }
        }
    }

    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
        } else {
            self.buf.drain(..self.start);
        }
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrink_gives_memory_back_only_when_empty() {
        let mut b = LineBuffer::new(1 << 20);
        b.extend(&vec![b'x'; 100_000]);
        b.extend(b"\npartial");
        assert_eq!(b.next_line().unwrap().map(<[u8]>::len), Some(100_000));
        b.shrink(4096);
        assert!(b.buf.capacity() >= 100_000, "a partial line is still held");
        b.extend(b"\n");
        assert_eq!(b.next_line().unwrap(), Some(&b"partial"[..]));
        b.shrink(4096);
        assert_eq!(b.buf.capacity(), 0);
        b.extend(b"again\n");
        assert_eq!(b.next_line().unwrap(), Some(&b"again"[..]));
    }

    #[test]
    fn splits_lines_across_reads() {
        let mut b = LineBuffer::new(100);
        b.extend(b"ab");
        assert_eq!(b.next_line().unwrap(), None);
        b.extend(b"c\nde\r\nf");
        assert_eq!(b.next_line().unwrap(), Some(&b"abc"[..]));
        assert_eq!(b.next_line().unwrap(), Some(&b"de"[..]));
        assert_eq!(b.next_line().unwrap(), None);
        b.extend(b"\n");
        assert_eq!(b.next_line().unwrap(), Some(&b"f"[..]));
        assert!(b.is_empty());
    }

    #[test]
    fn refuses_long_lines_before_the_newline() {
        let mut b = LineBuffer::new(4);
        b.extend(b"abcd");
        assert_eq!(b.next_line().unwrap(), None);
        b.extend(b"e");
        assert_eq!(b.next_line(), Err(LineTooLong { max: 4 }));
        let mut b = LineBuffer::new(4);
        b.extend(b"abcde\n");
        assert_eq!(b.next_line(), Err(LineTooLong { max: 4 }));
    }

    #[test]
    fn the_limit_can_change_between_lines() {
        let mut b = LineBuffer::new(4);
        b.extend(b"abc\nlonger line\n");
        assert_eq!(b.next_line().unwrap(), Some(&b"abc"[..]));
        assert_eq!(b.next_line(), Err(LineTooLong { max: 4 }));
        b.set_max(100);
        assert_eq!(b.next_line().unwrap(), Some(&b"longer line"[..]));
        assert!(b.capacity() >= 16);
    }

    #[test]
    fn reads_in_place() {
        let mut b = LineBuffer::new(1 << 20);
        let s = b.read_buf(16);
        s[..4].copy_from_slice(b"hi\nx");
        b.filled(4);
        assert_eq!(b.next_line().unwrap(), Some(&b"hi"[..]));
        assert_eq!(b.next_line().unwrap(), None);
        assert_eq!(b.pending(), 1);
    }
}
