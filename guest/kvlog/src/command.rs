//! The KV service's text protocol: line framing and command parsing.
//!
//! One command per `\n`-terminated line (a trailing `\r` is ignored):
//! `PUT <key> <value>`, `GET <key>`, `STAT`, `SET <slot> <value>`, `SLOT <slot>`. Fields are
//! separated by exactly one space. Keys are 1..=64 and values 0..=1024 bytes (0..=488 for `SET`)
//! of printable ASCII without spaces (`!`..=`~`); `PUT <key>` or `SET <slot>` with nothing after
//! it stores an empty value. A slot is a decimal number below [`SLOT_COUNT`] in its shortest
//! form: digits only, no sign, no leading zero (`0`, `7`, `63`; not `07`, `+7`, `64`).

use crate::record::{MAX_KEY_LEN, MAX_VALUE_LEN};
use crate::slot::{MAX_SLOT_VALUE_LEN, SLOT_COUNT};
use alloc::vec::Vec;

/// Longest accepted line (without the newline, with room for a trailing `\r`); longer lines get
/// `ERR line too long`.
pub const MAX_LINE_LEN: usize = 4 + MAX_KEY_LEN + 1 + MAX_VALUE_LEN + 1;

/// A parsed command borrowing from the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// Store `value` under `key`.
    Put { key: &'a [u8], value: &'a [u8] },
    /// Look `key` up.
    Get { key: &'a [u8] },
    /// Report counters.
    Stat,
    /// Rewrite slot `slot` in place with `value`.
    Set { slot: usize, value: &'a [u8] },
    /// Read slot `slot`.
    Slot { slot: usize },
}

/// Why a line is not a command; the `Display` text is the `<reason>` of `ERR <reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing on the line.
    #[error("empty line")]
    Empty,
    /// The first word is not PUT, GET, STAT, SET or SLOT.
    #[error("unknown command")]
    UnknownCommand,
    /// PUT/GET without a key.
    #[error("missing key")]
    MissingKey,
    /// Key longer than 64 bytes.
    #[error("key too long")]
    KeyTooLong,
    /// Value longer than 1024 bytes.
    #[error("value too long")]
    ValueTooLong,
    /// A byte outside printable ASCII, or a doubled space.
    #[error("bad character")]
    BadCharacter,
    /// More fields than the command takes.
    #[error("too many arguments")]
    TooManyArguments,
    /// SET/SLOT without a slot number.
    #[error("missing slot")]
    MissingSlot,
    /// A slot field that is not a decimal number in its shortest form.
    #[error("bad slot")]
    BadSlot,
    /// A slot number of [`SLOT_COUNT`] or more.
    #[error("slot out of range")]
    SlotOutOfRange,
}

fn is_token_byte(b: u8) -> bool {
    (b'!'..=b'~').contains(&b)
}

fn check_token(t: &[u8]) -> Result<(), ParseError> {
    if t.iter().all(|&b| is_token_byte(b)) {
        Ok(())
    } else {
        Err(ParseError::BadCharacter)
    }
}

fn parse_key(key: Option<&[u8]>) -> Result<&[u8], ParseError> {
    let key = key.ok_or(ParseError::MissingKey)?;
    if key.is_empty() {
        // "GET " or "PUT  x": an empty field means a doubled/trailing space.
        return Err(ParseError::MissingKey);
    }
    check_token(key)?;
    if key.len() > MAX_KEY_LEN {
        return Err(ParseError::KeyTooLong);
    }
    Ok(key)
}

// `parse_slot` reads at most two digits.
const _: () = assert!(SLOT_COUNT <= 100);

fn parse_slot(field: Option<&[u8]>) -> Result<usize, ParseError> {
    let field = field.ok_or(ParseError::MissingSlot)?;
    if field.is_empty() {
        return Err(ParseError::MissingSlot);
    }
    if !field.iter().all(u8::is_ascii_digit) || (field.len() > 1 && field[0] == b'0') {
        return Err(ParseError::BadSlot);
    }
    // More digits than SLOT_COUNT has is out of range without computing it (no overflow).
    if field.len() > 2 {
        return Err(ParseError::SlotOutOfRange);
    }
    let slot = field
        .iter()
        .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    if slot >= SLOT_COUNT {
        return Err(ParseError::SlotOutOfRange);
    }
    Ok(slot)
}

fn parse_value(value: Option<&[u8]>, max: usize) -> Result<&[u8], ParseError> {
    let value = value.unwrap_or_default();
    check_token(value)?;
    if value.len() > max {
        return Err(ParseError::ValueTooLong);
    }
    Ok(value)
}

fn no_more(mut fields: impl Iterator) -> Result<(), ParseError> {
    match fields.next() {
        Some(_) => Err(ParseError::TooManyArguments),
        None => Ok(()),
    }
}

