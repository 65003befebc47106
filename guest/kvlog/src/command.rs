//! The KV service's text protocol: line framing and command parsing.
//!
//! One command per `\n`-terminated line (a trailing `\r` is ignored):
//! `PUT <key> <value>`, `GET <key>`, `STAT`. Fields are separated by exactly one space. Keys are
//! 1..=64 and values 0..=1024 bytes of printable ASCII without spaces (`!`..=`~`); `PUT <key>`
//! with nothing after the key stores an empty value.

use crate::record::{MAX_KEY_LEN, MAX_VALUE_LEN};
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
}

/// Why a line is not a command; the `Display` text is the `<reason>` of `ERR <reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing on the line.
    #[error("empty line")]
    Empty,
    /// The first word is not PUT, GET or STAT.
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
            let value = fields.next().unwrap_or_default();
            check_token(value)?;
            if value.len() > MAX_VALUE_LEN {
                return Err(ParseError::ValueTooLong);
            }
            Ok(Command::Put { key, value })
        }
        b"GET" => {
            let key = parse_key(fields.next())?;
            if fields.next().is_some() {
                return Err(ParseError::TooManyArguments);
            }
            Ok(Command::Get { key })
        }
        b"STAT" => {
            if fields.next().is_some() {
                return Err(ParseError::TooManyArguments);
            }
            Ok(Command::Stat)
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
        fn parser_and_framer_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)) {
            let _ = parse(&data);
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
