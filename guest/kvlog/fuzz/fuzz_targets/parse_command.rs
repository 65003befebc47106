//! Fuzzes the KV line framing and command parser with arbitrary client bytes.
#![no_main]

use ftguest_kvlog::command::{parse, Line, LineBuffer, MAX_LINE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = LineBuffer::new();
    for chunk in data.chunks(97) {
        lines.push(chunk);
        while let Some(line) = lines.pop_line() {
            if let Line::Complete(l) = line {
                assert!(l.len() <= MAX_LINE_LEN);
                let _ = parse(&l);
            }
        }
        assert!(lines.buffered() <= MAX_LINE_LEN);
    }
});