/// Parses one line (without its `\n`; a trailing `\r` is stripped).
pub fn parse(line: &[u8]) -> Result<Command<'_>, ParseError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut fields = line.splitn(3, |&b| b == b' ');
    let verb = fields.next().unwrap_or_default();
    match verb {
        b"PUT" => {
            let key = parse_key(fields.next())?;
            let value = parse_value(fields.next(), MAX_VALUE_LEN)?;
            Ok(Command::Put { key, value })
        }
        b"GET" => {
            let key = parse_key(fields.next())?;
            no_more(fields)?;
            Ok(Command::Get { key })
        }
        b"STAT" => {
            no_more(fields)?;
            Ok(Command::Stat)
        }
        b"SET" => {
            let slot = parse_slot(fields.next())?;
            let value = parse_value(fields.next(), MAX_SLOT_VALUE_LEN)?;
            Ok(Command::Set { slot, value })
        }
        b"SLOT" => {
            let slot = parse_slot(fields.next())?;
            no_more(fields)?;
            Ok(Command::Slot { slot })
        }
        _ => Err(ParseError::UnknownCommand),
    }
}

/// One framed line out of a [`LineBuffer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its `\n`.
    Complete(Vec<u8>),
    /// A line longer than [`MAX_LINE_LEN`]; its bytes up to the next `\n` are dropped.
    TooLong,
}

/// Reassembles `\n`-terminated lines from a TCP byte stream, bounding memory per connection.
#[derive(Debug, Default, Clone)]
pub struct LineBuffer {
    buf: Vec<u8>,
    discarding: bool,
}

