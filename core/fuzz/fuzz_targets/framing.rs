//! The line splitter: arbitrary bytes in arbitrary chunks never panic, never yield a line over
//! the limit, and never hold more than the limit plus one read.
#![no_main]

use iris_rpc::protocol::LineBuffer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&max, rest)) = data.split_first() else { return };
    let max = usize::from(max) + 1;
    let mut lines = LineBuffer::new(max);
    for chunk in rest.chunks(7) {
        let buf = lines.read_buf(chunk.len());
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        lines.filled(n);
        loop {
            match lines.next_line() {
                Ok(Some(line)) => assert!(line.len() <= max),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(lines.pending() <= max + 1);
    }
});
