//! Fuzzes the KV line framing and command parser with arbitrary client bytes: nothing panics,
//! no line or buffer grows past its bound, and every parsed command is within its limits and
//! parses back from its canonical rendering.
#![no_main]

use ftguest_kvlog::command::{parse, Command, Line, LineBuffer, MAX_LINE_LEN};
use ftguest_kvlog::record::{MAX_KEY_LEN, MAX_VALUE_LEN};
use ftguest_kvlog::slot::{MAX_SLOT_VALUE_LEN, SLOT_COUNT};
use libfuzzer_sys::fuzz_target;

fn render(cmd: &Command<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    match *cmd {
        Command::Put { key, value } => {
            out.extend_from_slice(b"PUT ");
            out.extend_from_slice(key);
            out.push(b' ');
            out.extend_from_slice(value);
        }
        Command::Get { key } => {
            out.extend_from_slice(b"GET ");
            out.extend_from_slice(key);
        }
        Command::Stat => out.extend_from_slice(b"STAT"),
        Command::Set { slot, value } => {
            out.extend_from_slice(format!("SET {slot} ").as_bytes());
            out.extend_from_slice(value);
        }
        Command::Slot { slot } => out.extend_from_slice(format!("SLOT {slot}").as_bytes()),
    }
    out
}

fn check(line: &[u8]) {
    let Ok(cmd) = parse(line) else { return };
    match cmd {
        Command::Put { key, value } => {
            assert!((1..=MAX_KEY_LEN).contains(&key.len()) && value.len() <= MAX_VALUE_LEN)
        }
        Command::Get { key } => assert!((1..=MAX_KEY_LEN).contains(&key.len())),
        Command::Stat => {}
        Command::Set { slot, value } => {
            assert!(slot < SLOT_COUNT && value.len() <= MAX_SLOT_VALUE_LEN)
        }
        Command::Slot { slot } => assert!(slot < SLOT_COUNT),
    }
    assert_eq!(parse(&render(&cmd)), Ok(cmd));
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut lines = LineBuffer::new();
    for chunk in data.chunks(97) {
        lines.push(chunk);
        while let Some(line) = lines.pop_line() {
            if let Line::Complete(l) = line {
                assert!(l.len() <= MAX_LINE_LEN);
                check(&l);
            }
        }
        assert!(lines.buffered() <= MAX_LINE_LEN);
    }
});