impl LineBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes buffered and not yet returned as lines.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends received bytes. Never buffers much more than [`MAX_LINE_LEN`] + `data.len()`.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Takes the next complete line, if any.
    pub fn pop_line(&mut self) -> Option<Line> {
        loop {
            match self.buf.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
                    line.pop();
                    if self.discarding {
                        // The end of an overlong line whose TooLong was already reported.
                        self.discarding = false;
                        continue;
                    }
                    if line.len() > MAX_LINE_LEN {
                        return Some(Line::TooLong);
                    }
                    return Some(Line::Complete(line));
                }
                None => {
                    if self.buf.len() > MAX_LINE_LEN {
                        self.buf.clear();
                        if !self.discarding {
                            self.discarding = true;
                            return Some(Line::TooLong);
                        }
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse(b"PUT k v"),
            Ok(Command::Put {
                key: b"k",
                value: b"v"
            })
        );
        assert_eq!(parse(b"GET key\r"), Ok(Command::Get { key: b"key" }));
        assert_eq!(parse(b"STAT"), Ok(Command::Stat));
        assert_eq!(
            parse(b"PUT k"),
            Ok(Command::Put {
                key: b"k",
                value: b""
            })
        );
        assert_eq!(
            parse(b"PUT k "),
            Ok(Command::Put {
                key: b"k",
                value: b""
            })
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b"put k v"), Err(ParseError::UnknownCommand));
        assert_eq!(parse(b"\xff\x00"), Err(ParseError::UnknownCommand));
        assert_eq!(parse(b"GET"), Err(ParseError::MissingKey));
        assert_eq!(parse(b"GET "), Err(ParseError::MissingKey));
        assert_eq!(parse(b"PUT  v"), Err(ParseError::MissingKey));
        assert_eq!(parse(b"GET a b"), Err(ParseError::TooManyArguments));
        assert_eq!(parse(b"STAT x"), Err(ParseError::TooManyArguments));
        assert_eq!(parse(b"PUT k v w"), Err(ParseError::BadCharacter));
        assert_eq!(parse(b"PUT k\tx v"), Err(ParseError::BadCharacter));
        assert_eq!(parse(b"PUT k \x7f"), Err(ParseError::BadCharacter));
    }

    #[test]
    fn size_limits() {
        let mut line = b"PUT ".to_vec();
        line.extend(vec![b'k'; 64]);
        line.push(b' ');
        line.extend(vec![b'v'; 1024]);
        assert!(parse(&line).is_ok());
        assert_eq!(line.len() + 1, MAX_LINE_LEN);
        line.push(b'v');
        assert_eq!(parse(&line), Err(ParseError::ValueTooLong));
        let mut get = b"GET ".to_vec();
        get.extend(vec![b'k'; 65]);
        assert_eq!(parse(&get), Err(ParseError::KeyTooLong));
    }

    #[test]
    fn parses_slot_commands() {
        assert_eq!(
            parse(b"SET 0 page"),
            Ok(Command::Set {
                slot: 0,
                value: b"page"
            })
        );
        assert_eq!(
            parse(b"SET 63"),
            Ok(Command::Set {
                slot: 63,
                value: b""
            })
        );
        assert_eq!(
            parse(b"SET 7 \r"),
            Ok(Command::Set {
                slot: 7,
                value: b""
            })
        );
        assert_eq!(parse(b"SLOT 12"), Ok(Command::Slot { slot: 12 }));
        let mut max = b"SET 9 ".to_vec();
        max.extend(vec![b'v'; MAX_SLOT_VALUE_LEN]);
        assert!(parse(&max).is_ok());
        max.push(b'v');
        assert_eq!(parse(&max), Err(ParseError::ValueTooLong));
    }

    #[test]
    fn rejects_bad_slots() {
        for (line, err) in [
            (&b"SET"[..], ParseError::MissingSlot),
            (b"SET ", ParseError::MissingSlot),
            (b"SLOT", ParseError::MissingSlot),
            (b"SET  v", ParseError::MissingSlot),
            (b"SET 07 v", ParseError::BadSlot),
            (b"SET 00", ParseError::BadSlot),
            (b"SET +7 v", ParseError::BadSlot),
            (b"SET -1 v", ParseError::BadSlot),
            (b"SET 0x1 v", ParseError::BadSlot),
            (b"SLOT a", ParseError::BadSlot),
            (b"SLOT 1\t", ParseError::BadSlot),
            (b"SET 64 v", ParseError::SlotOutOfRange),
            (b"SLOT 99", ParseError::SlotOutOfRange),
            (b"SLOT 100", ParseError::SlotOutOfRange),
            (b"SLOT 99999999999999999999999", ParseError::SlotOutOfRange),
            (b"SLOT 1 2", ParseError::TooManyArguments),
            (b"SLOT 1 ", ParseError::TooManyArguments),
            (b"SET 1 a b", ParseError::BadCharacter),
            (b"SET 1 \x80", ParseError::BadCharacter),
            (b"set 1 v", ParseError::UnknownCommand),
        ] {
            assert_eq!(parse(line), Err(err), "{:?}", core::str::from_utf8(line));
        }
    }

    #[test]
    fn frames_lines_across_pushes() {
        let mut lb = LineBuffer::new();
        lb.push(b"GET a\nPU");
        assert_eq!(lb.pop_line(), Some(Line::Complete(b"GET a".to_vec())));
        assert_eq!(lb.pop_line(), None);
        lb.push(b"T b c\n");
        assert_eq!(lb.pop_line(), Some(Line::Complete(b"PUT b c".to_vec())));
        assert_eq!(lb.buffered(), 0);
    }

    #[test]
    fn overlong_line_reported_once_then_resyncs() {
        let mut lb = LineBuffer::new();
        lb.push(&vec![b'x'; MAX_LINE_LEN + 10]);
        assert_eq!(lb.pop_line(), Some(Line::TooLong));
        lb.push(&vec![b'x'; MAX_LINE_LEN + 10]);
        assert_eq!(lb.pop_line(), None);
        lb.push(b"xx\nSTAT\n");
        assert_eq!(lb.pop_line(), Some(Line::Complete(b"STAT".to_vec())));
        // A long line arriving in one piece with its newline.
        let mut long = vec![b'y'; MAX_LINE_LEN + 1];
        long.push(b'\n');
        lb.push(&long);
        assert_eq!(lb.pop_line(), Some(Line::TooLong));
        assert_eq!(lb.pop_line(), None);
    }

    proptest::proptest! {
        #[test]
        fn slot_field_accepted_iff_canonical_below_count(field in "[0-9+ -]{0,4}") {
            let line = alloc::format!("SLOT {field}");
            let canonical = field.parse::<usize>().ok().filter(|n| {
                *n < SLOT_COUNT && alloc::format!("{n}") == field
            });
            match parse(line.as_bytes()) {
                Ok(Command::Slot { slot }) => proptest::prop_assert_eq!(Some(slot), canonical),
                other => proptest::prop_assert!(canonical.is_none(), "{:?} for {:?}", other, field),
            }
        }

        #[test]
        fn parser_and_framer_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)) {
            if let Ok(Command::Set { slot, value }) = parse(&data) {
                proptest::prop_assert!(slot < SLOT_COUNT && value.len() <= MAX_SLOT_VALUE_LEN);
            }
            let mut lb = LineBuffer::new();
            lb.push(&data);
            while let Some(line) = lb.pop_line() {
                if let Line::Complete(l) = line {
                    proptest::prop_assert!(l.len() <= MAX_LINE_LEN);
                    let _ = parse(&l);
                }
            }
            proptest::prop_assert!(lb.buffered() <= MAX_LINE_LEN);
        }
    }
}
